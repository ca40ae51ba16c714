//! Devices: enrollment with an ed25519 key (bounded for unknown ids), operator approval,
//! rejection and revocation, the device's own key rotation, factory-manifest import, and
//! what the operator sees of each device.

use axum::http::StatusCode;
use cairn_server_api::{parse_public_key, EnrollRequest, EnrollStatus, InstalledImage};
use serde::{Deserialize, Serialize};
use sqlx::{AnyConnection, Row as _};

use crate::audit;
use crate::db::{now_ms, ordered_id, Db, Row};
use crate::error::{ApiError, ApiResult};

pub(crate) const APPROVED: &str = "approved";
const PENDING: &str = "pending";
/// An operator refused the pending enrollment: the id cannot enroll again (with any
/// key) until an operator approves it.
const REJECTED: &str = "rejected";
/// An operator withdrew the device's trust: refused on every device endpoint for good
/// (approving it again is refused too: its key is presumed compromised).
const REVOKED: &str = "revoked";

/// A device as the operator sees it.
#[derive(Debug, Clone, Serialize)]
pub struct Device {
    pub id: String,
    pub public_key: String,
    /// `approved` (pre-authorized or approved by an operator), `pending`, `rejected` or
    /// `revoked`.
    pub approval: String,
    pub compatible: String,
    pub tags: Vec<String>,
    pub version: Option<String>,
    pub booted_slot: Option<String>,
    pub committed_slot: Option<String>,
    pub security_floor: Option<u64>,
    pub images: Vec<InstalledImage>,
    pub last_checkin: Option<i64>,
    pub enrolled_at: Option<i64>,
    /// When the device's TPM attestation key passed the MakeCredential challenge
    /// (`attestation.rs`); `None`: no trusted key, so it cannot be attested.
    pub ak_trusted_at: Option<i64>,
    /// Why its installed update is not rebooted into yet, as its last check-in said.
    pub waiting: Option<String>,
}

/// One entry of a factory manifest: a device whose key (and TPM, when the record names
/// its EK) is authorized before it ships. The device API crate owns the format.
pub type FactoryEntry = cairn_server_api::ProvisioningRecord;

#[derive(Debug, Clone, Serialize)]
pub struct HistoryEntry {
    pub at: i64,
    pub event: String,
    pub detail: String,
}

pub fn check_name(what: &str, s: &str) -> ApiResult<()> {
    if cairn_server_api::is_valid_name(s) {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "bad-name",
            format!("{what} '{s}' must be {}", cairn_server_api::NAME_RULE),
        ))
    }
}

pub fn check_tag(tag: &str) -> ApiResult<()> {
    if cairn_server_api::is_valid_tag(tag) {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "bad-name",
            format!("tag '{tag}' must be {}", cairn_server_api::TAG_RULE),
        ))
    }
}

pub fn join_tags(tags: &[String]) -> ApiResult<String> {
    let mut tags = tags.to_vec();
    for t in &tags {
        check_tag(t)?;
    }
    tags.sort();
    tags.dedup();
    Ok(tags.join(","))
}

pub fn split_tags(tags: &str) -> Vec<String> {
    tags.split(',')
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .collect()
}

/// Bounds on enrollments of unknown ids, which anyone can send (an enrollment is signed
/// by the key it presents): they stop a flood of made-up ids from filling the devices
/// table and the operator's approval queue. Ids that exist (pre-authorized, or enrolled
/// before) are not limited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnrollLimits {
    /// Pending (unapproved, not rejected) enrollments in all, from everywhere.
    pub max_pending: i64,
    /// Pending enrollments from one source address created within `window`.
    pub per_source: i64,
    pub window: std::time::Duration,
}

impl Default for EnrollLimits {
    fn default() -> EnrollLimits {
        EnrollLimits {
            max_pending: 10_000,
            per_source: 50,
            window: std::time::Duration::from_secs(3600),
        }
    }
}

impl EnrollLimits {
    /// Whether one more unknown id may enroll, given the pending enrollments counted in
    /// all and from its source within the window; the refusal says which bound.
    pub fn admit(&self, pending: i64, from_source: i64) -> ApiResult<()> {
        let limited = |m: String| {
            Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "enrollment-limit",
                m,
            ))
        };
        if pending >= self.max_pending {
            return limited(format!(
                "{pending} enrollments already wait for an operator; no new device ids are accepted until some are approved or rejected"
            ));
        }
        if from_source >= self.per_source {
            return limited(format!(
                "{from_source} new device ids enrolled from this address in the last {} s; try later",
                self.window.as_secs()
            ));
        }
        Ok(())
    }
}

