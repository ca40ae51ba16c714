//! The `deployments` table: every statement that reads or writes it. A deployment is one
//! device installing one campaign's release, at most one per device and campaign. `live`
//! is 1 while it is unfinished and NULL once it ended; the unique `(device_id, live)`
//! keeps one unfinished deployment per device.
//!
//! Several servers share one database, so every state change here is a compare-and-set:
//! the `WHERE` names the state the caller saw, and the caller learns from the affected
//! row count whether it won. The callers decide ([`crate::transitions`],
//! [`crate::policy`]); this module only persists.

use std::collections::HashMap;

use cairn_server_api::DeploymentState;
use sqlx::{AnyConnection, Row as _};

use crate::db::{Db, Row};
use crate::devices::split_tags;
use crate::error::{ApiError, ApiResult};
use crate::policy::CampaignPolicy;

/// A device's deployment as check-in sees it.
#[derive(Clone)]
pub struct DeploymentRow {
    pub id: String,
    pub campaign_id: String,
    pub state: DeploymentState,
    pub live: bool,
    pub campaign_state: String,
    pub release_id: String,
    /// Set while the deployment waits for the device's TPM quote.
    pub attestation_nonce: Option<String>,
    /// The campaign's `retry_declined`.
    pub retry_declined: bool,
    /// The campaign's `attestation_required` (read for the live deployment only).
    pub attestation_required: bool,
}

/// What a check-in needs of the device row (read in the same query as its deployments).
#[derive(Clone)]
pub struct DeviceRow {
    pub approval: String,
    pub compatible: String,
    pub tags: Vec<String>,
    pub version: Option<String>,
    /// [`cairn_server_api::ak_digest`] of the attestation key the server trusts, if any.
    pub trusted_ak: Option<String>,
}

pub type DeviceView = (DeviceRow, Vec<DeploymentRow>);

const DEVICE_VIEWS: &str = "SELECT v.id AS device_id, v.approval, v.compatible, v.tags, v.version, \
     v.ak_public, v.ak_trusted_at, \
     d.id, d.campaign_id, d.state, d.live, d.attestation_nonce, c.state AS campaign_state, c.release_id, c.policy FROM devices v \
     LEFT JOIN deployments d ON d.device_id = v.id \
     LEFT JOIN campaigns c ON c.id = d.campaign_id WHERE v.id IN ";

/// One device with all its deployments, read now.
pub async fn device_view(db: &Db, device_id: &str) -> ApiResult<Option<DeviceView>> {
    Ok(device_views(db, &[device_id.to_string()])
        .await?
        .remove(device_id))
}

/// Several devices with their deployments in one query, by device id; unknown ids are
/// missing from the answer.
pub async fn device_views(
    db: &Db,
    device_ids: &[String],
) -> ApiResult<HashMap<String, DeviceView>> {
    let placeholders: Vec<String> = (1..=device_ids.len()).map(|i| format!("${i}")).collect();
    let sql = format!("{DEVICE_VIEWS}({})", placeholders.join(", "));
    let mut query = sqlx::query(&sql);
    for id in device_ids {
        query = query.bind(id);
    }
    group(&query.fetch_all(&db.pool).await?)
}

/// Rows of the join, grouped per device.
fn group(rows: &[Row]) -> ApiResult<HashMap<String, DeviceView>> {
    let mut out: HashMap<String, DeviceView> = HashMap::new();
    for r in rows {
        let device_id: String = r.try_get("device_id")?;
        let view = match out.entry(device_id) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                let device = DeviceRow {
                    approval: r.try_get("approval")?,
                    compatible: r.try_get("compatible")?,
                    tags: split_tags(&r.try_get::<String, _>("tags")?),
                    version: r.try_get("version")?,
                    trusted_ak: trusted_ak(r.try_get("ak_public")?, r.try_get("ak_trusted_at")?),
                };
                e.insert((device, Vec::new()))
            }
        };
        let Some(id) = r.try_get::<Option<String>, _>("id")? else {
            continue;
        };
        let live = r.try_get::<Option<i64>, _>("live")?.is_some();
        // Only a live deployment is handed out again; a check-in reads every row, so the
        // policy is parsed for that one alone.
        let policy = if live {
            r.try_get::<Option<String>, _>("policy")?
                .and_then(|p| serde_json::from_str::<CampaignPolicy>(&p).ok())
        } else {
            None
        };
        view.1.push(DeploymentRow {
            id,
            campaign_id: r.try_get("campaign_id")?,
            state: parse_state(&r.try_get::<String, _>("state")?)?,
            live,
            campaign_state: r.try_get("campaign_state")?,
            release_id: r.try_get("release_id")?,
            attestation_nonce: r.try_get("attestation_nonce")?,
            retry_declined: policy.as_ref().is_some_and(|p| p.retry_declined),
            attestation_required: policy.as_ref().is_some_and(|p| p.attestation_required),
        });
    }
    Ok(out)
}

