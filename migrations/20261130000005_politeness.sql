-- Per-host politeness: each page knows its host; every host has one
-- dispatch clock shared by all runs and replicas; each run keeps its limits
-- for each of its hosts (from the schedule, robots.txt's Crawl-delay and
-- the site's throttling).

-- The URL's authority without user info, lowercased: `shop.example.com`,
-- `127.0.0.1:8080`, `[::1]:81`. Derived by the server, so it can never
-- disagree with the URL (`ledger::host_of` computes the same in the daemon).
alter table pages add column host text not null
    generated always as (lower(coalesce(substring(url from '^[^:/?#]+://(?:[^@/?#]*@)?([^/?#]*)'), ''))) stored;
-- Dispatches of this page answered by the site with 429/503: they do not
-- count against max_attempts (the page's counted attempt is attempt minus this).
alter table pages add column site_throttles integer not null default 0;

-- A claim takes a run's ready pages host by host: retries that are due
-- (oldest first), then new pages by id. That order is this index's alone,
-- so a claim reads it here and never walks the pages already claimed
-- (ordered by id only, the planner would take the primary key, which it
-- believes as full of pending pages at the end of a run as at its start).
drop index pages_pending;
create index pages_pending on pages (run_id, host, not_before nulls last, id)
    where status = 'pending';
-- A host's pages in flight, across runs.
create index pages_in_flight_by_host on pages (host) where status = 'dispatched';

create table hosts (
    host text primary key,
    -- the next page of this host is not dispatched before this (any run, any replica)
    next_at timestamptz not null default '-infinity',
    created_at timestamptz not null default now()
);

create table run_hosts (
    run_id uuid not null references runs (id) on delete cascade,
    host text not null references hosts (host),
    -- the run's pages of this host dispatched and unreported at once, at most
    in_flight_limit integer not null check (in_flight_limit > 0),
    -- seconds between two dispatches to the host: from per_host_rate and
    -- robots.txt's Crawl-delay, the larger
    base_interval float8 not null default 0 check (base_interval >= 0),
    -- base_interval, lengthened while the site throttles (429/503)
    interval float8 not null default 0 check (interval >= 0),
    -- the site's Retry-After: no dispatch to the host before this
    paused_until timestamptz,
    throttled_at timestamptz,
    throttles integer not null default 0,
    primary key (run_id, host)
);

-- Runs from before this migration: their hosts at the default limit
-- (per_host_in_flight = 8, no interval), so that their pending pages are
-- claimed and a redrive of them knows its hosts.
insert into hosts (host) select distinct host from pages on conflict do nothing;
insert into run_hosts (run_id, host, in_flight_limit)
select distinct run_id, host, 8 from pages
on conflict do nothing;