/// First contact of a device. The signature (checked by the caller against the key in the
/// request) proves possession; this decides whether the key is trusted:
/// - a pre-authorized or approved device with the same key: approved;
/// - an unknown id: recorded as pending until an operator approves it;
/// - a known id with another key: refused, and nothing changes.
///
/// `source` is the client's address; with `limits` it bounds how many unknown ids can
/// enroll (several servers counting at once may each admit one more: the bound is passed
/// by at most the number of concurrent enrollments).
pub async fn enroll(
    db: &Db,
    request: &EnrollRequest,
    source: &str,
    limits: &EnrollLimits,
) -> ApiResult<EnrollStatus> {
    check_name("device id", &request.device_id)?;
    check_name("compatible", &request.compatible)?;
    // Keys are stored and compared as lowercase hex, however a device or manifest spells them.
    let presented = request.public_key.to_ascii_lowercase();
    let now = now_ms();
    let select = "SELECT public_key, approval, enrolled_at FROM devices WHERE id = $1";
    let mut row = sqlx::query(select)
        .bind(&request.device_id)
        .fetch_optional(&db.pool)
        .await?;
    if row.is_none() {
        let pending: i64 = sqlx::query("SELECT COUNT(*) AS n FROM devices WHERE approval = $1")
            .bind(PENDING)
            .fetch_one(&db.pool)
            .await?
            .try_get("n")?;
        let from_source: i64 = sqlx::query(
            "SELECT COUNT(*) AS n FROM devices \
             WHERE approval = $1 AND enroll_source = $2 AND created_at > $3",
        )
        .bind(PENDING)
        .bind(source)
        .bind(now - limits.window.as_millis() as i64)
        .fetch_one(&db.pool)
        .await?
        .try_get("n")?;
        limits.admit(pending, from_source)?;
        sqlx::query(
            "INSERT INTO devices (id, public_key, approval, compatible, tags, created_at, enroll_source) \
             VALUES ($1, $2, $3, $4, '', $5, $6) ON CONFLICT DO NOTHING",
        )
        .bind(&request.device_id)
        .bind(&presented)
        .bind(PENDING)
        .bind(&request.compatible)
        .bind(now)
        .bind(source)
        .execute(&db.pool)
        .await?;
        row = sqlx::query(select)
            .bind(&request.device_id)
            .fetch_optional(&db.pool)
            .await?;
    }
    let row = row.ok_or_else(|| unknown(&request.device_id))?;
    let key: String = row.try_get("public_key")?;
    if key != presented {
        return Err(ApiError::forbidden(
            "key-mismatch",
            format!(
                "device {} is registered with another key; this key is not accepted",
                request.device_id
            ),
        ));
    }
    if row.try_get::<Option<i64>, _>("enrolled_at")?.is_none() {
        let claimed = sqlx::query(
            "UPDATE devices SET enrolled_at = $1 WHERE id = $2 AND enrolled_at IS NULL",
        )
        .bind(now)
        .bind(&request.device_id)
        .execute(&db.pool)
        .await?;
        if claimed.rows_affected() == 1 {
            record(
                db,
                &request.device_id,
                "enrolled",
                "device presented its key",
            )
            .await?;
        }
    }
    let approval: String = row.try_get("approval")?;
    if approval == PENDING {
        return Ok(EnrollStatus::Pending);
    }
    require_approved(&request.device_id, &approval)?;
    Ok(EnrollStatus::Approved)
}

/// Whether a device whose approval is `approval` may use the device API (token,
/// check-in, reports, TPM): only an approved one; the refusal says why.
pub fn require_approved(id: &str, approval: &str) -> ApiResult<()> {
    match approval {
        APPROVED => Ok(()),
        REVOKED => Err(ApiError::forbidden(
            "revoked",
            format!("device {id} was revoked by an operator"),
        )),
        REJECTED => Err(ApiError::forbidden(
            "rejected",
            format!("an operator rejected the enrollment of device {id}"),
        )),
        _ => Err(ApiError::forbidden(
            "not-approved",
            format!("device {id} waits for an operator to approve its key"),
        )),
    }
}

