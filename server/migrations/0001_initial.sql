-- Portable SQL: the same migration runs on SQLite and PostgreSQL (TEXT and BIGINT only,
-- times are Unix milliseconds, JSON is kept as TEXT). Uniqueness constraints, not
-- application locks, keep concurrent servers from double-assigning.

CREATE TABLE server_secrets (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE releases (
    id TEXT PRIMARY KEY,
    compatible TEXT NOT NULL,
    version TEXT NOT NULL,
    security_version BIGINT NOT NULL,
    bundle_sha256 TEXT NOT NULL,
    bundle_size BIGINT NOT NULL,
    blob_name TEXT,
    external_url TEXT,
    manifest TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    UNIQUE (compatible, version)
);

CREATE TABLE devices (
    id TEXT PRIMARY KEY,
    public_key TEXT NOT NULL,
    approval TEXT NOT NULL,
    compatible TEXT NOT NULL,
    tags TEXT NOT NULL,
    version TEXT,
    booted_slot TEXT,
    committed_slot TEXT,
    security_floor BIGINT,
    images TEXT,
    last_checkin BIGINT,
    enrolled_at BIGINT,
    created_at BIGINT NOT NULL
);
CREATE INDEX devices_compatible ON devices (compatible);

CREATE TABLE nonces (
    device_id TEXT NOT NULL,
    nonce TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    PRIMARY KEY (device_id, nonce)
);
CREATE INDEX nonces_expiry ON nonces (expires_at);

CREATE TABLE campaigns (
    id TEXT PRIMARY KEY,
    release_id TEXT NOT NULL REFERENCES releases (id),
    policy TEXT NOT NULL,
    salt TEXT NOT NULL,
    state TEXT NOT NULL,
    wave_bounds TEXT,
    wave_sizes TEXT,
    opened_waves BIGINT NOT NULL,
    gate_met_at BIGINT,
    failures_acknowledged BIGINT NOT NULL,
    state_reason TEXT,
    created_at BIGINT NOT NULL,
    started_at BIGINT
);

-- live is 1 while the deployment is not terminal and NULL after: NULLs never collide in
-- a UNIQUE constraint, so (device_id, live) allows one live deployment per device.
CREATE TABLE deployments (
    id TEXT PRIMARY KEY,
    campaign_id TEXT NOT NULL REFERENCES campaigns (id),
    device_id TEXT NOT NULL REFERENCES devices (id),
    wave BIGINT NOT NULL,
    state TEXT NOT NULL,
    live BIGINT,
    plan TEXT NOT NULL,
    reason TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    UNIQUE (campaign_id, device_id),
    UNIQUE (device_id, live)
);
CREATE INDEX deployments_campaign ON deployments (campaign_id, wave, state);

CREATE TABLE reports (
    deployment_id TEXT NOT NULL REFERENCES deployments (id),
    report_id TEXT NOT NULL,
    state TEXT NOT NULL,
    detail TEXT,
    received_at BIGINT NOT NULL,
    PRIMARY KEY (deployment_id, report_id)
);

CREATE TABLE history (
    id TEXT PRIMARY KEY,
    device_id TEXT NOT NULL,
    at BIGINT NOT NULL,
    event TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE INDEX history_device ON history (device_id, at);
