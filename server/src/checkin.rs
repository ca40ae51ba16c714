//! Check-in: a device says what it runs; the server answers with its assignment (or
//! nothing) and when to ask again. Built to be cheap: two indexed reads, device state
//! written in batches, campaigns and releases served from memory.

use cairn_server_api::{Assignment, CheckIn, CheckInResponse, DeploymentState};

use crate::caches::Caches;
use crate::campaigns::state;
use crate::db::{now_ms, random_id, Db};
use crate::deployments::{self, DeploymentRow, DeviceRow, NewDeployment};
use crate::device_reader::DeviceReader;
use crate::devices::{self, check_name};
use crate::error::{ApiError, ApiResult};
use crate::plan::plan;
use crate::policy::{eligible, position, wave_of, Candidate};
use crate::releases::Release;
use crate::state_writer::StateWriter;
use crate::{attestation, campaigns, transitions};

/// What a check-in needs to know besides the database.
pub struct CheckInContext<'a> {
    pub db: &'a Db,
    pub caches: &'a Caches,
    pub writer: &'a StateWriter,
    pub reader: &'a DeviceReader,
    pub public_url: &'a str,
    pub poll_interval_secs: u64,
}

pub async fn check_in(
    ctx: &CheckInContext<'_>,
    device_id: &str,
    report: &CheckIn,
) -> ApiResult<CheckInResponse> {
    validate(report)?;
    let (device, mut existing) = ctx
        .reader
        .read(device_id)
        .await?
        .ok_or_else(|| devices::unknown(device_id))?;
    devices::require_approved(device_id, &device.approval)?;
    if device.version.as_deref() != Some(report.version.as_str()) {
        record_new_version(
            ctx.db,
            device_id,
            device.version.as_deref(),
            &report.version,
        )
        .await?;
    }
    ctx.writer.queue(device_id, report.clone()).await;
    catch_up(ctx, device_id, &mut existing, report).await?;
    let attestation = existing
        .iter()
        .find(|d| d.live && d.state == DeploymentState::AttestationPending)
        .and_then(|d| attestation::request(&d.id, d.attestation_nonce.as_deref()));
    let assignment = assignment(ctx, device_id, &device, existing, report).await?;
    Ok(CheckInResponse {
        assignment,
        poll_interval_secs: jittered(ctx.poll_interval_secs, device_id),
        attestation,
        trusted_ak: device.trusted_ak,
    })
}

/// A device that runs its live deployment's release in its committed slot, while the
/// deployment is still in progress here, is ahead of the server: the server lost the
/// reports (restored from a backup, rebuilt). The deployment moves on as the `committed`
/// report would have moved it ([`transitions::device_ahead`]), in one transaction with its
/// history entry, and `existing` is updated to match. Losing the compare-and-set to a
/// concurrent report changes nothing; the next check-in sees where that report left it.
async fn catch_up(
    ctx: &CheckInContext<'_>,
    device_id: &str,
    existing: &mut [DeploymentRow],
    report: &CheckIn,
) -> ApiResult<()> {
    if report.booted_slot != report.committed_slot {
        return Ok(()); // on trial: nothing is committed yet
    }
    let Some(live) = existing.iter_mut().find(|d| d.live) else {
        return Ok(());
    };
    let Some(transition) = transitions::device_ahead(live.state, live.attestation_required) else {
        return Ok(());
    };
    let release = ctx.caches.release(ctx.db, &live.release_id).await?;
    if release.0.version != report.version {
        return Ok(());
    }
    let now = now_ms();
    let next = transition.next;
    let mut tx = ctx.db.pool.begin().await?;
    if !deployments::move_state(&mut tx, &live.id, live.state, next, None, now).await? {
        tx.rollback().await?;
        return Ok(());
    }
    let nonce = (next == DeploymentState::AttestationPending).then(attestation::new_nonce);
    if let Some(nonce) = &nonce {
        deployments::set_attestation_nonce(&mut tx, &live.id, nonce).await?;
    }
    let detail = format!(
        "{}: the device runs {} committed while the server had it {}; counted as committed ({})",
        live.id,
        report.version,
        live.state.as_str(),
        next.as_str()
    );
    devices::record_in(&mut tx, device_id, now, "caught-up", &detail).await?;
    tx.commit().await?;
    tracing::info!(device = %device_id, deployment = %live.id, state = next.as_str(), "device ahead of the server: deployment caught up");
    live.state = next;
    live.live = !next.is_terminal();
    live.attestation_nonce = nonce;
    if next.is_terminal() {
        ctx.caches.invalidate_campaigns();
        if let Err(e) = campaigns::evaluate(ctx.db, &live.campaign_id).await {
            tracing::warn!(campaign = %live.campaign_id, "evaluating after a catch-up: {e}");
        }
    }
    Ok(())
}

