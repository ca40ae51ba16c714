//! The signed server override on the data partition (`<data_dir>/server-override.json`,
//! format and signature rules in `cairn_bundle::server_override`): a device provisioned
//! for a site's own server checks in there instead of where its image points.
//!
//! Taken only when a threshold of the trust root the device holds signed it and it is for
//! this device; anything else is refused with the reason in the log, and the image's
//! `[server]` stays. A refused override never stops cairnd: the device still reaches the
//! server its image names, which is how an operator repairs a wrong one.

use std::path::{Path, PathBuf};

use cairn_boot::device_settings::SERVER_OVERRIDE;
use cairn_bundle::SignedServerOverride;

use crate::context::Context;

/// What became of the override file at start.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
#[serde(tag = "outcome", content = "detail", rename_all = "kebab-case")]
pub enum OverrideOutcome {
    /// No file: the image's `[server]`.
    #[default]
    Absent,
    /// The file's server replaced the image's.
    Applied { url: String },
    /// The file was refused for this reason; the image's `[server]` stays.
    Refused(String),
}

pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(SERVER_OVERRIDE)
}

/// Reads, checks and applies the override to `ctx.config.server`. Silent: a Context is
/// opened every few seconds, so cairnd says what became of the override once, at start
/// ([`log_outcome`]), and `cairn status` shows it.
pub fn apply(ctx: &mut Context) -> OverrideOutcome {
    let path = path(&ctx.config.data_dir);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return OverrideOutcome::Absent,
        Err(e) => return OverrideOutcome::Refused(format!("{}: unreadable: {e}", path.display())),
    };
    match checked(ctx, &bytes) {
        Ok(server) => {
            let url = server.url.clone();
            ctx.config.server = Some(server);
            OverrideOutcome::Applied { url }
        }
        Err(reason) => OverrideOutcome::Refused(reason),
    }
}

/// cairnd's one line about the override at start.
pub fn log_outcome(outcome: &OverrideOutcome) {
    match outcome {
        OverrideOutcome::Absent => {}
        OverrideOutcome::Applied { url } => tracing::info!(%url, "server override applied"),
        OverrideOutcome::Refused(reason) => {
            tracing::error!("server override refused, the image's server stays: {reason}")
        }
    }
}

/// The image's `[server]` with the override's URL and CA, once every check passed.
fn checked(ctx: &Context, bytes: &[u8]) -> Result<super::ServerConfig, String> {
    let Some(image_server) = &ctx.config.server else {
        return Err("the image has no [server] to override".into());
    };
    let signed = SignedServerOverride::parse(bytes).map_err(|e| e.to_string())?;
    let root = ctx.trust_root().map_err(|e| e.to_string())?;
    let device_id = if signed.signed.devices.is_empty() {
        String::new()
    } else {
        let identity = super::load_identity(
            &super::identity_path(ctx, image_server),
            image_server.device_id.as_deref(),
        )
        .map_err(|e| format!("it names devices, and this device's identity: {e}"))?;
        identity.device_id
    };
    let body = signed
        .verify(&root, &device_id)
        .map_err(|e| e.to_string())?;
    let mut server = image_server.clone();
    server.url = body.url.clone();
    if let Some(pem) = &body.ca_pem {
        server.ca_pem = Some(pem.clone());
    }
    // The same checks system.toml's [server] passes: an https URL (or http where the
    // image allows it), a CA that parses.
    crate::transport::Transport::from_server(&server).map_err(|e| e.to_string())?;
    Ok(server)
}
