-- Runs started by a redrive, leases for listing, stuck-run notifications,
-- and per-schedule state (pause, a buffered fire).

alter table runs drop constraint runs_trigger_check;
alter table runs add constraint runs_trigger_check check (trigger in ('cron', 'manual', 'redrive', 'catchup'));

-- the run whose failed and timed-out pages a redrive run crawls again
alter table runs add column parent_run_id uuid references runs (id) on delete set null;
-- a run in 'listing' is being listed by whoever holds this lease; past it,
-- any replica takes the listing over (listing is idempotent)
alter table runs add column listing_lease_until timestamptz;
-- set when the run's run.stuck notification was queued (once per run)
alter table runs add column stuck_at timestamptz;

create index runs_listing_lease on runs (listing_lease_until) where status = 'listing';

create table schedule_state (
    schedule text primary key,
    paused boolean not null default false,
    -- overlap = "buffer_one": the fire that waits for the running run
    buffered_fire timestamptz,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now()
);