/// The digest a check-in answer names the device's trusted AK by; `None` unless an AK is
/// stored and its challenge was solved.
fn trusted_ak(ak_public: Option<String>, trusted_at: Option<i64>) -> Option<String> {
    trusted_at?;
    hex::decode(ak_public?)
        .ok()
        .map(|ak| cairn_server_api::ak_digest(&ak))
}

pub(crate) fn parse_state(stored: &str) -> ApiResult<DeploymentState> {
    Ok(DeploymentState::parse(stored)
        .ok_or_else(|| anyhow::anyhow!("stored deployment state '{stored}'"))?)
}

/// A deployment check-in is about to hand out.
pub struct NewDeployment<'a> {
    pub id: &'a str,
    pub campaign_id: &'a str,
    pub device_id: &'a str,
    pub wave: usize,
    /// The payload plan, JSON.
    pub plan: &'a str,
    pub now_ms: i64,
}

/// Inserts an `assigned` deployment, only while the campaign still assigns and has the
/// wave open (re-checked here, so a stale campaign cache cannot assign wrongly), the
/// device has no unfinished deployment and none of this campaign. `false`: nothing was
/// inserted (another server assigned the device first, or the campaign moved on).
pub async fn insert_assigned(db: &Db, new: &NewDeployment<'_>) -> ApiResult<bool> {
    let inserted = sqlx::query(
        "INSERT INTO deployments (id, campaign_id, device_id, wave, state, live, plan, created_at, updated_at) \
         SELECT $1, $2, $3, $4, 'assigned', 1, $5, $6, $6 WHERE EXISTS \
         (SELECT 1 FROM campaigns WHERE id = $2 AND state IN ('running', 'completed') AND opened_waves > $4) \
         ON CONFLICT DO NOTHING",
    )
    .bind(new.id)
    .bind(new.campaign_id)
    .bind(new.device_id)
    .bind(new.wave as i64)
    .bind(new.plan)
    .bind(new.now_ms)
    .execute(&db.pool)
    .await?;
    Ok(inserted.rows_affected() == 1)
}

/// Cancels a deployment the device has not started (still `assigned`).
pub async fn cancel_unstarted(db: &Db, deployment_id: &str, now_ms: i64) -> ApiResult<()> {
    cancel_assigned(db, "id", deployment_id, now_ms).await
}

/// Cancels every deployment of a campaign that its device has not started.
pub async fn cancel_unstarted_of_campaign(
    db: &Db,
    campaign_id: &str,
    now_ms: i64,
) -> ApiResult<()> {
    cancel_assigned(db, "campaign_id", campaign_id, now_ms).await
}

/// Compare-and-set on the state: only `assigned` deployments where `column` is `value`.
async fn cancel_assigned(db: &Db, column: &str, value: &str, now_ms: i64) -> ApiResult<()> {
    sqlx::query(&format!(
        "UPDATE deployments SET state = 'cancelled', live = NULL, reason = 'campaign aborted', \
         updated_at = $1 WHERE {column} = $2 AND state = 'assigned'"
    ))
    .bind(now_ms)
    .bind(value)
    .execute(&db.pool)
    .await?;
    Ok(())
}

/// A campaign's failed deployments (`failed` or `attestation-failed`).
pub async fn count_failed(db: &Db, campaign_id: &str) -> ApiResult<i64> {
    Ok(sqlx::query(
        "SELECT COUNT(*) AS n FROM deployments WHERE campaign_id = $1 \
         AND state IN ('failed', 'attestation-failed')",
    )
    .bind(campaign_id)
    .fetch_one(&db.pool)
    .await?
    .try_get("n")?)
}

/// How many of a campaign's deployments are in each (wave, stored state).
pub struct WaveStateCount {
    pub wave: usize,
    pub state: String,
    pub count: u64,
}

