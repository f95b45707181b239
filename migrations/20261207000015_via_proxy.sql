-- Whether a page's recorded report came through a proxy (the report's
-- via_proxy; false when the crawler does not say): null until a report
-- of the page succeeded.
alter table pages add column via_proxy boolean;