/// [`require_approved`] for a bearer-token request: tokens are checked without the
/// database, so a device revoked since its token was issued is caught here.
pub async fn require_active(db: &Db, id: &str) -> ApiResult<()> {
    let row = sqlx::query("SELECT approval FROM devices WHERE id = $1")
        .bind(id)
        .fetch_optional(&db.pool)
        .await?
        .ok_or_else(|| unknown(id))?;
    require_approved(id, &row.try_get::<String, _>("approval")?)
}

/// Approves a pending or rejected device (a no-op for an approved one), audited as
/// `actor`'s. A revoked device stays revoked: `409 revoked`.
pub async fn approve(db: &Db, id: &str, actor: &str) -> ApiResult<Device> {
    let mut tx = db.pool.begin().await?;
    let done = sqlx::query("UPDATE devices SET approval = $1 WHERE id = $2 AND approval <> $3")
        .bind(APPROVED)
        .bind(id)
        .bind(REVOKED)
        .execute(&mut *tx)
        .await?;
    if done.rows_affected() == 0 {
        tx.rollback().await?;
        get(db, id).await?;
        return Err(ApiError::conflict(
            "revoked",
            format!("device {id} was revoked; a revoked device cannot be approved again"),
        ));
    }
    audit::record(
        &mut tx,
        actor,
        "approve",
        id,
        "operator approved the device key",
    )
    .await?;
    tx.commit().await?;
    get(db, id).await
}

/// The operator refuses a pending enrollment. Compare-and-set on `pending`: an approved
/// or revoked device is not "rejected" (`409 not-pending`).
pub async fn reject(db: &Db, id: &str, actor: &str) -> ApiResult<Device> {
    let detail = "operator rejected the enrollment; the id cannot enroll again until approved";
    set_approval(db, id, &[PENDING], REJECTED, actor, detail).await?;
    get(db, id).await
}

/// The operator withdraws a device's trust, whatever its state: every device endpoint
/// refuses it from now on (`403 revoked`), including with tokens issued before.
pub async fn revoke(db: &Db, id: &str, actor: &str) -> ApiResult<Device> {
    let detail = "operator revoked the device; it is refused on every device endpoint";
    set_approval(
        db,
        id,
        &[PENDING, APPROVED, REJECTED],
        REVOKED,
        actor,
        detail,
    )
    .await?;
    get(db, id).await
}

/// Takes the write lock on device `id`'s row before a transaction reads it: a no-op
/// write. On SQLite (WAL) a transaction that reads first and writes later fails at once
/// with "database is locked" when another connection (the check-in state writer, say)
/// committed in between; writing first makes it wait its turn instead. On PostgreSQL it
/// is a row lock that serializes operators acting on the same device.
pub(crate) async fn lock_row(tx: &mut sqlx::Transaction<'_, sqlx::Any>, id: &str) -> ApiResult<()> {
    let locked = sqlx::query("UPDATE devices SET approval = approval WHERE id = $1")
        .bind(id)
        .execute(&mut **tx)
        .await?;
    if locked.rows_affected() == 0 {
        return Err(unknown(id));
    }
    Ok(())
}

/// Moves `id` from one of `from` to `to`, audit-logged in the same transaction.
async fn set_approval(
    db: &Db,
    id: &str,
    from: &[&str],
    to: &'static str,
    actor: &str,
    detail: &str,
) -> ApiResult<()> {
    let mut tx = db.pool.begin().await?;
    lock_row(&mut tx, id).await?;
    let row = sqlx::query("SELECT approval FROM devices WHERE id = $1")
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| unknown(id))?;
    let current: String = row.try_get("approval")?;
    let conflict = || {
        ApiError::conflict(
            if to == REJECTED {
                "not-pending"
            } else {
                "already-revoked"
            },
            format!("device {id} is {current}; it cannot become {to}"),
        )
    };
    if !from.contains(&current.as_str()) {
        return Err(conflict());
    }
    // Compare-and-set on the approval read above: another server may have moved it.
    let done = sqlx::query("UPDATE devices SET approval = $1 WHERE id = $2 AND approval = $3")
        .bind(to)
        .bind(id)
        .bind(&current)
        .execute(&mut *tx)
        .await?;
    if done.rows_affected() == 0 {
        return Err(conflict());
    }
    let action = if to == REJECTED { "reject" } else { "revoke" };
    audit::record(&mut tx, actor, action, id, detail).await?;
    tx.commit().await?;
    Ok(())
}

