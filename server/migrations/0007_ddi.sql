-- hawkBit DDI (ddi/): devices that install with their own client (SWUpdate's suricatta,
-- rauc-hawkbit-updater) and authenticate with a target token. Only the token's SHA-256
-- is kept; the device row itself is an ordinary one (public_key empty: such a device
-- cannot sign in to Cairn's own device API).
CREATE TABLE ddi_targets (
    device_id TEXT PRIMARY KEY REFERENCES devices (id),
    token_sha256 TEXT NOT NULL UNIQUE,
    -- The client's configData (`{"key": "value"}` as JSON), NULL until it sends it.
    attributes TEXT,
    created_at BIGINT NOT NULL
);

-- Artifacts (bundle images of kind `artifact`), decoded into the blob directory as
-- `<sha256>.artifact` when their release is added, with the digests hawkBit clients check.
CREATE TABLE ddi_artifacts (
    sha256 TEXT PRIMARY KEY,
    sha1 TEXT NOT NULL,
    md5 TEXT NOT NULL,
    size BIGINT NOT NULL
);

-- A cancelled deployment whose client acknowledged the cancelAction: not offered again.
CREATE TABLE ddi_cancel_acks (
    deployment_id TEXT PRIMARY KEY REFERENCES deployments (id),
    acknowledged_at BIGINT NOT NULL
);
