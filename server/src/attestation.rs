//! TPM attestation: enrolling a device's attestation key (AK) and checking the quote a
//! committed deployment must send before it counts as a success.
//!
//! Enrollment proves the AK lives in the TPM that owns the endorsement key (EK): the
//! server wraps a random secret with TPM2_MakeCredential for that EK and the AK's name,
//! and only that TPM's ActivateCredential, holding that AK, can unwrap it. Until the
//! device sends the secret back, the AK is not trusted. The first EK a device presents
//! is bound to it for good: a device that re-enrolls (its data partition was wiped, say)
//! may bring a new AK but never another EK, whether or not its AK was trusted, until an
//! operator resets its TPM enrollment ([`reset`], audit-logged). Binding only while an AK
//! is trusted would not do: each enrollment clears the trust, so a device could first
//! re-enroll its old EK with a new AK and then switch EKs.
//!
//! Attestation: when a campaign requires it, `committed` moves a deployment to
//! `attestation-pending` with a fresh nonce (`reports.rs`). The device's check-in answer
//! asks for a quote over that nonce; the quote must be signed by the trusted AK, carry
//! the nonce, and its event log must replay to the quoted PCR and name the rootfs verity
//! root hash, kernel and initrd of the release the campaign installed. A release that
//! boots through UEFI (a `uki` image) is checked by its UKI's digest instead, and its
//! quote must also cover PCR 11 with the value the signed manifest pins (docs/UEFI.md).
//! Otherwise the deployment ends `attestation-failed`, which the gates count as a failure.

use cairn_bundle::Manifest;
use cairn_server_api::{
    AttestationEvidence, AttestationRequest, AttestationResult, DeploymentState, TpmActivation,
    TpmChallenge, TpmEnrollRequest, TpmEnrollStatus,
};
use sha2::{Digest, Sha256};
use sqlx::Row as _;

use crate::audit;
use crate::caches::Caches;
use crate::db::{now_ms, random_bytes, Db};
use crate::devices;
use crate::error::{ApiError, ApiResult};
use crate::{campaigns, deployments};

/// The PCRs a quote must select (SHA-256 bank).
pub fn quoted_pcrs() -> Vec<u8> {
    vec![cairn_attest::CAIRN_PCR]
}

/// A fresh attestation nonce, hex.
pub fn new_nonce() -> String {
    hex::encode(random_bytes::<32>())
}

/// The check-in's request for a quote, when `nonce` is set on a pending deployment.
pub fn request(deployment_id: &str, nonce: Option<&str>) -> Option<AttestationRequest> {
    Some(AttestationRequest {
        deployment_id: deployment_id.to_string(),
        nonce: nonce?.to_string(),
        pcrs: quoted_pcrs(),
    })
}

fn unhex(field: &str, value: &str, max: usize) -> ApiResult<Vec<u8>> {
    if value.len() > 2 * max {
        return Err(ApiError::bad_request(
            "bad-tpm-data",
            format!("{field} is longer than {max} bytes"),
        ));
    }
    hex::decode(value)
        .map_err(|e| ApiError::bad_request("bad-tpm-data", format!("{field} is not hex: {e}")))
}

/// `POST /v1/device/tpm`: records the EK and a candidate AK and answers with the
/// challenge. `ek_ca` (PEM or DER), when the server pins one, must have issued the EK
/// certificate the device sends.
pub async fn enroll(
    db: &Db,
    ek_ca: Option<&[u8]>,
    device_id: &str,
    request: &TpmEnrollRequest,
) -> ApiResult<TpmChallenge> {
    let ek_public = unhex("ek_public", &request.ek_public, 1024)?;
    let ak_public = unhex("ak_public", &request.ak_public, 1024)?;
    let ek_certificate = match &request.ek_certificate {
        Some(c) => Some(unhex("ek_certificate", c, 4096)?),
        None => None,
    };
    if let Some(ca) = ek_ca {
        let cert = ek_certificate.as_deref().ok_or_else(|| {
            ApiError::forbidden(
                "ek-certificate-required",
                "this server only trusts TPMs whose EK certificate it can check; send ek_certificate",
            )
        })?;
        cairn_attest::verify_ek_certificate(cert, ca, &ek_public)
            .map_err(|e| ApiError::forbidden("ek-certificate-rejected", e.to_string()))?;
    }
    // Stored and compared as lowercase hex, however the device spells it.
    let ek_hex = request.ek_public.to_ascii_lowercase();
    let row = sqlx::query("SELECT ek_public FROM devices WHERE id = $1")
        .bind(device_id)
        .fetch_optional(&db.pool)
        .await?
        .ok_or_else(|| devices::unknown(device_id))?;
    let bound: Option<String> = row.try_get("ek_public")?;
    if !ek_may_enroll(bound.as_deref(), &ek_hex) {
        return Err(ek_changed(device_id));
    }
    let secret = random_bytes::<32>();
    let challenge = cairn_attest::challenge_ak(&ek_public, &ak_public, &secret)
        .map_err(|e| ApiError::bad_request("bad-tpm-key", e.to_string()))?;
    // Compare-and-set on the binding: another server may have bound another EK since
    // the read above.
    let done = sqlx::query(
        "UPDATE devices SET ek_public = $1, ek_certificate = $2, ak_public = $3, ak_challenge = $4, \
         ak_trusted_at = NULL WHERE id = $5 AND (ek_public IS NULL OR LOWER(ek_public) = $1)",
    )
    .bind(&ek_hex)
    .bind(&request.ek_certificate)
    .bind(&request.ak_public)
    .bind(hex::encode(Sha256::digest(secret)))
    .bind(device_id)
    .execute(&db.pool)
    .await?;
    if done.rows_affected() == 0 {
        return Err(ek_changed(device_id));
    }
    devices::record(
        db,
        device_id,
        "tpm",
        "attestation key enrolled, challenge sent",
    )
    .await?;
    Ok(TpmChallenge {
        credential_blob: hex::encode(challenge.credential_blob),
        encrypted_secret: hex::encode(challenge.encrypted_secret),
    })
}

