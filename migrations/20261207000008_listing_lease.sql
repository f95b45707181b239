-- A run's listing is held by one lister at a time: the one whose token is
-- here. A run's first lister holds it as the run's id; a lister taking
-- over an expired lease writes a new token, and the lister it replaced
-- finds its token gone at its next write and stops.
alter table runs add column listing_owner uuid;
update runs set listing_owner = id where status = 'listing';

-- What the run found in each host's robots.txt, written with the host's
-- first pages: a listing taken over reads it here instead of fetching the
-- file again. robots_rules holds the rules for the run's crawler as a
-- robots.txt of one `user-agent: *` group; robots_note says why a host
-- was left out.
alter table run_hosts
    add column robots_outcome text
        check (robots_outcome in ('not_read', 'allowed', 'rules', 'unreachable', 'too_complex')),
    add column robots_rules text,
    add column robots_note text;
