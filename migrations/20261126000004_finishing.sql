-- A run whose last page was just recorded is 'finishing' until its outcome
-- and notifications are written. The statement that records a page takes the
-- run's open-page counter down and, at zero, moves the run from 'running' to
-- 'finishing' atomically; a second short transaction finishes it (whoever
-- takes its row lock first while it is still 'finishing'). A run left
-- 'finishing' by a crash between the two is finished by the sweeper.
alter table runs drop constraint runs_status_check;
alter table runs add constraint runs_status_check
    check (status in ('listing', 'running', 'finishing', 'finished'));

-- Indexes only columns a page report does not change (id; status changes
-- once per run), so the run row's per-report update stays a HOT update.
create index runs_finishing on runs (id) where status = 'finishing';
