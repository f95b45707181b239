-- Retention: finished runs older than `keep_runs_for` are deleted by the
-- pruner (src/retention.rs), their pages and page changes a few thousand
-- rows per transaction, then the run row, whose delete takes its
-- notifications and run_hosts rows with it (on delete cascade) and clears
-- the runs that name it (changes_since, parent_run_id, validators_from: on
-- delete set null).
--
-- Safe while the previous release runs (docs/upgrades.md): it adds indexes
-- on `runs`, one row per run, built in moments (their SHARE lock holds the
-- runs' writes only that long), and sets storage parameters; nothing the
-- previous release reads or writes changes.

-- Deleting a run looks up the runs that name it: by these indexes, not by
-- reading every run. Neither column changes when a page is reported, so
-- the run row's per-report update stays HOT.
create index runs_by_parent on runs (parent_run_id) where parent_run_id is not null;
create index runs_by_changes_since on runs (changes_since) where changes_since is not null;
create index runs_by_validators_from on runs (validators_from) where validators_from is not null;

-- A schedule's runs newest first: the run a finished run is compared with
-- (ledger::previous_run), which the pruner keeps, is the first suitable
-- one of this order, found without sorting every run of the schedule.
-- Neither column ever changes.
create index runs_by_schedule_created on runs (schedule, created_at desc, id desc);

-- Space back in steady state: autovacuum makes the deleted rows' space
-- reusable, and the next listing fills it instead of growing the table.
-- The default (vacuum once a fifth of the table is dead) lets a
-- many-million-row `pages` carry millions of dead rows for a long time, so
-- these tables are vacuumed after a fiftieth (plus 10,000 rows), and their
-- statistics kept as fresh.
--
-- No fillfactor: a report's update of a page can never be HOT, because it
-- changes `status`, which `pages_by_run_status` indexes (and the partial
-- indexes pages_pending, pages_in_flight, pages_overdue and
-- pages_in_flight_by_host name in their predicates): free room left in
-- each heap page would only make the table larger.
--
-- Setting these takes a SHARE UPDATE EXCLUSIVE lock only: reads and writes
-- of the tables go on while it is taken.
alter table pages set (
    autovacuum_vacuum_scale_factor = 0.02,
    autovacuum_vacuum_threshold = 10000,
    autovacuum_analyze_scale_factor = 0.02,
    autovacuum_analyze_threshold = 10000
);
alter table page_changes set (
    autovacuum_vacuum_scale_factor = 0.02,
    autovacuum_vacuum_threshold = 10000,
    autovacuum_analyze_scale_factor = 0.02,
    autovacuum_analyze_threshold = 10000
);
