-- Console sessions signed out before they expired.
--
-- A console session is a signed cookie that every replica accepts without
-- asking the database. Signing out records the session's nonce here; every
-- replica refuses a cookie whose nonce is listed, reading this table again
-- at most every few seconds. A row is of no use once its session has
-- expired (the signature check refuses the cookie by itself then), and is
-- deleted by the next sign-out.
create table revoked_console_sessions (
    nonce text primary key,
    expires_at timestamptz not null,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now()
);

create index revoked_console_sessions_by_expiry on revoked_console_sessions (expires_at);
