-- Runs once, when the postgres volume is first initialised (docker-entrypoint-initdb.d),
-- in database "app" as the superuser.
--
-- The relay's role: LOGIN and REPLICATION (logical replication), and owner of database
-- "app", which lets `dispatchbox migrate` create the outbox table (PostgreSQL 15+ grants
-- CREATE on schema public to the database owner) and the publication (CREATE on the
-- database). Playground password; see the compose file's header.
CREATE ROLE dispatchbox LOGIN REPLICATION PASSWORD 'dispatchbox';
ALTER DATABASE app OWNER TO dispatchbox;
