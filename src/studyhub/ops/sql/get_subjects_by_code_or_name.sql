-- Existing subjects matching any of the given codes or names.
SELECT code, name, id
FROM subjects
WHERE code = ANY (%(codes)s::text[]) OR name = ANY (%(names)s::text[]);
