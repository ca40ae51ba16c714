-- Reboot leases (reboot_leases.rs): a device holds slot `slot` (0 .. budget - 1) of its
-- campaign group's reboot budget from the grant until its commit or rollback, or until
-- `expires_at`. The primary key is the budget itself: two servers granting at once
-- cannot hand out one slot twice. One lease per deployment.
CREATE TABLE reboot_leases (
    campaign_id TEXT NOT NULL REFERENCES campaigns (id),
    reboot_group TEXT NOT NULL,
    slot BIGINT NOT NULL,
    deployment_id TEXT NOT NULL UNIQUE REFERENCES deployments (id),
    device_id TEXT NOT NULL,
    granted_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    PRIMARY KEY (campaign_id, reboot_group, slot)
);

-- Why a device's installed update is not rebooted into yet (its last check-in said):
-- waiting for a reboot lease, or for its drain hook.
ALTER TABLE devices ADD COLUMN waiting TEXT;
