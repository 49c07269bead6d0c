-- PgBouncer's admin console (database "pgbouncer"): clients and servers of each pool.
SHOW POOLS;
