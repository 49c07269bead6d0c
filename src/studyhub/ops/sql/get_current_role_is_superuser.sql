-- Whether the role this session runs as is a superuser (a non-superuser cannot signal a
-- superuser's backend).
SELECT rolsuper FROM pg_roles WHERE rolname = current_user;
