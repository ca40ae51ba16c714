//! The operator's API under `/admin/v1`, behind the admin bearer token. The CLI calls
//! the same functions directly on the database.

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::Json;
use serde::{Deserialize, Serialize};

use crate::app::Shared;
use crate::attestation;
use crate::audit::{self, AuditEntry};
use crate::auth::Admin;
use crate::campaigns::{self, Campaign, CampaignStatus};
use crate::devices::{self, Device, DeviceFilter, HistoryEntry, ImportSummary};
use crate::dry_run::{self, DryRun};
use crate::error::{ApiError, ApiResult};
use crate::json::parse_body;
use crate::policy::CampaignPolicy;
use crate::releases::{self, Release};

pub async fn list_releases(_: Admin, State(s): State<Shared>) -> ApiResult<Json<Vec<Release>>> {
    Ok(Json(releases::list(&s.db).await?))
}

#[derive(Deserialize)]
pub struct AddRelease {
    /// Serve the bundle from here (a CDN) instead of the blob directory.
    external_url: Option<String>,
}

/// The request body is the bundle file. It is streamed to disk, then verified.
pub async fn add_release(
    _: Admin,
    State(s): State<Shared>,
    Query(q): Query<AddRelease>,
    body: Body,
) -> ApiResult<Json<Release>> {
    let root = s.config.root.as_ref();
    Ok(Json(
        releases::add_upload(&s.db, &s.config.blobs, root, body, q.external_url).await?,
    ))
}

#[derive(Deserialize)]
pub struct Limit {
    limit: Option<i64>,
}

/// `GET /admin/v1/devices?approval=&version=&tag=&q=&unseen_secs=&attested=&limit=`.
pub async fn list_devices(
    _: Admin,
    State(s): State<Shared>,
    Query(filter): Query<DeviceFilter>,
) -> ApiResult<Json<Vec<Device>>> {
    Ok(Json(devices::list_filtered(&s.db, &filter).await?))
}

#[derive(Serialize)]
pub struct DeviceDetail {
    pub device: Device,
    pub history: Vec<HistoryEntry>,
}

pub async fn show_device(
    _: Admin,
    State(s): State<Shared>,
    Path(id): Path<String>,
) -> ApiResult<Json<DeviceDetail>> {
    Ok(Json(DeviceDetail {
        device: devices::get(&s.db, &id).await?,
        history: devices::history(&s.db, &id, 200).await?,
    }))
}

pub async fn approve_device(
    _: Admin,
    State(s): State<Shared>,
    Path(id): Path<String>,
) -> ApiResult<Json<Device>> {
    Ok(Json(devices::approve(&s.db, &id, audit::ADMIN_API).await?))
}

/// `POST /devices/{id}/{action}`: the operator's trust decisions on one device,
/// audit-logged: `reject`, `revoke`, `reset-tpm`.
pub async fn device_action(
    _: Admin,
    State(s): State<Shared>,
    Path((id, action)): Path<(String, String)>,
) -> ApiResult<Json<DeviceDetail>> {
    let actor = audit::ADMIN_API;
    match action.as_str() {
        "reset-tpm" => attestation::reset(&s.db, &id, actor).await?,
        "reject" => drop(devices::reject(&s.db, &id, actor).await?),
        "revoke" => drop(devices::revoke(&s.db, &id, actor).await?),
        other => {
            return Err(ApiError::not_found(
                "unknown-action",
                format!("no device action '{other}' (approve, reject, revoke, reset-tpm)"),
            ))
        }
    }
    show_device(Admin, State(s), Path(id)).await
}

pub async fn audit_log(
    _: Admin,
    State(s): State<Shared>,
    Query(q): Query<Limit>,
) -> ApiResult<Json<Vec<AuditEntry>>> {
    Ok(Json(audit::list(&s.db, q.limit.unwrap_or(1000)).await?))
}

pub async fn set_tags(
    _: Admin,
    State(s): State<Shared>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Device>> {
    let tags: Vec<String> = parse_body(&body)?;
    Ok(Json(devices::set_tags(&s.db, &id, &tags).await?))
}

/// Body: a factory manifest, JSON array or CSV.
pub async fn import_devices(
    _: Admin,
    State(s): State<Shared>,
    body: Bytes,
) -> ApiResult<Json<ImportSummary>> {
    let text = std::str::from_utf8(&body)
        .map_err(|_| ApiError::bad_request("bad-manifest", "factory manifest is not UTF-8"))?;
    let entries = devices::parse_factory_manifest(text)?;
    Ok(Json(
        devices::import(&s.db, &entries, audit::ADMIN_API).await?,
    ))
}

/// Body of `POST /admin/v1/ddi/targets`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewDdiTarget {
    pub id: String,
    pub compatible: String,
    #[serde(default)]
    pub tags: Vec<String>,
    /// What it runs now (semver); unknown when absent.
    #[serde(default)]
    pub version: Option<String>,
}

/// Registers a hawkBit DDI device; the answer holds its target token, shown only here.
pub async fn register_ddi_target(
    _: Admin,
    State(s): State<Shared>,
    body: Bytes,
) -> ApiResult<Json<crate::ddi::targets::Registered>> {
    let new: NewDdiTarget = crate::json::parse_body(&body)?;
    Ok(Json(
        crate::ddi::targets::register(
            &s.db,
            &new.id,
            &new.compatible,
            &new.tags,
            new.version.as_deref(),
            audit::ADMIN_API,
        )
        .await?,
    ))
}

pub async fn list_campaigns(_: Admin, State(s): State<Shared>) -> ApiResult<Json<Vec<Campaign>>> {
    Ok(Json(campaigns::list(&s.db).await?))
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewCampaign {
    pub id: String,
    pub release_id: String,
    pub policy: CampaignPolicy,
}

pub async fn create_campaign(
    _: Admin,
    State(s): State<Shared>,
    body: Bytes,
) -> ApiResult<Json<Campaign>> {
    let new: NewCampaign = parse_body(&body)?;
    Ok(Json(
        campaigns::create(&s.db, &new.id, &new.release_id, new.policy).await?,
    ))
}

pub async fn campaign_status(
    _: Admin,
    State(s): State<Shared>,
    Path(id): Path<String>,
) -> ApiResult<Json<CampaignStatus>> {
    Ok(Json(campaigns::status(&s.db, &id).await?))
}

pub async fn dry_run(
    _: Admin,
    State(s): State<Shared>,
    Path(id): Path<String>,
) -> ApiResult<Json<DryRun>> {
    Ok(Json(dry_run::dry_run(&s.db, &id).await?))
}

/// `start`, `pause`, `resume`, `abort`, or `evaluate` (run the gates now).
pub async fn campaign_action(
    _: Admin,
    State(s): State<Shared>,
    Path((id, action)): Path<(String, String)>,
) -> ApiResult<Json<CampaignStatus>> {
    match action.as_str() {
        "start" => drop(campaigns::start(&s.db, &id).await?),
        "pause" => drop(campaigns::pause(&s.db, &id, "paused by operator").await?),
        "resume" => drop(campaigns::resume(&s.db, &id).await?),
        "abort" => drop(campaigns::abort(&s.db, &id).await?),
        "evaluate" => drop(campaigns::evaluate(&s.db, &id).await?),
        other => {
            return Err(ApiError::not_found(
                "unknown-action",
                format!("no campaign action '{other}' (start, pause, resume, abort, evaluate)"),
            ))
        }
    }
    s.caches.invalidate_campaigns();
    Ok(Json(campaigns::status(&s.db, &id).await?))
}
