-- Pages that need a browser (schedule key render = "always" or "auto").
-- render: the page is dispatched to the browser; escalated: it went there
-- after its plain fetch looked unrendered (render = "auto").
alter table pages add column render boolean not null default false;
alter table pages add column escalated boolean not null default false;

-- What render = "auto" learned about a schedule's hosts: how many of the
-- host's pages in the schedule's latest run needed the browser, and
-- whether the host goes straight to the browser (from render_after such
-- pages in one run on, and in every later run of the schedule).
create table render_hosts (
    schedule text not null,
    host text not null,
    run_id uuid not null,
    escalations integer not null default 0,
    needs_browser boolean not null default false,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    primary key (schedule, host)
);
