-- At most one open redrive per run: of two redrive requests for the same run
-- racing each other, the second insert waits for the first and then fails on
-- this index (answered 409) instead of crawling the same pages twice. Once
-- the redrive run finishes, the run may be redriven again.
--
-- The index reads parent_run_id, trigger and status; a page report's update
-- of its run changes none of them (status changes a few times per run), so
-- those updates stay HOT.
create unique index runs_one_open_redrive on runs (parent_run_id)
    where trigger = 'redrive' and status <> 'finished';