pub async fn count_by_wave_and_state(db: &Db, campaign_id: &str) -> ApiResult<Vec<WaveStateCount>> {
    let rows = sqlx::query(
        "SELECT wave, state, COUNT(*) AS n FROM deployments WHERE campaign_id = $1 GROUP BY wave, state",
    )
    .bind(campaign_id)
    .fetch_all(&db.pool)
    .await?;
    rows.iter()
        .map(|row| {
            Ok(WaveStateCount {
                wave: row.try_get::<i64, _>("wave")? as usize,
                state: row.try_get("state")?,
                count: row.try_get::<i64, _>("n")? as u64,
            })
        })
        .collect()
}

/// One line of a campaign's deployment list.
pub struct Listed {
    pub device_id: String,
    pub wave: usize,
    pub state: String,
    pub reason: Option<String>,
    pub updated_at: i64,
}

/// A campaign's deployments, most recently changed first.
pub async fn list_of_campaign(db: &Db, campaign_id: &str, limit: i64) -> ApiResult<Vec<Listed>> {
    let rows = sqlx::query(
        "SELECT device_id, wave, state, reason, updated_at FROM deployments \
         WHERE campaign_id = $1 ORDER BY updated_at DESC, device_id LIMIT $2",
    )
    .bind(campaign_id)
    .bind(limit)
    .fetch_all(&db.pool)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(Listed {
                device_id: r.try_get("device_id")?,
                wave: r.try_get::<i64, _>("wave")? as usize,
                state: r.try_get("state")?,
                reason: r.try_get("reason")?,
                updated_at: r.try_get("updated_at")?,
            })
        })
        .collect()
}

/// The stored state of the newest deployment of each device with an id in
/// `first..=last` that had one.
pub async fn newest_states(db: &Db, first: &str, last: &str) -> ApiResult<HashMap<String, String>> {
    let rows = sqlx::query(
        "SELECT device_id, state FROM deployments WHERE device_id >= $1 AND device_id <= $2 \
         ORDER BY updated_at",
    )
    .bind(first)
    .bind(last)
    .fetch_all(&db.pool)
    .await?;
    // Later rows overwrite earlier ones: the newest deployment wins.
    rows.iter()
        .map(|r| Ok((r.try_get("device_id")?, r.try_get("state")?)))
        .collect()
}

/// The row `select` reads for `deployment_id` (bound as `$1`; the row must have the
/// deployment's `device_id`), once the deployment exists and belongs to `device_id`.
async fn owned(db: &Db, device_id: &str, deployment_id: &str, select: &str) -> ApiResult<Row> {
    let row = sqlx::query(select)
        .bind(deployment_id)
        .fetch_optional(&db.pool)
        .await?
        .ok_or_else(|| {
            ApiError::not_found(
                cairn_server_api::codes::UNKNOWN_DEPLOYMENT,
                format!("no deployment {deployment_id}"),
            )
        })?;
    if row.try_get::<String, _>("device_id")? != device_id {
        return Err(ApiError::forbidden(
            "not-your-deployment",
            format!("deployment {deployment_id} does not belong to device {device_id}"),
        ));
    }
    Ok(row)
}

/// What a report needs of the deployment it is about.
pub struct ReportTarget {
    pub campaign_id: String,
    pub policy: CampaignPolicy,
}

/// The deployment a device reports on, refused unless it is the device's own.
pub async fn for_report(db: &Db, device_id: &str, deployment_id: &str) -> ApiResult<ReportTarget> {
    let row = owned(
        db,
        device_id,
        deployment_id,
        "SELECT d.device_id, d.campaign_id, c.policy FROM deployments d \
         JOIN campaigns c ON c.id = d.campaign_id WHERE d.id = $1",
    )
    .await?;
    Ok(ReportTarget {
        campaign_id: row.try_get("campaign_id")?,
        policy: serde_json::from_str(&row.try_get::<String, _>("policy")?)
            .map_err(anyhow::Error::from)?,
    })
}

/// What granting a reboot lease needs of the deployment and its device.
pub struct LeaseTarget {
    pub campaign_id: String,
    pub policy: CampaignPolicy,
    pub state: DeploymentState,
    pub device_tags: Vec<String>,
}

/// The deployment a device asks to reboot into, refused unless it is the device's own.
pub async fn for_reboot_lease(
    db: &Db,
    device_id: &str,
    deployment_id: &str,
) -> ApiResult<LeaseTarget> {
    let row = owned(
        db,
        device_id,
        deployment_id,
        "SELECT d.device_id, d.campaign_id, d.state, c.policy, v.tags FROM deployments d \
         JOIN campaigns c ON c.id = d.campaign_id JOIN devices v ON v.id = d.device_id \
         WHERE d.id = $1",
    )
    .await?;
    Ok(LeaseTarget {
        campaign_id: row.try_get("campaign_id")?,
        policy: serde_json::from_str(&row.try_get::<String, _>("policy")?)
            .map_err(anyhow::Error::from)?,
        state: parse_state(&row.try_get::<String, _>("state")?)?,
        device_tags: crate::devices::split_tags(&row.try_get::<String, _>("tags")?),
    })
}

