-- Transaction-ID wraparound: the age of each database's oldest unfrozen XID (PostgreSQL stops
-- accepting writes about 2^31 - 3 million transactions after it).
SELECT
    datname                     AS database,
    age(datfrozenxid)::bigint   AS xid_age,
    mxid_age(datminmxid)::bigint AS multixact_age
FROM pg_database
WHERE datallowconn
ORDER BY age(datfrozenxid) DESC;
