-- Terminate one backend and wait up to timeout_ms for it to exit.
SELECT pg_terminate_backend(%(pid)s, %(timeout_ms)s);
