-- What reading a run's page source found: URLs read, duplicates dropped,
-- invalid entries skipped (with the first few as examples).
alter table runs add column listing jsonb;