/// Writes a changed version at once (the rest of the state waits for the batch) and
/// records it in the history. The conditional update makes one entry per change even
/// when retried check-ins race through several servers.
pub(crate) async fn record_new_version(
    db: &Db,
    device_id: &str,
    old: Option<&str>,
    new: &str,
) -> ApiResult<()> {
    let changed = sqlx::query(
        "UPDATE devices SET version = $1 WHERE id = $2 AND (version IS NULL OR version <> $1)",
    )
    .bind(new)
    .bind(device_id)
    .execute(&db.pool)
    .await?;
    if changed.rows_affected() == 1 {
        let detail = format!("runs {new} (was {})", old.unwrap_or("nothing"));
        devices::record(db, device_id, VERSION_EVENT, &detail).await?;
    }
    Ok(())
}

/// The history event of a device's new version; its detail is `runs <new> (was <old>)`
/// (the fleet overview reads the versions back with [`version_in_event`]).
pub const VERSION_EVENT: &str = "version";

/// The new version a [`VERSION_EVENT`]'s detail names.
pub fn version_in_event(detail: &str) -> Option<&str> {
    detail.strip_prefix("runs ")?.split(" (was ").next()
}

fn validate(report: &CheckIn) -> ApiResult<()> {
    let bad = |m: String| Err(ApiError::bad_request("bad-check-in", m));
    if report.version.is_empty() || report.version.len() > 64 {
        return bad("version must be 1 to 64 characters".into());
    }
    if report.images.len() > 32 {
        return bad(format!("{} images, at most 32", report.images.len()));
    }
    if let Some(w) = &report.waiting {
        if w.len() > 512 || w.chars().any(char::is_control) {
            return bad("waiting must be at most 512 bytes without control characters".into());
        }
    }
    for image in &report.images {
        check_name("image name", &image.name)?;
        if image.sha256.len() != 64 || !image.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return bad(format!("image {}: sha256 is not 64 hex digits", image.name));
        }
    }
    Ok(())
}

/// A stable per-device offset of up to ±20 %, so a fleet started at once spreads out and
/// a device's answer stays byte-identical between polls (which keeps ETags useful).
fn jittered(base: u64, device_id: &str) -> u64 {
    let spread = base / 5;
    if spread == 0 {
        return base.max(1);
    }
    let p = position("poll-jitter", device_id);
    (base - spread + (p * (2 * spread) as f64) as u64).max(1)
}

