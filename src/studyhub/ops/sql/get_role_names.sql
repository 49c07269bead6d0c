-- The names of every role in the cluster (which ones `local up` creates, which it alters).
SELECT rolname FROM pg_roles;
