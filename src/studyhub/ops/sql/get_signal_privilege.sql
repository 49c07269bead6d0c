-- May the current role cancel/terminate other roles' backends?
SELECT r.rolsuper, pg_has_role(current_user, 'pg_signal_backend', 'MEMBER') AS signal_backend
FROM pg_roles r WHERE r.rolname = current_user;
