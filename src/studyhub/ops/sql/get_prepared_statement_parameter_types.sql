-- The parameter types ($1, $2, …) of a statement this session prepared.
SELECT parameter_types::text[] FROM pg_prepared_statements WHERE name = %(name)s;
