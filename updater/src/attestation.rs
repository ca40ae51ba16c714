//! The device's TPM: measuring the booted slot into PCR 12, enrolling an attestation key
//! (AK) with the server, answering the server's quote requests, and holding the security
//! floor in NV where a wiped data partition cannot lower it.
//!
//! Measurement happens first thing when cairnd starts, before health checks or anything
//! else from the slot runs with write access: the slot name and the verity root hash
//! come from the kernel command line the initramfs verified the root with, the kernel
//! and initrd digests from the files U-Boot loaded. The log is written *before* the
//! PCR is extended, so a crash in between is repaired on the next start: the events the
//! PCR already holds are found as a prefix of the log and only the rest are extended.

use std::fs;
use std::path::{Path, PathBuf};

use cairn_attest::{Event, EventKind, EventLog, CAIRN_PCR};
use cairn_boot::{cmdline, slot_env, KernelCmdline};
use cairn_server_api::{AttestationEvidence, AttestationRequest, TpmActivation, TpmEnrollRequest};
use cairn_tpm::{AkBlob, Tpm};
use serde::{Deserialize, Serialize};

use crate::config::{SystemConfig, Target, TpmConfig};
use crate::fleet::{FleetError, ServerClient};

#[derive(Debug, thiserror::Error)]
pub enum AttestationError {
    #[error("TPM: {0}")]
    Tpm(#[from] cairn_tpm::TpmError),
    #[error("measurement log: {0}")]
    Log(#[from] cairn_attest::AttestError),
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Boot(String),
    #[error(
        "PCR {CAIRN_PCR} holds a value the measurement log does not explain: something else \
         extended it this boot, so this boot cannot be attested"
    )]
    PcrUnexplained,
    #[error(transparent)]
    Fleet(#[from] FleetError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> AttestationError + '_ {
    move |source| AttestationError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn json(path: &Path) -> impl FnOnce(serde_json::Error) -> AttestationError + '_ {
    move |e| io(path)(e.into())
}

/// This boot's measurement log, as [`measure_boot`] wrote it.
pub fn read_log(path: &Path) -> Result<EventLog, AttestationError> {
    let bytes = fs::read(path).map_err(io(path))?;
    serde_json::from_slice(&bytes).map_err(json(path))
}

/// What identifies the booted slot: its name, the verity root hash the initramfs set up
/// dm-verity with, and the digests of its kernel and initrd files.
pub fn boot_events(config: &SystemConfig) -> Result<Vec<(EventKind, String)>, AttestationError> {
    let cmdline_path = &config.system.cmdline;
    let cmdline = KernelCmdline::new(&fs::read_to_string(cmdline_path).map_err(io(cmdline_path))?);
    let missing =
        |key: &str| AttestationError::Boot(format!("no {key}= on the kernel command line"));
    let slot = match (cmdline.slot(), cmdline.value(cmdline::SLOT)) {
        (Some(slot), _) => slot,
        (None, Some(other)) => return Err(AttestationError::Boot(format!("cairn.slot={other}"))),
        (None, None) => return Err(missing(cmdline::SLOT)),
    };
    let root_hash = cmdline
        .verity_root_hash()
        .ok_or_else(|| missing(slot_env::arg::ROOT_HASH))?
        .to_ascii_lowercase();
    let file_digest = |image: &str| -> Result<String, AttestationError> {
        let Some(Target::File(path)) = config.slot(slot).images.get(image) else {
            return Err(AttestationError::Boot(format!(
                "slot {slot} has no {image} file to measure"
            )));
        };
        let mut file = fs::File::open(path).map_err(io(path))?;
        let (digest, _) = cairn_bundle::sha256_reader(&mut file).map_err(io(path))?;
        Ok(digest)
    };
    Ok(vec![
        (EventKind::Slot, slot.to_string().to_ascii_lowercase()),
        (EventKind::RootfsVerityRoot, root_hash),
        (EventKind::Kernel, file_digest("kernel")?),
        (EventKind::Initrd, file_digest("initrd")?),
    ])
}

/// Makes PCR 12 and the log at `tpm.event_log` hold `events`, once per boot. Returns the
/// log. Safe to call on every start: a complete log that replays to the PCR is kept.
pub fn measure_boot(
    tpm: &mut Tpm,
    config: &TpmConfig,
    events: &[(EventKind, String)],
) -> Result<EventLog, AttestationError> {
    let path = &config.event_log;
    let log = match fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(json(path))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut log = EventLog::new();
            for (kind, value) in events {
                log.push(Event::new(*kind, value)?);
            }
            if let Some(dir) = path.parent() {
                fs::create_dir_all(dir).map_err(io(dir))?;
            }
            let bytes = serde_json::to_vec_pretty(&log).map_err(json(path))?;
            cairn_atomic::write(path, &bytes).map_err(io(path))?;
            log
        }
        Err(e) => return Err(io(path)(e)),
    };
    let pcr = tpm.read_pcr(CAIRN_PCR)?;
    let measured = measured_prefix(&log, &pcr)?.ok_or(AttestationError::PcrUnexplained)?;
    for event in &log.events()[measured..] {
        tpm.measure(&mut EventLog::new(), event.kind(), event.value())?;
    }
    Ok(log)
}

