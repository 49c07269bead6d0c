-- Cancel the running query of one backend (the session stays).
SELECT pg_cancel_backend(%(pid)s);
