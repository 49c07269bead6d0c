-- Does a table exist, and may the current role read it?
SELECT to_regclass(%(name)s) IS NOT NULL AS exists,
       CASE WHEN to_regclass(%(name)s) IS NULL THEN false
            ELSE has_table_privilege(to_regclass(%(name)s), 'SELECT') END AS can_select;
