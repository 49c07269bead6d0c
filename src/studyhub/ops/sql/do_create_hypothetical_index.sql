-- A hypothetical index (hypopg): visible to this session's planner only, nothing is built.
SELECT indexrelid, indexname FROM hypopg_create_index(%(ddl)s);
