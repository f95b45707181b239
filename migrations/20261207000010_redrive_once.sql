-- At most one open redrive per run: of two redrive requests for the same run
-- racing each other, the second insert waits for the first and then fails on
-- this index (answered 409) instead of crawling the same pages twice. Once
-- the redrive run finishes, the run may be redriven again.
--
-- The index reads parent_run_id, trigger and status; a page report's update
-- of its run changes none of them (status changes a few times per run), so
-- those updates stay HOT.
--
-- A ledger in which a run already has two open redrives (made before this
-- index, by that race) cannot take the index: the migration then stops with
-- a message naming them, instead of a bare unique violation. Cancelling all
-- but one (`fanfare runs cancel ID` with the previous release) lets it pass.
do $$
declare
    twice text;
begin
    select string_agg(format('run %s has open redrives %s', parent_run_id, ids), '; ')
    into twice
    from (
        select parent_run_id, string_agg(id::text, ', ' order by id) as ids
        from runs
        where trigger = 'redrive' and status <> 'finished'
        group by parent_run_id
        having count(*) > 1
    ) t;
    if twice is not null then
        raise exception 'at most one open redrive per run, but %', twice
            using hint = 'cancel all but one of each run''s open redrives (fanfare runs cancel ID), then start the daemon again';
    end if;
end
$$;

create unique index runs_one_open_redrive on runs (parent_run_id)
    where trigger = 'redrive' and status <> 'finished';
