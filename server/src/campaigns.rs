//! Campaigns: create, start, pause, resume, abort, status, dry-run, and applying the gate
//! decisions of [`crate::gates`]. Every state change is a compare-and-set on the
//! campaign row, so servers sharing a database never apply one decision twice.

use anyhow::Context;
use serde::Serialize;
use sqlx::Row as _;

use crate::db::{now_ms, random_id, Db, Row};
use crate::deployments;
use crate::devices::{self, check_name, Device};
use crate::error::{ApiError, ApiResult};
use crate::gates::{self, Decision, Progress, WaveStats};
use crate::policy::{eligible, wave_bounds, wave_of, CampaignPolicy, Candidate};
use crate::reboot_leases::{self, HeldLease};
use crate::releases::{self, Release};

/// Lifecycle: `draft` → `running` ⇄ `paused`; `running` → `completed` when the last
/// wave passes its gate; anything but `aborted` → `aborted`.
pub mod state {
    pub const DRAFT: &str = "draft";
    pub const RUNNING: &str = "running";
    pub const PAUSED: &str = "paused";
    pub const COMPLETED: &str = "completed";
    pub const ABORTED: &str = "aborted";
}

#[derive(Debug, Clone, Serialize)]
pub struct Campaign {
    pub id: String,
    pub release_id: String,
    pub policy: CampaignPolicy,
    #[serde(skip)]
    pub salt: String,
    pub state: String,
    pub state_reason: Option<String>,
    /// Cumulative upper bounds of the waves on the unit interval, fixed at start.
    pub wave_bounds: Option<Vec<f64>>,
    /// Devices per wave at start: the denominators of the gates.
    pub wave_sizes: Option<Vec<u64>>,
    pub opened_waves: usize,
    pub gate_met_at: Option<i64>,
    pub failures_acknowledged: u64,
    pub created_at: i64,
    pub started_at: Option<i64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct WaveStatus {
    pub index: usize,
    pub open: bool,
    pub expected: u64,
    pub assigned: u64,
    pub in_progress: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub cancelled: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct CampaignStatus {
    pub campaign: Campaign,
    pub waves: Vec<WaveStatus>,
    /// Devices between their reboot and their verdict under the campaign's reboot budget.
    pub reboot_leases: Vec<HeldLease>,
}

pub async fn create(
    db: &Db,
    id: &str,
    release_id: &str,
    policy: CampaignPolicy,
) -> ApiResult<Campaign> {
    check_name("campaign id", id)?;
    policy
        .validate()
        .map_err(|m| ApiError::bad_request("bad-policy", m))?;
    let release = releases::get(db, release_id).await?;
    if release.compatible != policy.selector.compatible {
        return Err(ApiError::bad_request(
            "incompatible-selector",
            format!(
                "release {} is for {}, the selector targets {}",
                release.id, release.compatible, policy.selector.compatible
            ),
        ));
    }
    let inserted = sqlx::query(
        "INSERT INTO campaigns (id, release_id, policy, salt, state, opened_waves, \
         failures_acknowledged, created_at) VALUES ($1, $2, $3, $4, $5, 0, 0, $6) \
         ON CONFLICT DO NOTHING",
    )
    .bind(id)
    .bind(release_id)
    .bind(serde_json::to_string(&policy).context("encoding policy")?)
    .bind(random_id(""))
    .bind(state::DRAFT)
    .bind(now_ms())
    .execute(&db.pool)
    .await?;
    if inserted.rows_affected() == 0 {
        return Err(ApiError::conflict(
            "campaign-exists",
            format!("campaign {id} already exists"),
        ));
    }
    get(db, id).await
}

const COLUMNS: &str =
    "id, release_id, policy, salt, state, state_reason, wave_bounds, wave_sizes, \
                       opened_waves, gate_met_at, failures_acknowledged, created_at, started_at";

pub async fn get(db: &Db, id: &str) -> ApiResult<Campaign> {
    let row = sqlx::query(&format!("SELECT {COLUMNS} FROM campaigns WHERE id = $1"))
        .bind(id)
        .fetch_optional(&db.pool)
        .await?
        .ok_or_else(|| ApiError::not_found("unknown-campaign", format!("no campaign {id}")))?;
    from_row(&row)
}

pub async fn list(db: &Db) -> ApiResult<Vec<Campaign>> {
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM campaigns ORDER BY created_at DESC"
    ))
    .fetch_all(&db.pool)
    .await?;
    rows.iter().map(from_row).collect()
}

/// Campaigns that hand out assignments.
pub async fn list_assigning(db: &Db) -> ApiResult<Vec<Campaign>> {
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM campaigns WHERE state IN ($1, $2) ORDER BY started_at, id"
    ))
    .bind(state::RUNNING)
    .bind(state::COMPLETED)
    .fetch_all(&db.pool)
    .await?;
    rows.iter().map(from_row).collect()
}

