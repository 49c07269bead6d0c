-- Which of the given database names exist.
SELECT datname FROM pg_database WHERE datname = ANY(%(names)s);
