-- Does a relation (here: an index) of this qualified, quoted name exist?
SELECT to_regclass(%(name)s) IS NOT NULL AS exists;
