-- Drop a replication slot by name if it exists and no standby is using it (a slot left behind
-- keeps WAL on the primary forever).
SELECT pg_drop_replication_slot(slot_name)
FROM pg_replication_slots
WHERE slot_name = %(slot_name)s AND NOT active;
