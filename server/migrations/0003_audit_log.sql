-- Operator actions that change a device's trust (reset its TPM enrollment, reject,
-- revoke): who did what to which device, and when. Append-only; `cairn-server audit`
-- and GET /admin/v1/audit show it, and each entry is mirrored in the device's history.

CREATE TABLE audit_log (
    id TEXT PRIMARY KEY,
    at BIGINT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    device_id TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE INDEX audit_log_at ON audit_log (at);