fn from_row(row: &Row) -> ApiResult<Campaign> {
    let json = |col: &str| -> ApiResult<Option<String>> { Ok(row.try_get(col)?) };
    let policy: CampaignPolicy =
        serde_json::from_str(&row.try_get::<String, _>("policy")?).context("stored policy")?;
    Ok(Campaign {
        id: row.try_get("id")?,
        release_id: row.try_get("release_id")?,
        policy,
        salt: row.try_get("salt")?,
        state: row.try_get("state")?,
        state_reason: row.try_get("state_reason")?,
        wave_bounds: json("wave_bounds")?
            .map(|s| serde_json::from_str(&s))
            .transpose()
            .context("stored wave bounds")?,
        wave_sizes: json("wave_sizes")?
            .map(|s| serde_json::from_str(&s))
            .transpose()
            .context("stored wave sizes")?,
        opened_waves: row.try_get::<i64, _>("opened_waves")? as usize,
        gate_met_at: row.try_get("gate_met_at")?,
        failures_acknowledged: row.try_get::<i64, _>("failures_acknowledged")? as u64,
        created_at: row.try_get("created_at")?,
        started_at: row.try_get("started_at")?,
    })
}

/// Approved devices the campaign is for ([`eligible`]).
pub(crate) async fn targets(
    db: &Db,
    policy: &CampaignPolicy,
    release: &Release,
) -> ApiResult<Vec<Device>> {
    let s = &policy.selector;
    Ok(devices::list_compatible(db, &s.compatible)
        .await?
        .into_iter()
        .filter(|d| {
            let device = Candidate {
                id: &d.id,
                compatible: &d.compatible,
                tags: &d.tags,
                version: d.version.as_deref(),
                security_floor: d.security_floor.unwrap_or(0),
            };
            eligible(s, &device, &release.version, release.security_version)
        })
        .collect())
}

/// Fixes the waves (bounds from today's fleet size) and opens the first one.
pub async fn start(db: &Db, id: &str) -> ApiResult<Campaign> {
    let campaign = get(db, id).await?;
    require_state(&campaign, &[state::DRAFT], "start")?;
    let release = releases::get(db, &campaign.release_id).await?;
    let targets = targets(db, &campaign.policy, &release).await?;
    let bounds = wave_bounds(&campaign.policy.waves, targets.len() as u64);
    let mut sizes = vec![0u64; bounds.len()];
    for d in &targets {
        sizes[wave_of(&bounds, &campaign.salt, &d.id)] += 1;
    }
    let done = sqlx::query(
        "UPDATE campaigns SET state = $1, wave_bounds = $2, wave_sizes = $3, opened_waves = 1, \
         started_at = $4, state_reason = NULL WHERE id = $5 AND state = $6",
    )
    .bind(state::RUNNING)
    .bind(serde_json::to_string(&bounds).context("encoding bounds")?)
    .bind(serde_json::to_string(&sizes).context("encoding sizes")?)
    .bind(now_ms())
    .bind(id)
    .bind(state::DRAFT)
    .execute(&db.pool)
    .await?;
    changed(db, id, done.rows_affected(), "start").await
}

pub async fn pause(db: &Db, id: &str, reason: &str) -> ApiResult<Campaign> {
    let campaign = get(db, id).await?;
    require_state(&campaign, &[state::RUNNING], "pause")?;
    let done = set_state(db, id, state::RUNNING, state::PAUSED, reason).await?;
    changed(db, id, done, "pause").await
}

/// Resuming acknowledges the failures so far: only new failures count against the
/// threshold, otherwise the campaign would pause again at once.
pub async fn resume(db: &Db, id: &str) -> ApiResult<Campaign> {
    let campaign = get(db, id).await?;
    require_state(&campaign, &[state::PAUSED], "resume")?;
    let failed = deployments::count_failed(db, id).await?;
    let done = sqlx::query(
        "UPDATE campaigns SET state = $1, failures_acknowledged = $2, state_reason = $3 \
         WHERE id = $4 AND state = $5",
    )
    .bind(state::RUNNING)
    .bind(failed)
    .bind("resumed by operator")
    .bind(id)
    .bind(state::PAUSED)
    .execute(&db.pool)
    .await?;
    changed(db, id, done.rows_affected(), "resume").await
}

/// Stops the campaign for good. Deployments the devices have not started are cancelled;
/// those in progress finish and are still recorded.
pub async fn abort(db: &Db, id: &str) -> ApiResult<Campaign> {
    let campaign = get(db, id).await?;
    require_state(
        &campaign,
        &[
            state::DRAFT,
            state::RUNNING,
            state::PAUSED,
            state::COMPLETED,
        ],
        "abort",
    )?;
    let done = set_state(
        db,
        id,
        &campaign.state,
        state::ABORTED,
        "aborted by operator",
    )
    .await?;
    deployments::cancel_unstarted_of_campaign(db, id, now_ms()).await?;
    changed(db, id, done, "abort").await
}

