//! cairnd and the fleet server: deliver queued reports, check in, and install what a
//! campaign assigns. `decide` is the pure part (what to do with an assignment, given
//! cairnd's state); `cycle` does the I/O around it.
//!
//! Ordering (server/API.md): reports go out oldest first and before the check-in, so the
//! server hears `rebooting` before `committed`, and an assignment is acted on only when
//! nothing older is still undelivered.

pub mod client;
pub mod identity;
pub mod reboot_lease;
pub mod server_override;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cairn_server_api::{
    codes, Assignment, AttestationRequest, CheckIn, InstalledImage, Report, Slot,
};
use serde::Deserialize;
use time::OffsetDateTime;

use crate::attestation::{self, AttestationError, TpmConfig};
use crate::bootstate::SlotId;
use crate::context::Context;
use crate::install::{self, InstallRequest, Progress};
use crate::metrics::Counters;
use crate::state::{DeviceState, Phase, ReportStatus};
use crate::transport::Transport;

pub use client::{FleetError, ServerClient};
pub use identity::{load_or_create as load_identity, DeviceIdentity};

/// `[server]` in system.toml.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Base URL of cairn-server (`https://updates.example.com:8443`).
    pub url: String,
    /// Seconds between check-ins until the server says otherwise.
    #[serde(default = "default_poll_secs")]
    pub poll_secs: u64,
    /// The device's id on the server; default: `dev-` and the first 16 hex digits of its
    /// public key.
    #[serde(default)]
    pub device_id: Option<String>,
    /// The device key (created on first use when missing); default:
    /// `<data_dir>/identity.json`. Factory provisioning writes it before the first boot.
    #[serde(default)]
    pub identity: Option<PathBuf>,
    /// PEM certificate(s) of the CA the server's certificate must chain to; the public
    /// web roots are not trusted when it is set.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// Allow plain `http://` for the server and bundle URLs (development only).
    #[serde(default)]
    pub insecure_http: bool,
    /// Other origins bundles may be downloaded from (`https://cdn.example.com`).
    #[serde(default)]
    pub mirrors: Vec<String>,
    /// The pinned CA as PEM text, in place of `ca`'s file: set only by a signed server
    /// override ([`server_override`]), never from system.toml.
    #[serde(skip)]
    pub ca_pem: Option<String>,
}

fn default_poll_secs() -> u64 {
    300
}

/// What to do with the server's answer.
/// An assignment cairnd will install.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    pub deployment: String,
    pub url: String,
    pub version: String,
    /// The operator re-offered a version whose trial failed here before: install it
    /// anyway (as `cairn install --force`).
    pub force: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Idle,
    /// Install the assigned bundle for `deployment`.
    Install(Offer),
    /// Tell the server this device will not install `version` (its trial failed here).
    Decline {
        deployment: String,
        version: String,
        reason: String,
    },
}

/// Decides what an assignment means for a device in `state`. Never installs a version
/// whose trial failed on this device (a bad release must not make a device loop through
/// install, trial and rollback), never starts while another update waits for its reboot
/// or trial.
pub fn decide(
    assignment: Option<&Assignment>,
    state: &DeviceState,
    booted: SlotId,
    transport: &Transport,
) -> Action {
    let Some(a) = assignment else {
        return Action::Idle;
    };
    if a.state.is_terminal() {
        return Action::Idle;
    }
    if matches!(
        state.phase,
        Phase::Installing { .. } | Phase::InstalledPending { .. } | Phase::TrialBoot { .. }
    ) {
        return Action::Idle;
    }
    if state.slot(booted).version.as_deref() == Some(a.release_version.as_str()) {
        return Action::Idle; // already running it; the outbox says how it went
    }
    if state.failed_versions.contains(&a.release_version) && !a.retry_declined {
        return Action::Decline {
            deployment: a.deployment_id.clone(),
            version: a.release_version.clone(),
            reason: format!(
                "version {} failed its trial on this device before; it is not retried",
                a.release_version
            ),
        };
    }
    if let Err(e) = transport.check_bundle_url(&a.bundle_url) {
        // Never a local path, another host or plain HTTP: a server (or whoever speaks for
        // it) must not point cairnd at anything but a bundle where bundles live.
        return Action::Decline {
            deployment: a.deployment_id.clone(),
            version: a.release_version.clone(),
            reason: e.to_string(),
        };
    }
    Action::Install(Offer {
        deployment: a.deployment_id.clone(),
        url: a.bundle_url.clone(),
        version: a.release_version.clone(),
        force: a.retry_declined && state.failed_versions.contains(&a.release_version),
    })
}

/// Where the device's identity lives: `[server] identity`, else `<data_dir>/identity.json`.
pub fn identity_path(ctx: &Context, server: &ServerConfig) -> PathBuf {
    server
        .identity
        .clone()
        .unwrap_or_else(|| ctx.config.data_dir.join("identity.json"))
}