/// Whether a device whose bound EK is `bound` (lowercase hex; `None`: none yet) may
/// enroll an AK under `presented`: only under the EK it is bound to.
fn ek_may_enroll(bound: Option<&str>, presented: &str) -> bool {
    bound.is_none_or(|b| b.eq_ignore_ascii_case(presented))
}

fn ek_changed(device_id: &str) -> ApiError {
    ApiError::conflict(
        "ek-changed",
        format!(
            "device {device_id} is bound to another TPM (endorsement key); an operator must reset its TPM enrollment (cairn-server device reset-tpm {device_id})"
        ),
    )
}

/// The operator's `device reset-tpm`: forgets the device's EK, AK and any open challenge,
/// so its next `POST /v1/device/tpm` binds whatever EK it presents. Audit-logged.
pub async fn reset(db: &Db, device_id: &str, actor: &str) -> ApiResult<()> {
    let mut tx = db.pool.begin().await?;
    devices::lock_row(&mut tx, device_id).await?;
    let row = sqlx::query("SELECT ek_public FROM devices WHERE id = $1")
        .bind(device_id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| devices::unknown(device_id))?;
    let old: Option<String> = row.try_get("ek_public")?;
    sqlx::query(
        "UPDATE devices SET ek_public = NULL, ek_certificate = NULL, ak_public = NULL, \
         ak_challenge = NULL, ak_trusted_at = NULL WHERE id = $1",
    )
    .bind(device_id)
    .execute(&mut *tx)
    .await?;
    let detail = match old {
        Some(ek) => format!(
            "TPM enrollment reset; endorsement key {} unbound (sha256 of its TPM2B_PUBLIC)",
            hex::encode(Sha256::digest(hex::decode(&ek).unwrap_or_default()))
        ),
        None => "TPM enrollment reset (no endorsement key was bound)".to_string(),
    };
    audit::record(&mut tx, actor, "reset-tpm", device_id, &detail).await?;
    tx.commit().await?;
    Ok(())
}

/// `POST /v1/device/tpm/activate`: the AK is trusted once the device returns the
/// challenge's secret. One attempt per challenge.
pub async fn activate(
    db: &Db,
    device_id: &str,
    activation: &TpmActivation,
) -> ApiResult<TpmEnrollStatus> {
    let secret = unhex("secret", &activation.secret, 64)?;
    let row = sqlx::query("SELECT ak_challenge FROM devices WHERE id = $1")
        .bind(device_id)
        .fetch_optional(&db.pool)
        .await?
        .ok_or_else(|| devices::unknown(device_id))?;
    let expected: String = row
        .try_get::<Option<String>, _>("ak_challenge")?
        .ok_or_else(|| {
            ApiError::conflict(
                "no-challenge",
                "no TPM challenge is open: POST /v1/device/tpm first",
            )
        })?;
    let solved = hex::encode(Sha256::digest(&secret)) == expected;
    let trusted_at = solved.then(now_ms);
    let done = sqlx::query(
        "UPDATE devices SET ak_challenge = NULL, ak_trusted_at = $1 WHERE id = $2 AND ak_challenge = $3",
    )
    .bind(trusted_at)
    .bind(device_id)
    .bind(&expected)
    .execute(&db.pool)
    .await?;
    if done.rows_affected() == 0 {
        return Err(ApiError::conflict(
            "busy",
            "the TPM enrollment changed; enroll again",
        ));
    }
    if !solved {
        devices::record(
            db,
            device_id,
            "tpm",
            "challenge answered wrongly; key not trusted",
        )
        .await?;
        return Err(ApiError::forbidden(
            "wrong-secret",
            "the secret does not match the challenge: the attestation key is not in the enrolled TPM",
        ));
    }
    devices::record(db, device_id, "tpm", "attestation key trusted").await?;
    Ok(TpmEnrollStatus { ak_trusted: true })
}

