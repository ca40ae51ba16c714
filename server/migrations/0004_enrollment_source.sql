-- Where an enrollment of an unknown id came from (the client address), so pending
-- enrollments can be bounded per source and time window (devices::EnrollLimits).
ALTER TABLE devices ADD COLUMN enroll_source TEXT;
CREATE INDEX devices_pending ON devices (approval, enroll_source, created_at);
