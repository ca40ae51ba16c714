//! Progress reports: applied once per `report_id`, only by the device the deployment
//! belongs to, and atomically with the deployment's state change.

use cairn_server_api::{DeploymentState, Report, ReportAck};
use sqlx::{AnyConnection, Row as _};

use crate::db::{now_ms, ordered_id, Db};
use crate::devices::check_name;
use crate::error::{ApiError, ApiResult};
use crate::transitions::{self, reported_name, Keep, MAX_REPORTS};
use crate::{attestation, campaigns, deployments};

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
    let target = deployments::for_report(db, device_id, deployment_id).await?;
    let campaign_id = target.campaign_id;
    for _ in 0..ATTEMPTS {
        if let Some(ack) = try_apply(
            db,
            device_id,
            deployment_id,
            report,
            target.policy.attestation_required,
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
    let current = deployments::state_in(&mut tx, deployment_id).await?;
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
    // This report's row is already in, hence the minus one.
    let stored = stored_reports(&mut tx, deployment_id).await? - 1;
    match transitions::keep(current, report.state, stored) {
        Keep::Store => {}
        Keep::Acknowledge => {
            tx.rollback().await?;
            return Ok(Some(ack(current, true)));
        }
        Keep::Refuse => {
            tx.rollback().await?;
            return Err(ApiError::conflict(
                "too-many-reports",
                format!(
                    "deployment {deployment_id} has {MAX_REPORTS} reports already; no more are recorded"
                ),
            ));
        }
    }
    if transition.next != current {
        let moved = deployments::move_state(
            &mut tx,
            deployment_id,
            current,
            transition.next,
            transition.reason.as_deref(),
            now,
        )
        .await?;
        if !moved {
            tx.rollback().await?;
            return Ok(None);
        }
        if !transition.next.before_verdict() {
            crate::reboot_leases::end(&mut tx, deployment_id).await?;
        }
        if transition.next == DeploymentState::AttestationPending {
            let nonce = attestation::new_nonce();
            deployments::set_attestation_nonce(&mut tx, deployment_id, &nonce).await?;
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

/// How many reports the deployment has, on the report's transaction. Several servers
/// inserting at once may each count before the others commit, so the bound can be passed
/// by as many reports as arrive concurrently, never more.
async fn stored_reports(conn: &mut AnyConnection, deployment_id: &str) -> ApiResult<i64> {
    let row = sqlx::query("SELECT COUNT(*) AS n FROM reports WHERE deployment_id = $1")
        .bind(deployment_id)
        .fetch_one(&mut *conn)
        .await?;
    Ok(row.try_get("n")?)
}
