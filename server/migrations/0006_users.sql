-- Dashboard users (users.rs): named accounts with a role (viewer, operator, admin) and an
-- Argon2id password hash (PHC string). Disabled accounts keep their row, so the audit
-- log's actors stay resolvable.
CREATE TABLE users (
    name TEXT PRIMARY KEY,
    password_hash TEXT NOT NULL,
    role TEXT NOT NULL,
    disabled BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);

-- What an audited action was done to when it is not a device (a campaign, a release, a
-- user): `campaign:rollout-2`. device_id is '' for those.
ALTER TABLE audit_log ADD COLUMN subject TEXT;
