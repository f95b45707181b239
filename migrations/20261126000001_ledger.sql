-- fanfare's ledger: runs, their pages, and the notification outbox.

create table runs (
    id uuid primary key,
    schedule text not null,
    -- the nominal fire time from the cron expression (a manual trigger's own time)
    scheduled_for timestamptz not null,
    trigger text not null check (trigger in ('cron', 'manual')),
    -- listing: pages still being read from the source; running: all listed
    status text not null default 'listing' check (status in ('listing', 'running', 'finished')),
    outcome text check (outcome in ('succeeded', 'partial', 'failed', 'cancelled')),
    error text,
    total_pages bigint not null default 0,
    -- pages not yet terminal; the run finishes when this reaches 0 after listing
    open_pages bigint not null default 0,
    succeeded_pages bigint not null default 0,
    failed_pages bigint not null default 0,
    timed_out_pages bigint not null default 0,
    cancelled_pages bigint not null default 0,
    listed_at timestamptz,
    finished_at timestamptz,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    constraint runs_one_per_fire unique (schedule, scheduled_for),
    constraint runs_counts_add_up check (
        open_pages >= 0
        and open_pages + succeeded_pages + failed_pages + timed_out_pages + cancelled_pages = total_pages
    )
);

create index runs_by_schedule on runs (schedule, scheduled_for desc);
create index runs_unfinished on runs (schedule) where status <> 'finished';

create table pages (
    id bigint generated always as identity primary key,
    run_id uuid not null references runs (id) on delete cascade,
    url text not null,
    status text not null default 'pending'
        check (status in ('pending', 'dispatched', 'succeeded', 'failed', 'timed_out', 'cancelled')),
    -- dispatches so far; the current attempt's number once dispatched
    attempt integer not null default 0,
    -- a pending page is not dispatched before this (retry backoff)
    not_before timestamptz,
    dispatched_at timestamptz,
    deadline timestamptz,
    -- the attempt whose report made the page terminal
    reported_attempt integer,
    result jsonb,
    error jsonb,
    finished_at timestamptz,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now()
);

-- a URL appears once per run
create unique index pages_url_once_per_run on pages (run_id, md5(url));
create index pages_pending on pages (run_id, id) where status = 'pending';
create index pages_in_flight on pages (run_id) where status = 'dispatched';
create index pages_overdue on pages (deadline) where status = 'dispatched';
create index pages_by_run_status on pages (run_id, status, id);

create table notifications (
    id bigint generated always as identity primary key,
    run_id uuid not null references runs (id) on delete cascade,
    event text not null,
    -- index into the schedule's notify list
    target integer not null,
    kind text not null,
    -- stable across retries: the receiver's idempotency key
    webhook_id text not null unique,
    payload jsonb not null,
    status text not null default 'pending' check (status in ('pending', 'delivered', 'failed')),
    attempts integer not null default 0,
    next_attempt_at timestamptz not null default now(),
    last_error text,
    delivered_at timestamptz,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    constraint notifications_once unique (run_id, event, target)
);

create index notifications_due on notifications (next_attempt_at) where status = 'pending';