async fn set_state(db: &Db, id: &str, from: &str, to: &str, reason: &str) -> ApiResult<u64> {
    let done = sqlx::query(
        "UPDATE campaigns SET state = $1, state_reason = $2 WHERE id = $3 AND state = $4",
    )
    .bind(to)
    .bind(reason)
    .bind(id)
    .bind(from)
    .execute(&db.pool)
    .await?;
    Ok(done.rows_affected())
}

fn require_state(c: &Campaign, allowed: &[&str], action: &str) -> ApiResult<()> {
    if allowed.contains(&c.state.as_str()) {
        return Ok(());
    }
    Err(ApiError::conflict(
        "campaign-state",
        format!("cannot {action} campaign {}: it is {}", c.id, c.state),
    ))
}

/// After a compare-and-set: the new campaign, or a conflict when another server changed
/// it first.
async fn changed(db: &Db, id: &str, rows: u64, action: &str) -> ApiResult<Campaign> {
    let campaign = get(db, id).await?;
    if rows == 0 {
        return Err(ApiError::conflict(
            "campaign-state",
            format!(
                "cannot {action} campaign {id}: it changed meanwhile and is now {}",
                campaign.state
            ),
        ));
    }
    tracing::info!(campaign = id, state = %campaign.state, "campaign {action}");
    Ok(campaign)
}

pub async fn status(db: &Db, id: &str) -> ApiResult<CampaignStatus> {
    let campaign = get(db, id).await?;
    let counts = deployments::count_by_wave_and_state(db, id).await?;
    let count = campaign.policy.waves.len();
    let sizes = campaign
        .wave_sizes
        .clone()
        .unwrap_or_else(|| vec![0; count]);
    let mut waves: Vec<WaveStatus> = (0..count)
        .map(|i| WaveStatus {
            index: i,
            open: i < campaign.opened_waves,
            expected: sizes.get(i).copied().unwrap_or(0),
            assigned: 0,
            in_progress: 0,
            succeeded: 0,
            failed: 0,
            cancelled: 0,
        })
        .collect();
    for count in counts {
        let n = count.count;
        let Some(w) = waves.get_mut(count.wave) else {
            continue;
        };
        w.assigned += n;
        match count.state.as_str() {
            "succeeded" => w.succeeded += n,
            "failed" | "attestation-failed" => w.failed += n,
            "cancelled" => w.cancelled += n,
            _ => w.in_progress += n,
        }
    }
    let reboot_leases = reboot_leases::held(db, id).await?;
    Ok(CampaignStatus {
        campaign,
        waves,
        reboot_leases,
    })
}

/// Runs the gates of a running campaign once and applies the decision.
pub async fn evaluate(db: &Db, id: &str) -> ApiResult<Decision> {
    let status = status(db, id).await?;
    let c = &status.campaign;
    if c.state != state::RUNNING {
        return Ok(Decision::Nothing);
    }
    let stats: Vec<WaveStats> = (status.waves.iter())
        .map(|w| WaveStats {
            expected: w.expected,
            assigned: w.assigned - w.cancelled,
            succeeded: w.succeeded,
            failed: w.failed,
        })
        .collect();
    let progress = Progress {
        opened_waves: c.opened_waves,
        gate_met_at_ms: c.gate_met_at,
        failures_acknowledged: c.failures_acknowledged,
    };
    let now = now_ms();
    let decision = gates::evaluate(&c.policy, &progress, &stats, now);
    let guard = "WHERE id = $1 AND state = 'running' AND opened_waves = $2";
    let opened = c.opened_waves as i64;
    let wave = c.opened_waves;
    let (sql, reason) = match &decision {
        Decision::Nothing => return Ok(decision),
        Decision::GateMet => (
            format!("UPDATE campaigns SET gate_met_at = $3, state_reason = $4 {guard} AND gate_met_at IS NULL"),
            format!("wave {wave} met its gate; baking"),
        ),
        Decision::OpenNextWave => (
            format!("UPDATE campaigns SET opened_waves = opened_waves + 1, gate_met_at = NULL, state_reason = $4 {guard} AND gate_met_at <= $3"),
            format!("wave {} opened", wave + 1),
        ),
        Decision::Complete => (
            format!("UPDATE campaigns SET state = 'completed', state_reason = $4 {guard} AND gate_met_at <= $3"),
            "every wave passed its gate".to_string(),
        ),
        Decision::Pause(reason) => (
            format!("UPDATE campaigns SET state = 'paused', state_reason = $4 {guard} AND $3 > 0"),
            reason.clone(),
        ),
    };
    let done = sqlx::query(&sql)
        .bind(id)
        .bind(opened)
        .bind(now)
        .bind(&reason)
        .execute(&db.pool)
        .await?;
    if done.rows_affected() == 1 {
        tracing::info!(campaign = id, %reason, "campaign gate");
    }
    Ok(decision)
}