async fn assignment(
    ctx: &CheckInContext<'_>,
    device_id: &str,
    device: &DeviceRow,
    existing: Vec<DeploymentRow>,
    report: &CheckIn,
) -> ApiResult<Option<Assignment>> {
    if let Some(live) = existing.iter().find(|d| d.live) {
        return live_assignment(ctx, live).await;
    }
    for active in ctx.caches.assigning(ctx.db).await?.iter() {
        let c = &active.campaign;
        let (release, manifest) = &*active.release;
        // Judged by what the device reports now, not by the stored (batched) state.
        let candidate = Candidate {
            id: device_id,
            compatible: &device.compatible,
            tags: &device.tags,
            version: Some(&report.version),
            security_floor: report.security_floor,
        };
        let for_device = eligible(
            &c.policy.selector,
            &candidate,
            &release.version,
            release.security_version,
        );
        // A device gets one deployment per campaign, even one that failed.
        let had_one = existing.iter().any(|d| d.campaign_id == c.id);
        if !for_device || had_one {
            continue;
        }
        let wave = wave_of(&active.bounds, &c.salt, device_id);
        if wave >= c.opened_waves {
            continue;
        }
        let plan = plan(manifest, &report.images);
        let id = random_id("dep-");
        let new = NewDeployment {
            id: &id,
            campaign_id: &c.id,
            device_id,
            wave,
            plan: &serde_json::to_string(&plan).map_err(anyhow::Error::from)?,
            now_ms: now_ms(),
        };
        if deployments::insert_assigned(ctx.db, &new).await? {
            let kinds: Vec<String> = plan
                .images
                .iter()
                .map(|i| format!("{} {}", i.image, i.kind))
                .collect();
            let detail = format!(
                "campaign {}: release {} ({}, {} bytes)",
                c.id,
                release.version,
                kinds.join(", "),
                plan.total_bytes
            );
            devices::record(ctx.db, device_id, "assigned", &detail).await?;
            return Ok(Some(to_assignment(
                ctx.public_url,
                &id,
                release,
                DeploymentState::Assigned,
                c.policy.retry_declined,
            )));
        }
        // Another server assigned this device at the same moment: answer with that one.
        let again = deployments::device_view(ctx.db, device_id)
            .await?
            .map(|(_, d)| d)
            .unwrap_or_default();
        if let Some(live) = again.iter().find(|d| d.live) {
            return live_assignment(ctx, live).await;
        }
    }
    Ok(None)
}

/// A device's unfinished deployment. Not yet started ones are held back while the
/// campaign is paused and cancelled once it is aborted; started ones keep going so the
/// device can finish and report.
async fn live_assignment(
    ctx: &CheckInContext<'_>,
    live: &DeploymentRow,
) -> ApiResult<Option<Assignment>> {
    let not_started = live.state == DeploymentState::Assigned;
    if not_started && live.campaign_state == state::ABORTED {
        deployments::cancel_unstarted(ctx.db, &live.id, now_ms()).await?;
        return Ok(None);
    }
    if not_started
        && live.campaign_state != state::RUNNING
        && live.campaign_state != state::COMPLETED
    {
        return Ok(None);
    }
    let release = ctx.caches.release(ctx.db, &live.release_id).await?;
    Ok(Some(to_assignment(
        ctx.public_url,
        &live.id,
        &release.0,
        live.state,
        live.retry_declined,
    )))
}

fn to_assignment(
    public_url: &str,
    id: &str,
    release: &Release,
    state: DeploymentState,
    retry_declined: bool,
) -> Assignment {
    Assignment {
        deployment_id: id.to_string(),
        release_version: release.version.clone(),
        security_version: release.security_version,
        bundle_url: release.bundle_url(public_url),
        bundle_sha256: release.bundle_sha256.clone(),
        bundle_size: release.bundle_size,
        state,
        retry_declined,
    }
}

#[cfg(test)]
mod tests {
    use super::jittered;

    #[test]
    fn poll_jitter_stays_within_a_fifth_and_is_stable_per_device() {
        let polls: Vec<u64> = (0..1000)
            .map(|i| jittered(300, &format!("dev-{i}")))
            .collect();
        assert!(polls.iter().all(|p| (240..=360).contains(p)), "{polls:?}");
        let distinct: std::collections::BTreeSet<_> = polls.iter().collect();
        assert!(distinct.len() > 50, "the fleet spreads out");
        assert_eq!(jittered(300, "dev-7"), jittered(300, "dev-7"));
        assert_eq!(jittered(1, "dev-7"), 1);
    }
}
