//! Reboot leases: a campaign's reboot budget keeps more than N devices of one group (a
//! Kubernetes cluster, a production line) from rebooting into the release at once.
//!
//! A device asks before it reboots into an installed update ([`request`]). A lease is a
//! row holding one numbered slot of its group's budget, and the slot is the row's primary
//! key: the budget holds also when several servers share one database, without locks.
//! A lease ends
//! - when its deployment reaches a verdict (committed, rolled back, failed, cancelled):
//!   [`end`] runs in the same transaction as the report that moves it there;
//! - when it expires: the device died mid-reboot, or its reports were lost.
//!
//! Every grant first sweeps its group of leases that ended either way, so a missed end
//! never blocks a group for longer than one lease.

use cairn_server_api::{DeploymentState, RebootLease};
use serde::Serialize;
use sqlx::{AnyConnection, Row as _};

use crate::db::{now_ms, Db};
use crate::deployments;
use crate::devices::record_in;
use crate::error::{ApiError, ApiResult};
use crate::policy::RebootBudget;

/// A grant that lost its slot to a concurrent grant is retried this often.
const ATTEMPTS: usize = 8;
/// How long a waiting device is told to wait, at most.
const RETRY_AFTER_SECS: u64 = 10;

/// A lease as `campaign status` and the dashboard show it.
#[derive(Debug, Clone, Serialize)]
pub struct HeldLease {
    pub group: String,
    pub device_id: String,
    pub deployment_id: String,
    pub granted_at: i64,
    pub expires_at: i64,
}

/// A device asks leave to reboot into `deployment_id`'s update: granted (a new lease, or
/// its own renewed), or told to wait while its group's budget is spent.
pub async fn request(db: &Db, device_id: &str, deployment_id: &str) -> ApiResult<RebootLease> {
    let target = deployments::for_reboot_lease(db, device_id, deployment_id).await?;
    if !target.state.before_verdict() {
        return Err(ApiError::conflict(
            "deployment-decided",
            format!(
                "deployment {deployment_id} is {}: there is no reboot to lease",
                target.state.as_str()
            ),
        ));
    }
    let Some(budget) = &target.policy.reboot_budget else {
        return Ok(RebootLease::Granted {
            expires_in_secs: None,
        });
    };
    let group = budget.group_of(&target.device_tags);
    let lease = Lease {
        campaign_id: &target.campaign_id,
        group: &group,
        device_id,
        deployment_id,
        budget,
    };
    for _ in 0..ATTEMPTS {
        if let Some(answer) = lease.try_grant(db).await? {
            return Ok(answer);
        }
    }
    Err(ApiError::conflict(
        "busy",
        "the reboot budget kept changing under this request; retry",
    ))
}

/// Ends the lease of `deployment_id`, if it holds one, inside the caller's transaction:
/// its deployment reached a verdict.
pub async fn end(conn: &mut AnyConnection, deployment_id: &str) -> ApiResult<()> {
    sqlx::query("DELETE FROM reboot_leases WHERE deployment_id = $1")
        .bind(deployment_id)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// The campaign's leases that have not ended, oldest first.
pub async fn held(db: &Db, campaign_id: &str) -> ApiResult<Vec<HeldLease>> {
    let rows = sqlx::query(
        "SELECT l.reboot_group, l.device_id, l.deployment_id, l.granted_at, l.expires_at \
         FROM reboot_leases l JOIN deployments d ON d.id = l.deployment_id \
         WHERE l.campaign_id = $1 AND l.expires_at > $2 AND d.live IS NOT NULL \
         ORDER BY l.granted_at",
    )
    .bind(campaign_id)
    .bind(now_ms())
    .fetch_all(&db.pool)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(HeldLease {
                group: r.try_get("reboot_group")?,
                device_id: r.try_get("device_id")?,
                deployment_id: r.try_get("deployment_id")?,
                granted_at: r.try_get("granted_at")?,
                expires_at: r.try_get("expires_at")?,
            })
        })
        .collect()
}

/// One request, with what it is about.
struct Lease<'a> {
    campaign_id: &'a str,
    group: &'a str,
    device_id: &'a str,
    deployment_id: &'a str,
    budget: &'a RebootBudget,
}

