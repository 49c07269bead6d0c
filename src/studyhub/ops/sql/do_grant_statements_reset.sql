-- Let the ops role reset this database's statement statistics (diag slow-queries --reset),
-- as the local cluster does. {role} is an identifier.
GRANT EXECUTE ON FUNCTION pg_stat_statements_reset(oid, oid, bigint) TO {role};
