-- Conditional fetches. A page's validators: the ETag and Last-Modified
-- its successful fetch got (the report's etag and last_modified; after a
-- 304 Not Modified, those the answer carried, else the previous run's),
-- and whether the site answered 304 (its facts are then the previous
-- run's). All null until a report of the page succeeded.
alter table pages add column etag text;
alter table pages add column last_modified text;
alter table pages add column not_modified boolean;

-- The finished run whose pages' validators this run's dispatches carry,
-- and whose facts a 304 keeps: the schedule's latest finished, fully
-- listed, non-redrive run when this one was created.
alter table runs add column validators_from uuid references runs (id) on delete set null;
