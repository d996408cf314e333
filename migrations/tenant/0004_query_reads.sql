-- The query service's login (group borough_query_app) reads users and the outbox, and
-- writes nothing. Row-level security applies to it as to every role.

GRANT SELECT ON users, user_changes TO borough_query_app;
