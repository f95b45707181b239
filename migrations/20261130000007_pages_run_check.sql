-- Every page belongs to a run: checked once per statement instead of once
-- per row.
--
-- The foreign key pages.run_id -> runs.id checked each inserted row on its
-- own (a lookup and a row lock on runs per page): about a fifth of what a
-- million-page listing cost the server. These triggers keep what it
-- guaranteed, set by set: a statement that adds pages locks the runs they
-- name (FOR KEY SHARE, as the foreign key did, so a run cannot be deleted
-- under a listing that has not committed) and fails when one of them does
-- not exist; deleting runs deletes their pages (as ON DELETE CASCADE did).
-- A page never moves to another run: an update of pages.run_id fails.

alter table pages drop constraint pages_run_id_fkey;

create function pages_check_runs() returns trigger
language plpgsql as $$
declare
    missing uuid;
begin
    perform 1 from runs
    where id in (select distinct run_id from checked_pages)
    for key share;
    select c.run_id into missing
    from (select distinct run_id from checked_pages) c
    where not exists (select 1 from runs r where r.id = c.run_id)
    limit 1;
    if found then
        raise foreign_key_violation
            using message = format('pages name run %s, which does not exist', missing),
                  table = 'pages',
                  constraint = 'pages_run_id_exists';
    end if;
    return null;
end
$$;

create trigger pages_run_exists
    after insert on pages
    referencing new table as checked_pages
    for each statement execute function pages_check_runs();

create function pages_keep_their_run() returns trigger
language plpgsql as $$
begin
    if new.run_id is distinct from old.run_id then
        raise foreign_key_violation
            using message = format('page %s cannot move from run %s to run %s', old.id, old.run_id, new.run_id),
                  table = 'pages',
                  constraint = 'pages_run_id_exists';
    end if;
    return new;
end
$$;

-- Fires only for updates that set run_id, which fanfare never does.
create trigger pages_keep_their_run
    before update of run_id on pages
    for each row execute function pages_keep_their_run();

create function runs_delete_pages() returns trigger
language plpgsql as $$
begin
    delete from pages where run_id in (select id from deleted_runs);
    return null;
end
$$;

create trigger runs_delete_pages
    after delete on runs
    referencing old table as deleted_runs
    for each statement execute function runs_delete_pages();
