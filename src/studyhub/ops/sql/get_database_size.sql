-- This database's name and size on disk.
SELECT current_database(), pg_database_size(current_database());