/// Builds the client from the config: identity file (made on first use) and server URL.
pub fn client(ctx: &Context, server: &ServerConfig) -> Result<ServerClient, FleetError> {
    let path = identity_path(ctx, server);
    let identity = load_identity(&path, server.device_id.as_deref())
        .map_err(|e| FleetError::Identity(e.to_string()))?;
    Ok(ServerClient::new(
        &server.url,
        identity,
        &ctx.config.compatible,
        Transport::from_server(server)?,
    )?
    .with_clock(ctx.clock()))
}

/// One round: enroll if needed, deliver reports, check in, act. Returns how long to wait
/// before the next round.
pub fn cycle(
    config_path: &Path,
    client: &mut ServerClient,
    stop: &Arc<AtomicBool>,
    counters: &Counters,
) -> Result<Duration, FleetError> {
    let mut ctx = Context::open(config_path).map_err(|e| FleetError::Local(e.to_string()))?;
    deliver_reports(&mut ctx, client)?;
    let booted = ctx
        .boot_facts()
        .map_err(|e| FleetError::Local(e.to_string()))?
        .slot;
    let answer = match client.check_in(&check_in_body(&ctx.state, booted, &ctx)) {
        Err(FleetError::Refused { code, .. }) if code == codes::UNKNOWN_DEVICE => {
            enroll(client)?;
            client.check_in(&check_in_body(&ctx.state, booted, &ctx))?
        }
        other => other?,
    };
    counters.checkins.fetch_add(1, Ordering::Relaxed);
    if let Some(tpm) = &ctx.config.tpm {
        // Attestation never blocks updates: a failure here is the server's to judge.
        if let Err(e) = attest(
            &ctx,
            tpm,
            client,
            answer.trusted_ak.as_deref(),
            answer.attestation.as_ref(),
        ) {
            tracing::warn!("TPM attestation: {e}");
        }
    }
    match decide(
        answer.assignment.as_ref(),
        &ctx.state,
        booted,
        client.transport(),
    ) {
        Action::Idle => {}
        Action::Decline {
            deployment,
            version,
            reason,
        } => {
            tracing::warn!(%deployment, %version, "declining the assignment: {reason}");
            ctx.state.install_refused(
                OffsetDateTime::now_utc(),
                Some(deployment),
                Some(&version),
                &reason,
            );
            ctx.save_state()
                .map_err(|e| FleetError::Local(e.to_string()))?;
            deliver_reports(&mut ctx, client)?;
        }
        Action::Install(offer) => install_assignment(&mut ctx, client, stop, counters, offer)?,
    }
    Ok(Duration::from_secs(answer.poll_interval_secs.max(1)))
}

/// Keeps the AK enrolled with this server and answers a pending quote request.
fn attest(
    ctx: &Context,
    config: &TpmConfig,
    client: &mut ServerClient,
    server_trusts: Option<&str>,
    request: Option<&AttestationRequest>,
) -> Result<(), AttestationError> {
    let url = ctx.config.server.as_ref().map(|s| s.url.as_str());
    let answered = attestation::on_check_in(
        &ctx.config,
        config,
        client,
        url.unwrap_or_default(),
        server_trusts,
        request,
    )?;
    match answered.as_ref().map(|r| (r, &r.reason)) {
        None => {}
        Some((r, None)) => {
            tracing::info!(deployment = %r.deployment_id, state = r.deployment_state.as_str(), "attested")
        }
        Some((r, Some(why))) => {
            tracing::error!(deployment = %r.deployment_id, "server rejected the attestation: {why}")
        }
    }
    Ok(())
}

fn enroll(client: &mut ServerClient) -> Result<(), FleetError> {
    match client.enroll()? {
        cairn_server_api::EnrollStatus::Approved => Ok(()),
        cairn_server_api::EnrollStatus::Pending => {
            Err(FleetError::NotApproved(client.device_id().to_string()))
        }
    }
}

fn install_assignment(
    ctx: &mut Context,
    client: &mut ServerClient,
    stop: &Arc<AtomicBool>,
    counters: &Counters,
    offer: Offer,
) -> Result<(), FleetError> {
    let Offer {
        deployment,
        url,
        version,
        force,
    } = offer;
    let version = version.as_str();
    let lock = match ctx.lock_install() {
        Ok(lock) => lock,
        Err(e) => {
            tracing::info!("not installing {version} now: {e}");
            return Ok(());
        }
    };
    tracing::info!(%deployment, %version, %url, "installing the assigned update");
    ctx.state.deployment = Some(deployment.clone());
    ctx.state
        .report(ReportStatus::Downloading, Some(version), None);
    ctx.save_state()
        .map_err(|e| FleetError::Local(e.to_string()))?;
    // Best effort: the install does not wait on the server.
    if let Err(e) = deliver_reports(ctx, client) {
        tracing::warn!("report not delivered yet: {e}");
    }
    let request = InstallRequest {
        location: url,
        // Only the operator's re-offer installs a version whose trial failed here before.
        force,
        deployment: Some(deployment),
    };
    let mut last_logged = 0u64;
    let mut progress = |p: Progress| log_progress(p, counters, &mut last_logged);
    match install::install(ctx, &request, stop.clone(), &mut progress) {
        Ok(done) => {
            tracing::info!(slot = %done.slot, version = %done.version, "installed; waiting for the reboot")
        }
        Err(e) if e.is_interruption() => {
            tracing::warn!("install interrupted, tried again at the next check-in: {e}")
        }
        Err(e) => tracing::error!("install failed: {e}"),
    }
    drop(lock);
    deliver_reports(ctx, client)
}

