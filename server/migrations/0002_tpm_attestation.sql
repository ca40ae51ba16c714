-- TPM attestation (issue 7). A device's TPM is enrolled once: its endorsement key (EK),
-- an attestation key (AK), and the pending MakeCredential challenge until the device
-- proves the AK lives on that TPM (ak_trusted_at set). A committed deployment whose
-- campaign requires attestation holds a fresh nonce until its quote has been checked.

ALTER TABLE devices ADD COLUMN ek_public TEXT;
ALTER TABLE devices ADD COLUMN ek_certificate TEXT;
ALTER TABLE devices ADD COLUMN ak_public TEXT;
ALTER TABLE devices ADD COLUMN ak_challenge TEXT;
ALTER TABLE devices ADD COLUMN ak_trusted_at BIGINT;

ALTER TABLE deployments ADD COLUMN attestation_nonce TEXT;