/// The device's own key rotation (`auth::rotate_key` checked both signatures): from
/// now on only `new` is accepted. Compare-and-set on the key the request was verified
/// against, and only while the device is approved.
pub async fn replace_key(db: &Db, id: &str, old: &str, new: &str) -> ApiResult<()> {
    if old.eq_ignore_ascii_case(new) {
        return Err(ApiError::bad_request(
            "bad-key",
            "the new key is the key the device already has",
        ));
    }
    let done = sqlx::query(
        "UPDATE devices SET public_key = $1 WHERE id = $2 AND public_key = $3 AND approval = $4",
    )
    .bind(new)
    .bind(id)
    .bind(old)
    .bind(APPROVED)
    .execute(&db.pool)
    .await?;
    if done.rows_affected() == 0 {
        return Err(ApiError::conflict(
            "key-changed",
            format!("device {id}'s key or approval changed meanwhile; nothing rotated"),
        ));
    }
    record(
        db,
        id,
        "key-rotated",
        &format!("the device replaced its key {old} with {new}"),
    )
    .await
}

/// Sets the tags campaigns select on.
pub async fn set_tags(db: &Db, id: &str, tags: &[String]) -> ApiResult<Device> {
    let done = sqlx::query("UPDATE devices SET tags = $1 WHERE id = $2")
        .bind(join_tags(tags)?)
        .bind(id)
        .execute(&db.pool)
        .await?;
    if done.rows_affected() == 0 {
        return Err(unknown(id));
    }
    get(db, id).await
}

/// What an import did, entry by entry.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ImportSummary {
    /// Entries now authorized with the manifest's key (new, or already with that key).
    pub imported: usize,
    /// Ids that had a pending or rejected enrollment under another key: the manifest's
    /// key replaced it (that key was never approved, so nothing trusted is lost).
    pub replaced: Vec<String>,
    /// Ids left as they were: they exist, approved or revoked, with another key.
    pub refused: Vec<RefusedEntry>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RefusedEntry {
    pub device_id: String,
    pub reason: String,
}

/// Whether a manifest entry may replace a device of this approval that holds another
/// key: only one no operator ever trusted, so enrolling an id first (squatting it) never
/// keeps the device the factory made for it out; a trusted key is never taken over.
fn import_replaces(approval: &str) -> bool {
    approval == PENDING || approval == REJECTED
}