/// What the release says the slot must hold, as the event log names it.
struct Expected {
    rootfs_verity_root: Option<String>,
    boot: ExpectedBoot,
}

/// The release's boot files, by boot path: a release with a `uki` image boots through
/// UEFI, and pins the PCR 4, PCR 7 and PCR 11 a boot of its UKI leaves (`pcr4`, `pcr7` and
/// `pcr11` in the signed manifest).
enum ExpectedBoot {
    Uboot {
        kernel_sha256: Option<String>,
        initrd_sha256: Option<String>,
    },
    Uefi {
        uki_sha256: String,
        pcr4: Option<[u8; 32]>,
        pcr7: Option<[u8; 32]>,
        pcr11: Option<[u8; 32]>,
    },
}

/// A manifest's 64-hex-digit PCR value (checked when the bundle was read).
fn pcr_value(hex: Option<&str>) -> Option<[u8; 32]> {
    hex.and_then(|hex| hex::decode(hex).ok())
        .and_then(|bytes| bytes.try_into().ok())
}

fn expected(manifest: &Manifest) -> Expected {
    let image = |name: &str| manifest.images.iter().find(|i| i.name == name);
    let boot = match image("uki") {
        Some(uki) => ExpectedBoot::Uefi {
            uki_sha256: uki.sha256.to_lowercase(),
            pcr4: pcr_value(uki.pcr4.as_deref()),
            pcr7: pcr_value(uki.pcr7.as_deref()),
            pcr11: pcr_value(uki.pcr11.as_deref()),
        },
        None => ExpectedBoot::Uboot {
            kernel_sha256: image("kernel").map(|i| i.sha256.to_lowercase()),
            initrd_sha256: image("initrd").map(|i| i.sha256.to_lowercase()),
        },
    };
    Expected {
        rootfs_verity_root: image("rootfs")
            .and_then(|i| i.verity.as_ref())
            .map(|v| v.root_hash.to_lowercase()),
        boot,
    }
}

/// Why the measured slot is not the release, or `None` when it is.
fn mismatch(expected: &Expected, measured: &cairn_attest::Measured) -> Option<String> {
    use cairn_attest::MeasuredBoot;
    let differs = |what: &str, want: &Option<String>, got: &String| match want {
        Some(want) if want != got => {
            Some(format!("measured {what} {got} is not the release's {want}"))
        }
        _ => None,
    };
    let root = differs(
        "rootfs verity root hash",
        &expected.rootfs_verity_root,
        &measured.rootfs_verity_root,
    );
    let boot = match (&expected.boot, &measured.boot) {
        (
            ExpectedBoot::Uboot {
                kernel_sha256,
                initrd_sha256,
            },
            MeasuredBoot::Uboot {
                kernel_sha256: kernel,
                initrd_sha256: initrd,
            },
        ) => differs("kernel", kernel_sha256, kernel)
            .or_else(|| differs("initrd", initrd_sha256, initrd)),
        (
            ExpectedBoot::Uefi { uki_sha256, .. },
            MeasuredBoot::Uefi {
                uki_sha256: got, ..
            },
        ) => differs("UKI", &Some(uki_sha256.clone()), got),
        (ExpectedBoot::Uboot { .. }, MeasuredBoot::Uefi { .. }) => {
            Some("the device booted through UEFI; the release boots with U-Boot".into())
        }
        (ExpectedBoot::Uefi { .. }, MeasuredBoot::Uboot { .. }) => {
            Some("the device booted with U-Boot; the release boots through UEFI".into())
        }
    };
    if let Some(why) = root.or(boot) {
        return Some(why);
    }
    if expected.rootfs_verity_root.is_none() {
        return Some("the release has no verity-protected rootfs to attest".into());
    }
    None
}