/// How many of the log's first events the PCR value already holds.
fn measured_prefix(log: &EventLog, pcr: &[u8; 32]) -> Result<Option<usize>, AttestationError> {
    let mut value = [0u8; 32];
    let mut found = (value == *pcr).then_some(0);
    for (i, event) in log.events().iter().enumerate() {
        value = cairn_attest::event::extend(&value, event.digest());
        if value == *pcr {
            found = Some(i + 1);
        }
    }
    log.replay()?;
    Ok(found)
}

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
    cairn_atomic::write(path, &bytes).map_err(io(path))
}

/// The enrollment on disk, if any (an unreadable one counts as none: a new AK is made).
fn load(path: &Path) -> Option<Enrollment> {
    serde_json::from_slice(&fs::read(path).ok()?).ok()
}

/// What cairnd does with the TPM at each check-in: keep its AK enrolled with the server
/// at `server_url`, and answer the server's quote request if there is one. A device
/// whose AK is trusted and that was asked nothing does not touch the TPM.
pub fn on_check_in(
    config: &SystemConfig,
    tpm_config: &TpmConfig,
    client: &mut ServerClient,
    server_url: &str,
    request: Option<&AttestationRequest>,
) -> Result<Option<cairn_server_api::AttestationResult>, AttestationError> {
    let path = enrollment_path(config);
    let trusted = load(&path)
        .filter(|e| e.trusted_by.as_deref() == Some(server_url))
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
    answer(&mut tpm, client, &ak, &log, request).map(Some)
}

/// Proves to the server that an AK lives in this TPM: the one on disk, or a fresh one.
/// Returns it once the server trusts it; the AK is kept across reboots.
fn enroll(
    tpm: &mut Tpm,
    client: &mut ServerClient,
    path: &Path,
    server_url: &str,
) -> Result<AkBlob, AttestationError> {
    let ak = match load(path) {
        Some(e) => e.ak,
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
    let quote = tpm.quote(ak, &nonce)?;
    let evidence = AttestationEvidence {
        nonce: request.nonce.clone(),
        quote: hex::encode(&quote.attest),
        signature: hex::encode(&quote.signature),
        event_log: serde_json::to_value(log).map_err(json(Path::new("event log")))?,
    };
    Ok(client.attest(&request.deployment_id, &evidence)?)
}

/// The security floor an install must respect: the higher of cairnd's state and the
/// TPM's NV floor (which survives a wiped data partition).
pub fn effective_floor(config: &SystemConfig, state_floor: u64) -> Result<u64, AttestationError> {
    let Some(tpm) = &config.tpm else {
        return Ok(state_floor);
    };
    Ok(state_floor.max(Tpm::open(&tpm.tcti)?.security_floor()?))
}

/// Moves the TPM's floor up to cairnd's committed floor (never down). Called after every
/// start, so a crash between a commit and this write is repaired on the next start.
pub fn sync_floor(config: &SystemConfig, state_floor: u64) -> Result<u64, AttestationError> {
    let Some(tpm) = &config.tpm else {
        return Ok(state_floor);
    };
    Ok(Tpm::open(&tpm.tcti)?.raise_security_floor(state_floor)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(values: &[&str]) -> EventLog {
        let mut log = EventLog::new();
        log.push(Event::new(EventKind::Slot, values[0]).unwrap());
        log.push(Event::new(EventKind::Kernel, values[1]).unwrap());
        log
    }

    #[test]
    fn the_measured_prefix_is_found_after_a_crash_between_extends() {
        let k = "ab".repeat(32);
        let l = log(&["a", &k]);
        assert_eq!(measured_prefix(&l, &[0; 32]).unwrap(), Some(0));
        let one = cairn_attest::event::extend(&[0; 32], l.events()[0].digest());
        assert_eq!(measured_prefix(&l, &one).unwrap(), Some(1));
        assert_eq!(measured_prefix(&l, &l.replay().unwrap()).unwrap(), Some(2));
        assert_eq!(measured_prefix(&l, &[7; 32]).unwrap(), None);
    }
}