/// Imports a factory manifest: every key in it is authorized. An id that exists with
/// another key is replaced when its enrollment was never approved, and left alone (and
/// listed as refused) otherwise: the import goes on with the other entries, and a
/// malformed manifest (bad id or key) is refused before anything is written.
pub async fn import(db: &Db, entries: &[FactoryEntry], actor: &str) -> ApiResult<ImportSummary> {
    for e in entries {
        check_name("device id", &e.device_id)?;
        check_name("compatible", &e.compatible)?;
        parse_public_key(&e.public_key).map_err(|err| {
            ApiError::bad_request("bad-key", format!("device {}: {err}", e.device_id))
        })?;
        for (what, value, max_bytes) in [
            ("ek_public", &e.ek_public, 1024),
            ("ek_certificate", &e.ek_certificate, 4096),
        ] {
            if let Some(hex_text) = value {
                let bytes = hex::decode(hex_text).map_err(|err| {
                    ApiError::bad_request(
                        "bad-ek",
                        format!("device {}: {what}: {err}", e.device_id),
                    )
                })?;
                if bytes.is_empty() || bytes.len() > max_bytes {
                    return Err(ApiError::bad_request(
                        "bad-ek",
                        format!("device {}: {what} is {} bytes", e.device_id, bytes.len()),
                    ));
                }
            }
        }
        if e.ek_certificate.is_some() && e.ek_public.is_none() {
            return Err(ApiError::bad_request(
                "bad-ek",
                format!(
                    "device {}: an EK certificate without its ek_public",
                    e.device_id
                ),
            ));
        }
    }
    let mut tx = db.pool.begin().await?;
    let now = now_ms();
    let mut summary = ImportSummary::default();
    for e in entries {
        let key = e.public_key.to_ascii_lowercase();
        let tags = join_tags(&e.tags)?;
        // A device bound to another TPM keeps that binding until an operator resets it.
        let ek = e.ek_public.as_deref().map(str::to_ascii_lowercase);
        if let Some(ek) = &ek {
            let bound: Option<String> = sqlx::query("SELECT ek_public FROM devices WHERE id = $1")
                .bind(&e.device_id)
                .fetch_optional(&mut *tx)
                .await?
                .map(|row| row.try_get::<Option<String>, _>("ek_public"))
                .transpose()?
                .flatten();
            if bound.is_some_and(|b| b.to_ascii_lowercase() != *ek) {
                summary.refused.push(RefusedEntry {
                    device_id: e.device_id.clone(),
                    reason: format!(
                        "device {} is bound to another TPM (EK); `device reset-tpm` it first",
                        e.device_id
                    ),
                });
                continue;
            }
        }
        sqlx::query(
            "INSERT INTO devices (id, public_key, approval, compatible, tags, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (id) DO UPDATE SET approval = $3, compatible = $4, tags = $5 \
             WHERE devices.public_key = $2 AND devices.approval <> $7",
        )
        .bind(&e.device_id)
        .bind(&key)
        .bind(APPROVED)
        .bind(&e.compatible)
        .bind(&tags)
        .bind(now)
        .bind(REVOKED)
        .execute(&mut *tx)
        .await?;
        let row = sqlx::query("SELECT public_key, approval FROM devices WHERE id = $1")
            .bind(&e.device_id)
            .fetch_one(&mut *tx)
            .await?;
        let (held, approval): (String, String) =
            (row.try_get("public_key")?, row.try_get("approval")?);
        if held == key && approval == APPROVED {
            bind_ek(&mut tx, e).await?;
            summary.imported += 1;
            continue;
        }
        let refuse = |reason: String| RefusedEntry {
            device_id: e.device_id.clone(),
            reason,
        };
        if held == key || !import_replaces(&approval) {
            summary.refused.push(refuse(format!(
                "device {} exists ({approval}) with {}; left as it is",
                e.device_id,
                if held == key {
                    "this key"
                } else {
                    "another key"
                }
            )));
            continue;
        }
        // Compare-and-set on what was read: the enrollment being replaced is the one
        // the summary and the audit log name.
        let replaced = sqlx::query(
            "UPDATE devices SET public_key = $1, approval = $2, compatible = $3, tags = $4, \
             enrolled_at = NULL WHERE id = $5 AND public_key = $6 AND approval = $7",
        )
        .bind(&key)
        .bind(APPROVED)
        .bind(&e.compatible)
        .bind(&tags)
        .bind(&e.device_id)
        .bind(&held)
        .bind(&approval)
        .execute(&mut *tx)
        .await?;
        if replaced.rows_affected() == 0 {
            summary.refused.push(refuse(format!(
                "device {} changed during the import; import it again",
                e.device_id
            )));
            continue;
        }
        let detail = format!(
            "factory import replaced a {approval} enrollment under another key ({held}) with the manifest's key"
        );
        audit::record(&mut tx, actor, "import-replaced", &e.device_id, &detail).await?;
        bind_ek(&mut tx, e).await?;
        summary.imported += 1;
        summary.replaced.push(e.device_id.clone());
    }
    tx.commit().await?;
    Ok(summary)
}

/// Binds an imported device to the EK its record names (checked free or equal before).
async fn bind_ek(tx: &mut sqlx::Transaction<'_, sqlx::Any>, e: &FactoryEntry) -> ApiResult<()> {
    let Some(ek) = e.ek_public.as_deref().map(str::to_ascii_lowercase) else {
        return Ok(());
    };
    let bound = sqlx::query(
        "UPDATE devices SET ek_public = $1, ek_certificate = $2 \
         WHERE id = $3 AND (ek_public IS NULL OR LOWER(ek_public) = $1)",
    )
    .bind(&ek)
    .bind(e.ek_certificate.as_deref().map(str::to_ascii_lowercase))
    .bind(&e.device_id)
    .execute(&mut **tx)
    .await?;
    if bound.rows_affected() == 0 {
        return Err(ApiError::conflict(
            "busy",
            format!(
                "device {}'s TPM binding changed during the import; import again",
                e.device_id
            ),
        ));
    }
    Ok(())
}