/// Checks `evidence` against the device's trusted AK, the deployment's nonce and the
/// release, and ends the deployment: `succeeded` or `attestation-failed`. A malformed
/// request changes nothing.
pub async fn attest(
    db: &Db,
    caches: &Caches,
    device_id: &str,
    deployment_id: &str,
    evidence: &AttestationEvidence,
) -> ApiResult<AttestationResult> {
    let quote = unhex("quote", &evidence.quote, 4096)?;
    let signature = unhex("signature", &evidence.signature, 4096)?;
    let nonce = unhex("nonce", &evidence.nonce, 64)?;
    let log: cairn_attest::EventLog = serde_json::from_value(evidence.event_log.clone())
        .map_err(|e| ApiError::bad_request("bad-event-log", e.to_string()))?;
    let target = deployments::for_attestation(db, device_id, deployment_id).await?;
    let state = target.state;
    let (Some(stored_nonce), "attestation-pending") = (target.attestation_nonce, state.as_str())
    else {
        return Err(ApiError::conflict(
            "not-pending",
            format!("deployment {deployment_id} is {state}, not waiting for attestation"),
        ));
    };
    // No trusted AK says nothing about what booted (a server restored from a backup
    // taken before the enrollment, an operator's reset-tpm): the device is told to
    // enroll again and the deployment stays pending for its next quote.
    let (Some(ak), Some(_)) = (target.ak_public, target.ak_trusted_at) else {
        return Err(ApiError::conflict(
            cairn_server_api::codes::UNKNOWN_ATTESTATION_KEY,
            format!(
                "this server trusts no attestation key of device {device_id}: enroll the TPM's \
                 attestation key (POST /v1/device/tpm) and send the quote again"
            ),
        ));
    };
    let release = caches.release(db, &target.release_id).await?;
    let verdict = check(
        &ak,
        &quote,
        &signature,
        &nonce,
        &stored_nonce,
        &log,
        &release.1,
    );
    let (next, reason) = match &verdict {
        Ok(()) => (DeploymentState::Succeeded, None),
        Err(why) => (
            DeploymentState::AttestationFailed,
            Some(format!("attestation failed: {why}")),
        ),
    };
    let moved = deployments::end_attestation(
        db,
        deployment_id,
        &stored_nonce,
        next,
        reason.as_deref(),
        now_ms(),
    )
    .await?;
    if !moved {
        return Err(ApiError::conflict(
            "busy",
            "the deployment changed meanwhile; check in again",
        ));
    }
    let detail = match &reason {
        Some(r) => format!("{deployment_id}: {r}"),
        None => format!("{deployment_id}: attested"),
    };
    devices::record(db, device_id, "attestation", &detail).await?;
    caches.invalidate_campaigns();
    let campaign_id = target.campaign_id;
    if let Err(e) = campaigns::evaluate(db, &campaign_id).await {
        tracing::warn!(campaign = %campaign_id, "evaluating after an attestation: {e}");
    }
    Ok(AttestationResult {
        deployment_id: deployment_id.to_string(),
        deployment_state: next,
        reason,
    })
}

/// The quote's verdict, as a reason for the operator when it fails.
fn check(
    ak_public_hex: &str,
    quote: &[u8],
    signature: &[u8],
    nonce: &[u8],
    stored_nonce: &str,
    log: &cairn_attest::EventLog,
    manifest: &Manifest,
) -> Result<(), String> {
    if hex::encode(nonce) != stored_nonce {
        return Err("the quote answers another nonce (stale or replayed)".into());
    }
    let ak = hex::decode(ak_public_hex).map_err(|e| format!("stored AK: {e}"))?;
    let expected = expected(manifest);
    let uefi = match &expected.boot {
        ExpectedBoot::Uefi {
            pcr4, pcr7, pcr11, ..
        } => Some(cairn_attest::UefiPcrs {
            pcr4: pcr4.ok_or("the release's UKI has no PCR 4 value to attest")?,
            pcr7: pcr7.ok_or("the release's UKI has no PCR 7 value to attest")?,
            pcr11: pcr11.ok_or("the release's UKI has no PCR 11 value to attest")?,
        }),
        ExpectedBoot::Uboot { .. } => None,
    };
    let measured = cairn_attest::verify_quote(&ak, quote, signature, nonce, log, uefi.as_ref())
        .map_err(|e| e.to_string())?;
    match mismatch(&expected, &measured) {
        Some(why) => Err(why),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::ek_may_enroll;

    #[test]
    fn an_endorsement_key_once_bound_stays_bound() {
        assert!(ek_may_enroll(None, "aa01"), "the first EK binds");
        assert!(ek_may_enroll(Some("aa01"), "aa01"), "same EK, new AK");
        assert!(
            ek_may_enroll(Some("aa01"), "AA01"),
            "hex case does not matter"
        );
        assert!(!ek_may_enroll(Some("aa01"), "bb02"));
    }
}
