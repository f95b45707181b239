-- Runs that grow by following links.
--
-- A page found on another page of its run is added by the statement that
-- records the report carrying the link (with its depth: the page it was
-- found on's depth plus one; listed pages are depth 0), and the run keeps
-- what following links found: how many links its reports carried, how
-- many became pages, and how many were left out and why, with a few
-- examples (the `discovery` object of the API).
alter table pages add column depth integer not null default 0;
-- The page whose report carried the link (no foreign key: pages are
-- deleted with their run, all together).
alter table pages add column found_on bigint;
alter table runs add column discovery jsonb;
