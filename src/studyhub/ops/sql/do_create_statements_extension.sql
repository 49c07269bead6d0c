-- Install pg_stat_statements in this database (an untrusted extension: a superuser, or
-- DigitalOcean's doadmin, which the provider allows to create it).
CREATE EXTENSION IF NOT EXISTS pg_stat_statements;
