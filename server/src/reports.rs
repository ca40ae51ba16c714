//! Progress reports: applied once per `report_id`, only by the device the deployment
//! belongs to, and atomically with the deployment's state change.

use cairn_server_api::{DeploymentState, Report, ReportAck};
use sqlx::Row as _;

use crate::db::{now_ms, ordered_id, Db, Row};
use crate::devices::check_name;
use crate::error::{ApiError, ApiResult};
use crate::policy::CampaignPolicy;
use crate::transitions::{self, reported_name};
use crate::{attestation, campaigns};

/// A compare-and-set that lost to a concurrent report is retried this often.
const ATTEMPTS: usize = 8;

pub async fn report(
    db: &Db,
    device_id: &str,
    deployment_id: &str,
    report: &Report,
) -> ApiResult<ReportAck> {
    check_name("report_id", &report.report_id)?;
    if report.detail.as_ref().is_some_and(|d| d.len() > 4096) {
        return Err(ApiError::bad_request(
            "bad-report",
            "detail is longer than 4096 bytes",
        ));
    }
    let row = owned_deployment(
        db,
        device_id,
        deployment_id,
        "SELECT d.device_id, d.campaign_id, c.policy FROM deployments d \
         JOIN campaigns c ON c.id = d.campaign_id WHERE d.id = $1",
    )
    .await?;
    let campaign_id: String = row.try_get("campaign_id")?;
    let policy: CampaignPolicy =
        serde_json::from_str(&row.try_get::<String, _>("policy")?).map_err(anyhow::Error::from)?;
    for _ in 0..ATTEMPTS {
        if let Some(ack) = try_apply(
            db,
            device_id,
            deployment_id,
            report,
            policy.attestation_required,
        )
        .await?
        {
            if ack.deployment_state.is_terminal() && !ack.duplicate {
                // Success and failure move the gates; evaluate now rather than on the
                // next tick so a failure threshold stops the campaign at once.
                if let Err(e) = campaigns::evaluate(db, &campaign_id).await {
                    tracing::warn!(campaign = %campaign_id, "evaluating after a report: {e}");
                }
            }
            return Ok(ack);
        }
    }
    Err(ApiError::conflict(
        "busy",
        "the deployment kept changing under this report; retry",
    ))
}

/// The row `select` reads for `deployment_id` (bound as `$1`; the row must have the
/// deployment's `device_id`), once the deployment exists and belongs to `device_id`.
pub async fn owned_deployment(
    db: &Db,
    device_id: &str,
    deployment_id: &str,
    select: &str,
) -> ApiResult<Row> {
    let row = sqlx::query(select)
        .bind(deployment_id)
        .fetch_optional(&db.pool)
        .await?
        .ok_or_else(|| {
            ApiError::not_found(
                "unknown-deployment",
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

/// One attempt in one transaction; `None` when a concurrent report changed the state
/// first (nothing of this attempt was kept).
async fn try_apply(
    db: &Db,
    device_id: &str,
    deployment_id: &str,
    report: &Report,
    attestation_required: bool,
) -> ApiResult<Option<ReportAck>> {
    let now = now_ms();
    let reported = reported_name(report.state);
    let mut tx = db.pool.begin().await?;
    // The write comes first: on SQLite it takes the write lock before anything is read.
    let fresh = sqlx::query(
        "INSERT INTO reports (deployment_id, report_id, state, detail, received_at) \
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
    )
    .bind(deployment_id)
    .bind(&report.report_id)
    .bind(reported)
    .bind(&report.detail)
    .bind(now)
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    let current: String = sqlx::query("SELECT state FROM deployments WHERE id = $1")
        .bind(deployment_id)
        .fetch_one(&mut *tx)
        .await?
        .try_get("state")?;
    let current = DeploymentState::parse(&current)
        .ok_or_else(|| anyhow::anyhow!("stored deployment state '{current}'"))?;
    let ack = |state, duplicate| ReportAck {
        deployment_id: deployment_id.to_string(),
        report_id: report.report_id.clone(),
        duplicate,
        deployment_state: state,
    };
    if !fresh {
        tx.rollback().await?;
        return Ok(Some(ack(current, true)));
    }
    let transition = transitions::apply(
        current,
        report.state,
        report.detail.as_deref(),
        attestation_required,
    )
    .map_err(|c| ApiError::conflict("report-conflict", c.to_string()))?;
    if transition.next != current {
        let live = if transition.next.is_terminal() {
            None
        } else {
            Some(1i64)
        };
        let moved = sqlx::query(
            "UPDATE deployments SET state = $1, live = $2, reason = COALESCE($3, reason), updated_at = $4 \
             WHERE id = $5 AND state = $6",
        )
        .bind(transition.next.as_str())
        .bind(live)
        .bind(&transition.reason)
        .bind(now)
        .bind(deployment_id)
        .bind(current.as_str())
        .execute(&mut *tx)
        .await?;
        if moved.rows_affected() == 0 {
            tx.rollback().await?;
            return Ok(None);
        }
        if transition.next == DeploymentState::AttestationPending {
            sqlx::query("UPDATE deployments SET attestation_nonce = $1 WHERE id = $2")
                .bind(attestation::new_nonce())
                .bind(deployment_id)
                .execute(&mut *tx)
                .await?;
        }
    }
    let detail = match (&transition.reason, &report.detail) {
        (Some(reason), _) => format!("{deployment_id}: {reason}"),
        (None, Some(d)) => format!("{deployment_id}: {reported}: {d}"),
        (None, None) => format!("{deployment_id}: {reported}"),
    };
    sqlx::query(
        "INSERT INTO history (id, device_id, at, event, detail) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(ordered_id("h-", now))
    .bind(device_id)
    .bind(now)
    .bind(reported)
    .bind(&detail)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Some(ack(transition.next, false)))
}
