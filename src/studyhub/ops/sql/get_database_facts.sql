-- What a backup manifest records about the source database.
SELECT current_database() AS database,
       current_setting('server_version') AS server_version,
       pg_encoding_to_char(d.encoding) AS encoding
FROM pg_database d
WHERE d.datname = current_database();
