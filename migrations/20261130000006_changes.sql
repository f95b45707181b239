-- What changed since the previous run of the same schedule, written once
-- when a run finishes, in the transaction that finishes it (with its
-- outbox rows): one row per page that is new, changed or gone; unchanged
-- pages (and those that could not be compared) are only counted, on the run.

create table page_changes (
    id bigint generated always as identity primary key,
    run_id uuid not null references runs (id) on delete cascade,
    url text not null,
    kind text not null check (kind in ('new', 'changed', 'gone')),
    -- {title, fields, content_sha256} in the previous run (null for new pages)
    before jsonb,
    -- {title, fields, content_sha256} in this run (null for gone pages)
    after jsonb,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now()
);

-- keyset paging of a run's changes, all kinds or one
create index page_changes_by_run on page_changes (run_id, id);
create index page_changes_by_run_kind on page_changes (run_id, kind, id);

-- The comparison's counts; changes_new is null when the run was not
-- compared (its schedule's first run, a redrive run, a run never fully
-- listed). changes_since is the run it was compared with.
alter table runs add column changes_since uuid references runs (id) on delete set null;
alter table runs add column changes_new bigint;
alter table runs add column changes_changed bigint;
alter table runs add column changes_unchanged bigint;
alter table runs add column changes_gone bigint;
alter table runs add column changes_unknown bigint;
