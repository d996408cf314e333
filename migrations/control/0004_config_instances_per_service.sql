-- An instance reports per service it runs: one process may run several (tests do, and a
-- sidecar could), and their applied revisions must not overwrite each other.
ALTER TABLE config.instances DROP CONSTRAINT instances_pkey;
ALTER TABLE config.instances ADD PRIMARY KEY (instance, service);
