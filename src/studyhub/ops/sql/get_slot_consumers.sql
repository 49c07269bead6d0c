-- Backends consuming a replication slot (physical or logical), by PID.
SELECT active_pid AS pid, slot_name FROM pg_replication_slots WHERE active_pid IS NOT NULL;