fn log_progress(p: Progress, counters: &Counters, last_logged: &mut u64) {
    match p {
        Progress::Bytes { name, done, total } => {
            counters
                .install_bytes
                .fetch_add(done.saturating_sub(*last_logged), Ordering::Relaxed);
            let step = (total / 10).max(1);
            if done / step != *last_logged / step || done == total {
                tracing::info!(image = %name, done, total, "writing");
            }
            *last_logged = done;
        }
        Progress::Verified { version, images } => {
            *last_logged = 0;
            tracing::info!(%version, images, "bundle verified")
        }
        Progress::Image { name, method, size } => {
            *last_logged = 0;
            tracing::info!(image = %name, %method, size, "image started")
        }
        Progress::Reused { name, outcome } => tracing::info!(
            image = %name,
            kept = outcome.kept,
            copied = outcome.copied,
            fetched_chunks = outcome.fetched_chunks,
            fetched_bytes = outcome.fetched_bytes,
            "chunked image built from local blocks"
        ),
        Progress::ImageDone { name } => tracing::info!(image = %name, "image written and verified"),
        Progress::Armed { slot } => tracing::info!(%slot, "armed for one trial boot"),
    }
}

/// Sends queued reports oldest first; each is dropped from the outbox once the server
/// acknowledged it, or refused it for good (a retry could never succeed). Stops at the
/// first transport error, so order is kept.
pub fn deliver_reports(ctx: &mut Context, client: &mut ServerClient) -> Result<(), FleetError> {
    for queued in ctx.state.outbox.clone() {
        let (Some(deployment), Some(state)) = (&queued.deployment, queued.status.wire()) else {
            ctx.state.acknowledge(&queued.id);
            continue;
        };
        let report = Report {
            report_id: queued.id.clone(),
            state,
            detail: queued
                .detail
                .clone()
                .map(|d| d.chars().take(4000).collect()),
        };
        match client.report(deployment, &report) {
            Ok(ack) => {
                tracing::info!(%deployment, report = %queued.id, server_state = ack.deployment_state.as_str(), "report delivered")
            }
            Err(e) if e.code() == Some(codes::UNKNOWN_DEPLOYMENT) => {
                // The server forgot the deployment (restored from a backup, rebuilt): no
                // retry can land. The check-in that follows tells it what this device
                // runs, and a live deployment it still has catches up from that.
                tracing::warn!(%deployment, report = %queued.id, "the server does not know this deployment; report dropped: {e}")
            }
            Err(e) if e.is_refusal() => {
                tracing::warn!(%deployment, report = %queued.id, "report dropped: {e}")
            }
            Err(e) => {
                ctx.save_state()
                    .map_err(|e| FleetError::Local(e.to_string()))?;
                return Err(e);
            }
        }
        ctx.state.acknowledge(&queued.id);
    }
    ctx.save_state()
        .map_err(|e| FleetError::Local(e.to_string()))
}

fn check_in_body(state: &DeviceState, booted: SlotId, ctx: &Context) -> CheckIn {
    let committed = ctx.boot_state().map(|b| b.committed).unwrap_or(booted);
    let record = state.slot(booted);
    CheckIn {
        version: record.version.clone().unwrap_or_else(|| "0.0.0".into()),
        booted_slot: wire_slot(booted),
        committed_slot: wire_slot(committed),
        security_floor: state.security_floor,
        images: record
            .images
            .iter()
            .map(|(name, image)| InstalledImage {
                name: name.clone(),
                sha256: image.sha256.clone(),
                size: image.size,
            })
            .collect(),
        waiting: crate::containers::waiting_reason(ctx)
            .or_else(|| reboot_lease::waiting_reason(ctx))
            .or_else(|| crate::reboot_hooks::waiting_reason(ctx))
            .map(|w| wire_waiting(&w)),
    }
}

/// What the device API takes as a waiting reason: at most 512 bytes (cut at a character
/// boundary) without control characters. A hook's output ends up in it.
fn wire_waiting(reason: &str) -> String {
    let mut out = String::new();
    for c in reason.chars().map(|c| if c.is_control() { ' ' } else { c }) {
        if out.len() + c.len_utf8() > 512 {
            break;
        }
        out.push(c);
    }
    out
}

fn wire_slot(slot: SlotId) -> Slot {
    match slot {
        SlotId::A => Slot::A,
        SlotId::B => Slot::B,
    }
}