impl Lease<'_> {
    /// One attempt in one transaction; `None` when a concurrent grant took the free slot
    /// first (nothing of this attempt was kept).
    async fn try_grant(&self, db: &Db) -> ApiResult<Option<RebootLease>> {
        let now = now_ms();
        let expires_at = now + self.budget.lease_secs as i64 * 1000;
        let mut tx = db.pool.begin().await?;
        // The write comes first: on SQLite it takes the write lock before anything is read.
        self.sweep(&mut tx, now).await?;
        let renewed =
            sqlx::query("UPDATE reboot_leases SET expires_at = $1 WHERE deployment_id = $2")
                .bind(expires_at)
                .bind(self.deployment_id)
                .execute(&mut *tx)
                .await?
                .rows_affected()
                == 1;
        let granted = RebootLease::Granted {
            expires_in_secs: Some(self.budget.lease_secs),
        };
        if renewed {
            tx.commit().await?;
            return Ok(Some(granted));
        }
        let taken: Vec<i64> = sqlx::query_scalar(
            "SELECT slot FROM reboot_leases WHERE campaign_id = $1 AND reboot_group = $2",
        )
        .bind(self.campaign_id)
        .bind(self.group)
        .fetch_all(&mut *tx)
        .await?;
        let max = i64::from(self.budget.max_rebooting);
        let Some(slot) = (0..max).find(|s| !taken.contains(s)) else {
            let next_expiry: Option<i64> = sqlx::query_scalar(
                "SELECT MIN(expires_at) FROM reboot_leases \
                 WHERE campaign_id = $1 AND reboot_group = $2",
            )
            .bind(self.campaign_id)
            .bind(self.group)
            .fetch_one(&mut *tx)
            .await?;
            tx.commit().await?;
            let until_expiry = next_expiry.map_or(0, |t| (t - now).max(0) as u64 / 1000 + 1);
            return Ok(Some(RebootLease::Wait {
                group: self.group.to_string(),
                in_use: taken.len() as u32,
                budget: self.budget.max_rebooting,
                retry_after_secs: until_expiry.clamp(1, RETRY_AFTER_SECS),
            }));
        };
        let inserted = sqlx::query(
            "INSERT INTO reboot_leases (campaign_id, reboot_group, slot, deployment_id, \
             device_id, granted_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7) \
             ON CONFLICT DO NOTHING",
        )
        .bind(self.campaign_id)
        .bind(self.group)
        .bind(slot)
        .bind(self.deployment_id)
        .bind(self.device_id)
        .bind(now)
        .bind(expires_at)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if !inserted {
            tx.rollback().await?;
            return Ok(None);
        }
        let detail = format!(
            "{}: reboot lease {} of {} in group {}, for {} s",
            self.deployment_id,
            slot + 1,
            self.budget.max_rebooting,
            self.group,
            self.budget.lease_secs
        );
        record_in(&mut tx, self.device_id, now, "reboot-lease", &detail).await?;
        tx.commit().await?;
        tracing::info!(
            device = self.device_id,
            group = self.group,
            "reboot lease granted"
        );
        Ok(Some(granted))
    }

    /// Frees the group's leases that ended: expired (saying so in the holder's history),
    /// or whose deployment reached a verdict without its end reaching [`end`].
    async fn sweep(&self, conn: &mut AnyConnection, now: i64) -> ApiResult<()> {
        let decided = decided_states();
        sqlx::query(&format!(
            "DELETE FROM reboot_leases WHERE campaign_id = $1 AND reboot_group = $2 AND \
             deployment_id IN (SELECT id FROM deployments WHERE campaign_id = $1 AND \
             (live IS NULL OR state IN ({decided})))"
        ))
        .bind(self.campaign_id)
        .bind(self.group)
        .execute(&mut *conn)
        .await?;
        let expired = sqlx::query(
            "DELETE FROM reboot_leases WHERE campaign_id = $1 AND reboot_group = $2 \
             AND expires_at <= $3 RETURNING device_id, deployment_id",
        )
        .bind(self.campaign_id)
        .bind(self.group)
        .bind(now)
        .fetch_all(&mut *conn)
        .await?;
        for row in expired {
            let device: String = row.try_get("device_id")?;
            let deployment: String = row.try_get("deployment_id")?;
            let detail = format!(
                "{deployment}: reboot lease expired after {} s without a commit or rollback",
                self.budget.lease_secs
            );
            record_in(conn, &device, now, "reboot-lease-expired", &detail).await?;
            tracing::warn!(device, group = self.group, "reboot lease expired");
        }
        Ok(())
    }
}

/// The stored names of the states after a verdict, quoted for an SQL `IN` list. They are
/// the crate's own constants, never input.
fn decided_states() -> String {
    DeploymentState::all()
        .iter()
        .filter(|s| !s.before_verdict())
        .map(|s| format!("'{}'", s.as_str()))
        .collect::<Vec<_>>()
        .join(", ")
}