/// What checking a quote needs of the deployment and its device.
pub struct AttestationTarget {
    /// The stored state, as stored.
    pub state: String,
    pub attestation_nonce: Option<String>,
    pub campaign_id: String,
    pub release_id: String,
    pub ak_public: Option<String>,
    pub ak_trusted_at: Option<i64>,
}

/// The deployment a device sends a quote for, refused unless it is the device's own.
pub async fn for_attestation(
    db: &Db,
    device_id: &str,
    deployment_id: &str,
) -> ApiResult<AttestationTarget> {
    let row = owned(
        db,
        device_id,
        deployment_id,
        "SELECT d.device_id, d.state, d.attestation_nonce, d.campaign_id, c.release_id, \
         v.ak_public, v.ak_trusted_at FROM deployments d JOIN campaigns c ON c.id = d.campaign_id \
         JOIN devices v ON v.id = d.device_id WHERE d.id = $1",
    )
    .await?;
    Ok(AttestationTarget {
        state: row.try_get("state")?,
        attestation_nonce: row.try_get("attestation_nonce")?,
        campaign_id: row.try_get("campaign_id")?,
        release_id: row.try_get("release_id")?,
        ak_public: row.try_get("ak_public")?,
        ak_trusted_at: row.try_get("ak_trusted_at")?,
    })
}

/// The deployment's state inside the caller's transaction.
pub async fn state_in(conn: &mut AnyConnection, deployment_id: &str) -> ApiResult<DeploymentState> {
    let stored: String = sqlx::query("SELECT state FROM deployments WHERE id = $1")
        .bind(deployment_id)
        .fetch_one(&mut *conn)
        .await?
        .try_get("state")?;
    parse_state(&stored)
}

/// Compare-and-set of the state inside the caller's transaction: moves the deployment
/// from `current` to `next` (ending it when `next` is terminal; `reason`, when set,
/// replaces the stored one). `false`: the state was no longer `current`.
pub async fn move_state(
    conn: &mut AnyConnection,
    deployment_id: &str,
    current: DeploymentState,
    next: DeploymentState,
    reason: Option<&str>,
    now_ms: i64,
) -> ApiResult<bool> {
    let live = if next.is_terminal() { None } else { Some(1i64) };
    let moved = sqlx::query(
        "UPDATE deployments SET state = $1, live = $2, reason = COALESCE($3, reason), updated_at = $4 \
         WHERE id = $5 AND state = $6",
    )
    .bind(next.as_str())
    .bind(live)
    .bind(reason)
    .bind(now_ms)
    .bind(deployment_id)
    .bind(current.as_str())
    .execute(&mut *conn)
    .await?;
    Ok(moved.rows_affected() == 1)
}

/// Sets the nonce the device's quote must answer, inside the caller's transaction.
pub async fn set_attestation_nonce(
    conn: &mut AnyConnection,
    deployment_id: &str,
    nonce: &str,
) -> ApiResult<()> {
    sqlx::query("UPDATE deployments SET attestation_nonce = $1 WHERE id = $2")
        .bind(nonce)
        .bind(deployment_id)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Compare-and-set that ends an `attestation-pending` deployment whose nonce is still
/// `nonce` as `next` (`succeeded` or `attestation-failed`). `false`: it changed
/// meanwhile (another quote for it was checked first).
pub async fn end_attestation(
    db: &Db,
    deployment_id: &str,
    nonce: &str,
    next: DeploymentState,
    reason: Option<&str>,
    now_ms: i64,
) -> ApiResult<bool> {
    let moved = sqlx::query(
        "UPDATE deployments SET state = $1, live = NULL, reason = $2, attestation_nonce = NULL, \
         updated_at = $3 WHERE id = $4 AND state = 'attestation-pending' AND attestation_nonce = $5",
    )
    .bind(next.as_str())
    .bind(reason)
    .bind(now_ms)
    .bind(deployment_id)
    .bind(nonce)
    .execute(&db.pool)
    .await?;
    Ok(moved.rows_affected() == 1)
}