/// Parses a factory manifest: a JSON array of provisioning records, one record (a file a
/// device wrote), or CSV with the header `device_id,public_key,compatible,tags` (tags
/// separated by `;` or spaces).
pub fn parse_factory_manifest(text: &str) -> ApiResult<Vec<FactoryEntry>> {
    let json_error = |e: serde_json::Error| {
        ApiError::bad_request("bad-manifest", format!("factory manifest JSON: {e}"))
    };
    match text.trim_start().chars().next() {
        Some('[') => return serde_json::from_str(text).map_err(json_error),
        Some('{') => {
            return serde_json::from_str(text)
                .map(|r| vec![r])
                .map_err(json_error)
        }
        _ => {}
    }
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes());
    let bad =
        |e: csv::Error| ApiError::bad_request("bad-manifest", format!("factory manifest CSV: {e}"));
    let mut out = Vec::new();
    for record in reader.deserialize::<CsvEntry>() {
        let r = record.map_err(bad)?;
        out.push(FactoryEntry {
            device_id: r.device_id,
            public_key: r.public_key,
            compatible: r.compatible,
            tags: r
                .tags
                .unwrap_or_default()
                .split([';', ' '])
                .filter(|t| !t.is_empty())
                .map(str::to_string)
                .collect(),
            ..FactoryEntry::default()
        });
    }
    Ok(out)
}

#[derive(Deserialize)]
struct CsvEntry {
    device_id: String,
    public_key: String,
    compatible: String,
    tags: Option<String>,
}

const COLUMNS: &str = "id, public_key, approval, compatible, tags, version, booted_slot, \
                       committed_slot, security_floor, images, last_checkin, enrolled_at, \
                       ak_trusted_at, waiting";

pub async fn get(db: &Db, id: &str) -> ApiResult<Device> {
    let row = sqlx::query(&format!("SELECT {COLUMNS} FROM devices WHERE id = $1"))
        .bind(id)
        .fetch_optional(&db.pool)
        .await?
        .ok_or_else(|| unknown(id))?;
    from_row(&row)
}

pub async fn list(db: &Db, limit: i64) -> ApiResult<Vec<Device>> {
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM devices ORDER BY id LIMIT $1"
    ))
    .bind(limit)
    .fetch_all(&db.pool)
    .await?;
    rows.iter().map(from_row).collect()
}

/// Which devices a listing shows (admin API and dashboard query parameters); every
/// field narrows it, none: all devices.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceFilter {
    /// `approved`, `pending`, `rejected` or `revoked`.
    #[serde(default)]
    pub approval: Option<String>,
    /// The version the device runs.
    #[serde(default)]
    pub version: Option<String>,
    /// A tag the device carries.
    #[serde(default)]
    pub tag: Option<String>,
    /// Part of the device ID.
    #[serde(default)]
    pub q: Option<String>,
    /// Devices not seen (no check-in) for at least this many seconds, or never.
    #[serde(default)]
    pub unseen_secs: Option<String>,
    /// `true`: devices with a trusted attestation key; `false`: without.
    #[serde(default)]
    pub attested: Option<String>,
    /// At most this many devices (default and most 1000).
    #[serde(default)]
    pub limit: Option<i64>,
}

impl DeviceFilter {
    /// Empty strings (a form's blank fields) mean "any".
    fn given(value: &Option<String>) -> Option<&str> {
        value.as_deref().map(str::trim).filter(|v| !v.is_empty())
    }

    pub fn unseen_secs(&self) -> ApiResult<Option<i64>> {
        DeviceFilter::given(&self.unseen_secs)
            .map(|v| {
                v.parse::<i64>().ok().filter(|s| *s >= 0).ok_or_else(|| {
                    ApiError::bad_request("bad-filter", format!("unseen_secs {v:?}: want seconds"))
                })
            })
            .transpose()
    }

    pub fn attested(&self) -> ApiResult<Option<bool>> {
        DeviceFilter::given(&self.attested)
            .map(|v| match v {
                "true" => Ok(true),
                "false" => Ok(false),
                _ => Err(ApiError::bad_request(
                    "bad-filter",
                    format!("attested {v:?}: want true or false"),
                )),
            })
            .transpose()
    }
}

