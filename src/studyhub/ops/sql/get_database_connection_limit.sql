-- A database's connection limit (-1 = none) and whether it accepts connections at all.
SELECT datconnlimit AS connection_limit, datallowconn AS allow_connections,
       pg_get_userbyid(datdba) AS owner
FROM pg_database WHERE datname = %(database)s;
