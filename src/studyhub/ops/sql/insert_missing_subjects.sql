-- Create the subjects that do not exist yet (by id, code or name); returns the ids created.
INSERT INTO subjects (id, code, name, created_at)
SELECT id, code, name, %(created_at)s
FROM unnest(%(ids)s::uuid[], %(codes)s::text[], %(names)s::text[]) AS s (id, code, name)
ON CONFLICT DO NOTHING
RETURNING id;