/// A LIKE pattern matching `value` anywhere (`\` escapes LIKE's own wildcards).
fn like_anywhere(value: &str) -> String {
    let escaped = value
        .replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_");
    format!("%{escaped}%")
}

/// The devices `filter` selects, by ID.
pub async fn list_filtered(db: &Db, filter: &DeviceFilter) -> ApiResult<Vec<Device>> {
    let mut clauses: Vec<String> = Vec::new();
    let mut binds: Vec<String> = Vec::new();
    let mut bind = |clause: &str, value: String| {
        binds.push(value);
        clauses.push(clause.replace("$?", &format!("${}", binds.len())));
    };
    if let Some(approval) = DeviceFilter::given(&filter.approval) {
        bind("approval = $?", approval.to_string());
    }
    if let Some(version) = DeviceFilter::given(&filter.version) {
        bind("version = $?", version.to_string());
    }
    if let Some(tag) = DeviceFilter::given(&filter.tag) {
        check_tag(tag)?;
        // Tags are stored joined by commas (join_tags).
        bind(
            "(',' || tags || ',') LIKE $? ESCAPE '\\'",
            like_anywhere(&format!(",{tag},")),
        );
    }
    if let Some(q) = DeviceFilter::given(&filter.q) {
        bind("id LIKE $? ESCAPE '\\'", like_anywhere(q));
    }
    let mut sql = format!("SELECT {COLUMNS} FROM devices");
    let mut conditions = clauses;
    if let Some(secs) = filter.unseen_secs()? {
        let since = now_ms() - secs.saturating_mul(1000);
        conditions.push(format!("(last_checkin IS NULL OR last_checkin <= {since})"));
    }
    match filter.attested()? {
        Some(true) => conditions.push("ak_trusted_at IS NOT NULL".into()),
        Some(false) => conditions.push("ak_trusted_at IS NULL".into()),
        None => {}
    }
    if !conditions.is_empty() {
        sql.push_str(" WHERE ");
        sql.push_str(&conditions.join(" AND "));
    }
    let limit = filter.limit.unwrap_or(1000).clamp(1, 1000);
    sql.push_str(&format!(" ORDER BY id LIMIT {limit}"));
    let mut query = sqlx::query(&sql);
    for value in binds {
        query = query.bind(value);
    }
    let rows = query.fetch_all(&db.pool).await?;
    rows.iter().map(from_row).collect()
}

/// Approved devices of one type (a campaign's candidates).
pub async fn list_compatible(db: &Db, compatible: &str) -> ApiResult<Vec<Device>> {
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM devices WHERE compatible = $1 AND approval = $2 ORDER BY id"
    ))
    .bind(compatible)
    .bind(APPROVED)
    .fetch_all(&db.pool)
    .await?;
    rows.iter().map(from_row).collect()
}

pub fn from_row(row: &Row) -> ApiResult<Device> {
    let images: Option<String> = row.try_get("images")?;
    Ok(Device {
        id: row.try_get("id")?,
        public_key: row.try_get("public_key")?,
        approval: row.try_get("approval")?,
        compatible: row.try_get("compatible")?,
        tags: split_tags(&row.try_get::<String, _>("tags")?),
        version: row.try_get("version")?,
        booted_slot: row.try_get("booted_slot")?,
        committed_slot: row.try_get("committed_slot")?,
        security_floor: row
            .try_get::<Option<i64>, _>("security_floor")?
            .map(|f| f as u64),
        images: images
            .and_then(|i| serde_json::from_str(&i).ok())
            .unwrap_or_default(),
        last_checkin: row.try_get("last_checkin")?,
        enrolled_at: row.try_get("enrolled_at")?,
        ak_trusted_at: row.try_get("ak_trusted_at")?,
        waiting: row.try_get("waiting")?,
    })
}

pub fn unknown(id: &str) -> ApiError {
    ApiError::not_found("unknown-device", format!("no device {id}"))
}

/// Appends to a device's history.
pub async fn record(db: &Db, device_id: &str, event: &str, detail: &str) -> ApiResult<()> {
    let mut conn = db.pool.acquire().await?;
    record_in(&mut conn, device_id, now_ms(), event, detail).await
}

