//! The attestation key (AK): proving to the server that it lives in this TPM
//! (MakeCredential / ActivateCredential), and quoting this boot's measurements when the
//! server asks.

use std::fs;
use std::path::{Path, PathBuf};

use cairn_attest::{EventKind, EventLog};
use cairn_server_api::{
    ak_digest, codes, AttestationEvidence, AttestationRequest, TpmActivation, TpmEnrollRequest,
};
use cairn_tpm::{AkBlob, Tpm};
use serde::{Deserialize, Serialize};

use super::TpmConfig;
use super::{io, json, read_log, AttestationError};
use crate::config::SystemConfig;
use crate::fleet::ServerClient;

/// The AK and whether the server trusts it, kept in `<data_dir>/tpm.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Enrollment {
    pub ak: AkBlob,
    /// The server for which `ak` passed the MakeCredential challenge.
    pub trusted_by: Option<String>,
}

pub fn enrollment_path(config: &SystemConfig) -> PathBuf {
    config.data_dir.join("tpm.json")
}

fn save(path: &Path, enrollment: &Enrollment) -> Result<(), AttestationError> {
    let bytes = serde_json::to_vec_pretty(enrollment).map_err(json(path))?;
    crate::state::reserve::write(path, &bytes).map_err(io(path))
}

/// The enrollment on disk, if any (an unreadable one counts as none: a new AK is made).
fn load(path: &Path) -> Option<Enrollment> {
    serde_json::from_slice(&fs::read(path).ok()?).ok()
}

/// What cairnd does with the TPM at each check-in: keep its AK enrolled with the server
/// at `server_url`, and answer the server's quote request if there is one. A device
/// whose AK is trusted and that was asked nothing does not touch the TPM.
///
/// `server_trusts` is the check-in answer's `trusted_ak`. The local record alone cannot
/// tell whether the server still trusts the AK: a server restored from a backup, rebuilt
/// at the same URL, or whose operator reset the device's TPM has forgotten it. So the AK
/// counts as trusted only while the server names it; otherwise the record is dropped and
/// the same AK is enrolled again under the same EK (the server's EK binding holds). A
/// quote refused with `unknown-attestation-key` does the same, then is sent once more.
pub fn on_check_in(
    config: &SystemConfig,
    tpm_config: &TpmConfig,
    client: &mut ServerClient,
    server_url: &str,
    server_trusts: Option<&str>,
    request: Option<&AttestationRequest>,
) -> Result<Option<cairn_server_api::AttestationResult>, AttestationError> {
    let path = enrollment_path(config);
    let trusted = load(&path)
        .filter(|e| e.trusted_by.as_deref() == Some(server_url))
        .filter(|e| {
            let named = server_trusts == Some(ak_digest(&e.ak.public).as_str());
            if !named {
                tracing::warn!(
                    "{server_url} does not trust this device's attestation key any more \
                     (restored, rebuilt or reset): enrolling it again"
                );
            }
            named
        })
        .map(|e| e.ak);
    if trusted.is_some() && request.is_none() {
        return Ok(None);
    }
    let mut tpm = Tpm::open(&tpm_config.tcti)?;
    let ak = match trusted {
        Some(ak) => ak,
        None => enroll(&mut tpm, client, &path, server_url)?,
    };
    let Some(request) = request else {
        return Ok(None);
    };
    let log = read_log(&tpm_config.event_log)?;
    match answer(&mut tpm, client, &ak, &log, request) {
        Err(AttestationError::Fleet(e)) if e.code() == Some(codes::UNKNOWN_ATTESTATION_KEY) => {
            tracing::warn!("{e}; enrolling the attestation key again");
            let ak = enroll(&mut tpm, client, &path, server_url)?;
            answer(&mut tpm, client, &ak, &log, request).map(Some)
        }
        other => other.map(Some),
    }
}

/// Proves to the server that an AK lives in this TPM: the one on disk, or a fresh one.
/// Returns it once the server trusts it; the AK is kept across reboots. The record says
/// "not trusted" (saved atomically) before the server is asked, so a power cut midway
/// leaves a device that enrolls again rather than one that believes a stale trust.
fn enroll(
    tpm: &mut Tpm,
    client: &mut ServerClient,
    path: &Path,
    server_url: &str,
) -> Result<AkBlob, AttestationError> {
    let ak = match load(path) {
        Some(e) => {
            if e.trusted_by.is_some() {
                save(
                    path,
                    &Enrollment {
                        ak: e.ak.clone(),
                        trusted_by: None,
                    },
                )?;
            }
            e.ak
        }
        None => {
            let ak = tpm.create_ak()?;
            save(
                path,
                &Enrollment {
                    ak: ak.clone(),
                    trusted_by: None,
                },
            )?;
            ak
        }
    };
    let request = TpmEnrollRequest {
        ek_public: hex::encode(tpm.ek_public()?),
        ek_certificate: tpm.ek_certificate()?.map(hex::encode),
        ak_public: hex::encode(&ak.public),
    };
    let challenge = client.tpm_enroll(&request)?;
    let unhex = |what: &str, s: &str| {
        hex::decode(s).map_err(|e| AttestationError::Boot(format!("server's {what}: {e}")))
    };
    let secret = tpm.activate_credential(
        &ak,
        &unhex("credential_blob", &challenge.credential_blob)?,
        &unhex("encrypted_secret", &challenge.encrypted_secret)?,
    )?;
    client.tpm_activate(&TpmActivation {
        secret: hex::encode(secret),
    })?;
    save(
        path,
        &Enrollment {
            ak: ak.clone(),
            trusted_by: Some(server_url.to_string()),
        },
    )?;
    tracing::info!("TPM attestation key enrolled and trusted by {server_url}");
    Ok(ak)
}

/// Answers the server's request for a quote over this boot's measurements.
fn answer(
    tpm: &mut Tpm,
    client: &mut ServerClient,
    ak: &AkBlob,
    log: &EventLog,
    request: &AttestationRequest,
) -> Result<cairn_server_api::AttestationResult, AttestationError> {
    let nonce = hex::decode(&request.nonce)
        .map_err(|e| AttestationError::Boot(format!("server's nonce: {e}")))?;
    // A log that starts with systemd-boot's measurement is the UEFI path's: the quote
    // must also cover PCR 11, the UKI systemd-stub measured.
    let uefi = log.events().first().map(|e| e.kind()) == Some(EventKind::LoaderCmdline);
    let quote = if uefi {
        tpm.quote_uefi(ak, &nonce)?
    } else {
        tpm.quote(ak, &nonce)?
    };
    let evidence = AttestationEvidence {
        nonce: request.nonce.clone(),
        quote: hex::encode(&quote.attest),
        signature: hex::encode(&quote.signature),
        event_log: serde_json::to_value(log).map_err(json(Path::new("event log")))?,
    };
    Ok(client.attest(&request.deployment_id, &evidence)?)
}
