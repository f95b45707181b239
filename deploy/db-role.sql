-- fanfare's own database role: a login role that owns the schema "fanfare"
-- (where its migrations create the ledger's tables and types) and nothing
-- more: no superuser, createdb, createrole, replication or bypassrls, no
-- create on any other schema. Run once, as the database's owner or the RDS
-- master user, in the database fanfare uses; running it again changes the
-- password and nothing else:
--
--   psql "host=... dbname=fanfare user=<master> sslmode=verify-full sslrootcert=..." \
--     -v ON_ERROR_STOP=1 -v role=fanfare_app -v password="$APP_PASSWORD" -f deploy/db-role.sql
--
-- Then fanfare's database.url names that role and password
-- (postgres://fanfare_app:<password>@host:5432/fanfare?...). The stack
-- (deploy/fanfare.yaml) runs this same text as its DatabaseRoleTask.
\set ON_ERROR_STOP on

select format('create role %I login', :'role')
 where not exists (select from pg_roles where rolname = :'role')
\gexec

alter role :"role" with login password :'password';

-- The creator needs membership to hand the schema over (PostgreSQL 16: an
-- RDS master user is not a superuser, only the role's admin).
select format('grant %I to current_user', :'role')
 where not pg_has_role(current_user, :'role', 'member')
\gexec

create schema if not exists fanfare authorization :"role";
alter schema fanfare owner to :"role";

-- Unqualified names (the migrations' tables, sqlx's _sqlx_migrations) live
-- in its schema.
alter role :"role" set search_path = fanfare;

-- Nothing in "public": PostgreSQL 15 and later already refuse create there
-- to ordinary roles; older databases may not.
revoke create on schema public from public;
