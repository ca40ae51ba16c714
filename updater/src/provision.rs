//! Factory provisioning on the device: the record that lets `cairn-server device import`
//! authorize this device (its key) and bind it to its TPM (its EK) before it ships.
//!
//! `cairn provision-record` prints it. In factory mode (a marker file on the boot
//! partition, `[provision] factory_marker`), cairnd makes it at start, writes it to the
//! boot partition (`[provision] out_dir`, for a USB or SD round trip to the bench) and
//! prints it on the console, so a line without network still gets every record.

use std::fs;
use std::path::{Path, PathBuf};

use cairn_server_api::ProvisioningRecord;
use serde::Deserialize;

use crate::context::Context;

/// `[provision]` in system.toml.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProvisionConfig {
    /// Factory mode while this file exists.
    pub factory_marker: PathBuf,
    /// Where factory mode writes `<device_id>.json`.
    pub out_dir: PathBuf,
}

impl Default for ProvisionConfig {
    fn default() -> Self {
        ProvisionConfig {
            factory_marker: "/boot/cairn-factory".into(),
            out_dir: "/boot/provisioning".into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error("no [server] in system.toml: a record is for a fleet server")]
    NoServer,
    #[error("device identity: {0}")]
    Identity(String),
    #[error("TPM: {0}")]
    Tpm(#[from] cairn_tpm::TpmError),
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// This device's record: its identity (made now if it has none), its TPM's EK when it
/// has a TPM, what the firmware calls the board, and the running image's version.
pub fn record(ctx: &Context, tags: &[String]) -> Result<ProvisioningRecord, ProvisionError> {
    let server = ctx.config.server.as_ref().ok_or(ProvisionError::NoServer)?;
    let path = crate::fleet::identity_path(ctx, server);
    let identity = crate::fleet::load_identity(&path, server.device_id.as_deref())
        .map_err(|e| ProvisionError::Identity(e.to_string()))?;
    let (ek_public, ek_certificate) = match &ctx.config.tpm {
        Some(tpm) => {
            let mut tpm = cairn_tpm::Tpm::open(&tpm.tcti)?;
            (
                Some(hex::encode(tpm.ek_public()?)),
                tpm.ek_certificate()?.map(hex::encode),
            )
        }
        None => (None, None),
    };
    Ok(ProvisioningRecord {
        device_id: identity.device_id.clone(),
        public_key: identity.public_key_hex(),
        compatible: ctx.config.compatible.clone(),
        tags: tags.to_vec(),
        hardware_id: hardware_id(),
        image_version: ctx.image_version(),
        ek_public,
        ek_certificate,
    })
}

/// Writes `record` as `<dir>/<device_id>.json`, atomically.
pub fn write(record: &ProvisioningRecord, dir: &Path) -> Result<PathBuf, ProvisionError> {
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| ProvisionError::Io { path, source }
    };
    fs::create_dir_all(dir).map_err(io(dir))?;
    let path = dir.join(format!("{}.json", record.device_id));
    let json = serde_json::to_vec_pretty(record).expect("a record serialises");
    cairn_atomic::write(&path, &json).map_err(io(&path))?;
    Ok(path)
}

/// At cairnd's start: in factory mode, make the record, keep it on the boot partition and
/// print it on the console. Never fatal: a device that cannot is still a device.
pub fn on_start(ctx: &Context) {
    let config = &ctx.config.provision;
    if !config.factory_marker.exists() {
        return;
    }
    let written = record(ctx, &[]).and_then(|r| write(&r, &config.out_dir).map(|p| (r, p)));
    match written {
        Ok((record, path)) => {
            let line = serde_json::to_string(&record).expect("a record serialises");
            tracing::info!(path = %path.display(), "factory mode: provisioning record written");
            let _ = fs::write("/dev/console", format!("cairn-provisioning: {line}\n"));
        }
        Err(e) => tracing::error!("factory mode: no provisioning record: {e}"),
    }
}

/// The board's serial or hardware UUID, from the first firmware source that has one.
fn hardware_id() -> Option<String> {
    [
        "/sys/firmware/devicetree/base/serial-number",
        "/sys/class/dmi/id/product_serial",
        "/sys/class/dmi/id/product_uuid",
    ]
    .iter()
    .filter_map(|path| fs::read(path).ok())
    .map(|bytes| {
        String::from_utf8_lossy(&bytes)
            .trim_matches(['\0', ' ', '\n'])
            .to_string()
    })
    .find(|id| !id.is_empty())
}
