-- How many parameters ($n) a statement this session prepared takes (its generic plan is
-- explained with NULL for each).
SELECT cardinality(parameter_types) FROM pg_prepared_statements WHERE name = %(name)s;
