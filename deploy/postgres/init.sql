-- The login role the services connect as (member of borough_app once migrated: it owns
-- nothing and cannot bypass row-level security). Local use: change the password elsewhere.
CREATE ROLE borough_service LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE PASSWORD 'borough';