/// Appends to a device's history on `conn` (inside the caller's transaction).
pub async fn record_in(
    conn: &mut AnyConnection,
    device_id: &str,
    at: i64,
    event: &str,
    detail: &str,
) -> ApiResult<()> {
    sqlx::query(
        "INSERT INTO history (id, device_id, at, event, detail) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(ordered_id("h-", at))
    .bind(device_id)
    .bind(at)
    .bind(event)
    .bind(detail)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Newest first.
pub async fn history(db: &Db, device_id: &str, limit: i64) -> ApiResult<Vec<HistoryEntry>> {
    let rows = sqlx::query(
        "SELECT at, event, detail FROM history WHERE device_id = $1 ORDER BY at DESC, id DESC LIMIT $2",
    )
    .bind(device_id)
    .bind(limit)
    .fetch_all(&db.pool)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(HistoryEntry {
                at: r.try_get("at")?,
                event: r.try_get("event")?,
                detail: r.try_get("detail")?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "3b6a27bcceb6a42d62a3a8d02a6f0d73653215771de243a63ac048a18b59da29";

    #[test]
    fn factory_manifests_parse_from_csv_and_json_alike() {
        let csv = format!("device_id,public_key,compatible,tags\ndev-1, {KEY} ,cairn-x,eu;shop\ndev-2,{KEY},cairn-x,\n");
        let json = format!(
            r#"[{{"device_id":"dev-1","public_key":"{KEY}","compatible":"cairn-x","tags":["eu","shop"]}},
                {{"device_id":"dev-2","public_key":"{KEY}","compatible":"cairn-x"}}]"#
        );
        let from_csv = parse_factory_manifest(&csv).unwrap();
        assert_eq!(from_csv, parse_factory_manifest(&json).unwrap());
        assert_eq!(from_csv[0].tags, ["eu", "shop"]);
        assert!(from_csv[1].tags.is_empty());
    }

    #[test]
    fn a_device_written_record_is_a_manifest_of_one() {
        let record = format!(
            r#"{{"device_id":"dev-9","public_key":"{KEY}","compatible":"cairn-x",
                "hardware_id":"QEMU-1","image_version":"0.1.0","ek_public":"0a0b"}}"#
        );
        let entries = parse_factory_manifest(&record).unwrap();
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].ek_public.as_deref(), Some("0a0b"));
        // A field nobody defined is refused, not ignored.
        let typo = record.replace("ek_public", "ek_pubic");
        assert!(parse_factory_manifest(&typo).is_err());
    }

    #[test]
    fn broken_factory_manifests_are_refused_with_the_reason() {
        let missing_column = "device_id,public_key\ndev-1,abc\n";
        let e = parse_factory_manifest(missing_column).unwrap_err();
        assert!(e.to_string().contains("CSV"), "{e}");
        let unknown_field = r#"[{"device_id":"d","public_key":"k","compatible":"c","owner":"x"}]"#;
        let e = parse_factory_manifest(unknown_field).unwrap_err();
        assert!(e.to_string().contains("unknown field"), "{e}");
    }

    #[test]
    fn enrollments_of_unknown_ids_are_bounded_in_all_and_per_source() {
        let limits = EnrollLimits {
            max_pending: 3,
            per_source: 2,
            window: std::time::Duration::from_secs(60),
        };
        assert!(limits.admit(0, 0).is_ok());
        assert!(limits.admit(2, 1).is_ok());
        let e = limits.admit(2, 2).unwrap_err();
        assert_eq!(e.status(), StatusCode::TOO_MANY_REQUESTS);
        assert!(e.to_string().contains("from this address"), "{e}");
        let e = limits.admit(3, 0).unwrap_err();
        assert!(e.to_string().contains("wait for an operator"), "{e}");
    }

    #[test]
    fn an_import_replaces_only_enrollments_no_operator_trusted() {
        assert!(import_replaces(PENDING));
        assert!(import_replaces(REJECTED));
        assert!(!import_replaces(APPROVED));
        assert!(!import_replaces(REVOKED));
    }

    #[test]
    fn tags_are_kept_sorted_without_duplicates_and_checked() {
        let tags = ["shop".to_string(), "eu".to_string(), "shop".to_string()];
        assert_eq!(join_tags(&tags).unwrap(), "eu,shop");
        assert_eq!(split_tags("eu,shop"), ["eu", "shop"]);
        assert!(split_tags("").is_empty());
        assert!(join_tags(&["a,b".to_string()]).is_err());
    }
}
