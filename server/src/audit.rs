//! The audit log: operator actions that change whether a device is trusted (TPM reset,
//! reject, revoke, and what an import replaced), and what operators do from the dashboard
//! (campaigns, users). Each entry is written in the same transaction as the change it
//! records; a device's entries are mirrored in its history so the dashboard shows them
//! next to what the device did.

use serde::Serialize;
use sqlx::{AnyConnection, Row as _};

use crate::db::{now_ms, ordered_id, Db};
use crate::devices;
use crate::error::ApiResult;

/// Who acted: the CLI names the local user, the admin API the token's holder, the
/// dashboard the signed-in user (`user:<name>`) or the admin token's session.
pub const ADMIN_API: &str = "admin-api";
pub const ADMIN_TOKEN: &str = "admin-token";

/// The actor of a `cairn-server` subcommand: `cli:<login>`.
pub fn cli_actor() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".into());
    format!("cli:{user}")
}

#[derive(Debug, Clone, Serialize)]
pub struct AuditEntry {
    pub at: i64,
    pub actor: String,
    pub action: String,
    /// The device acted on; empty when the action was on something else.
    pub device_id: String,
    /// What was acted on: `device:<id>`, `campaign:<id>`, `user:<name>`.
    pub subject: String,
    pub detail: String,
}

/// Records `action` on `device_id` in the audit log and the device history, on the
/// caller's transaction (so a change is never kept without its record, nor the reverse).
pub async fn record(
    conn: &mut AnyConnection,
    actor: &str,
    action: &str,
    device_id: &str,
    detail: &str,
) -> ApiResult<()> {
    let at = now_ms();
    sqlx::query(
        "INSERT INTO audit_log (id, at, actor, action, device_id, detail) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(ordered_id("a-", at))
    .bind(at)
    .bind(actor)
    .bind(action)
    .bind(device_id)
    .bind(detail)
    .execute(&mut *conn)
    .await?;
    let detail = format!("{detail} (by {actor})");
    devices::record_in(conn, device_id, at, action, &detail).await?;
    Ok(())
}

/// Records `action` on `subject` (`campaign:<id>`, `user:<name>`: not a device) in the
/// audit log, on the caller's transaction.
pub async fn record_action(
    conn: &mut AnyConnection,
    actor: &str,
    action: &str,
    subject: &str,
    detail: &str,
) -> ApiResult<()> {
    let at = now_ms();
    sqlx::query(
        "INSERT INTO audit_log (id, at, actor, action, device_id, detail, subject) \
         VALUES ($1, $2, $3, $4, '', $5, $6)",
    )
    .bind(ordered_id("a-", at))
    .bind(at)
    .bind(actor)
    .bind(action)
    .bind(detail)
    .bind(subject)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Newest first.
pub async fn list(db: &Db, limit: i64) -> ApiResult<Vec<AuditEntry>> {
    let rows = sqlx::query(
        "SELECT at, actor, action, device_id, subject, detail FROM audit_log \
         ORDER BY at DESC, id DESC LIMIT $1",
    )
    .bind(limit)
    .fetch_all(&db.pool)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(AuditEntry {
                at: r.try_get("at")?,
                actor: r.try_get("actor")?,
                action: r.try_get("action")?,
                device_id: r.try_get("device_id")?,
                subject: match r.try_get::<Option<String>, _>("subject")? {
                    Some(subject) => subject,
                    None => format!("device:{}", r.try_get::<String, _>("device_id")?),
                },
                detail: r.try_get("detail")?,
            })
        })
        .collect()
}
