//! The audit log: operator actions that change whether a device is trusted (TPM reset,
//! reject, revoke, and what an import replaced). Each entry is written in the same
//! transaction as the change it records, and mirrored in the device's history so the
//! dashboard shows it next to what the device did.

use serde::Serialize;
use sqlx::{AnyConnection, Row as _};

use crate::db::{now_ms, ordered_id, Db};
use crate::devices;
use crate::error::ApiResult;

/// Who acted: the CLI names the local user, the admin API the token's holder.
pub const ADMIN_API: &str = "admin-api";

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
    pub device_id: String,
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

/// Newest first.
pub async fn list(db: &Db, limit: i64) -> ApiResult<Vec<AuditEntry>> {
    let rows = sqlx::query(
        "SELECT at, actor, action, device_id, detail FROM audit_log ORDER BY at DESC, id DESC LIMIT $1",
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
                detail: r.try_get("detail")?,
            })
        })
        .collect()
}
