//! The DDI routes under `/{tenant}/controller/v1/{controller_id}`.

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use cairn_server_api::{CheckIn, DeploymentState, Report, ReportedState, Slot};
use serde_json::{json, Value};
use sqlx::Row as _;
use tower_http::services::ServeFile;

use super::feedback::{self, Effect};
use super::{action_id, artifacts, sleep, targets};
use crate::app::Shared;
use crate::campaigns::state;
use crate::db::now_ms;
use crate::error::{ApiError, ApiResult};
use crate::{checkin, deployments, devices, releases, reports};

pub fn routes() -> Router<Shared> {
    Router::new()
        .route("/{tenant}/controller/v1/{id}", get(root))
        .route(
            "/{tenant}/controller/v1/{id}/deploymentBase/{action}",
            get(deployment_base),
        )
        .route(
            "/{tenant}/controller/v1/{id}/deploymentBase/{action}/feedback",
            post(deployment_feedback),
        )
        .route(
            "/{tenant}/controller/v1/{id}/cancelAction/{action}",
            get(cancel_action),
        )
        .route(
            "/{tenant}/controller/v1/{id}/cancelAction/{action}/feedback",
            post(cancel_feedback),
        )
        .route("/{tenant}/controller/v1/{id}/configData", put(config_data))
        .route(
            "/{tenant}/controller/v1/{id}/softwaremodules/{module}/artifacts/{file}",
            get(artifact),
        )
        .layer(DefaultBodyLimit::max(64 * 1024))
}

/// Checks the tenant and the target token; returns the controller's base URL and the
/// target.
async fn admit(
    s: &Shared,
    headers: &HeaderMap,
    tenant: &str,
    id: &str,
) -> ApiResult<(String, targets::Target)> {
    if !tenant.eq_ignore_ascii_case(&s.config.ddi_tenant) {
        return Err(ApiError::not_found(
            "unknown-tenant",
            format!("no tenant {tenant}"),
        ));
    }
    let target = targets::authenticate(&s.db, headers, id).await?;
    Ok((
        format!("{}/{tenant}/controller/v1/{id}", s.public_url),
        target,
    ))
}

/// Success for a POST or PUT: SWUpdate counts only 200 as one.
fn ok() -> Response {
    (StatusCode::OK, Json(json!({}))).into_response()
}

/// The device's newest deployment and what the poll must say about it.
struct Newest {
    id: String,
    state: DeploymentState,
    campaign_state: String,
    acknowledged_cancel: bool,
}

async fn newest(s: &Shared, device_id: &str) -> ApiResult<Option<Newest>> {
    let row = sqlx::query(
        "SELECT d.id, d.state, c.state AS campaign_state, \
         (SELECT COUNT(*) FROM ddi_cancel_acks a WHERE a.deployment_id = d.id) AS acks \
         FROM deployments d JOIN campaigns c ON c.id = d.campaign_id \
         WHERE d.device_id = $1 ORDER BY d.created_at DESC, d.id DESC LIMIT 1",
    )
    .bind(device_id)
    .fetch_optional(&s.db.pool)
    .await?;
    let Some(row) = row else { return Ok(None) };
    Ok(Some(Newest {
        id: row.try_get("id")?,
        state: deployments::parse_state(&row.try_get::<String, _>("state")?)?,
        campaign_state: row.try_get("campaign_state")?,
        acknowledged_cancel: row.try_get::<i64, _>("acks")? > 0,
    }))
}

impl Newest {
    /// Cancelled before it ended (an aborted campaign), and not yet acknowledged.
    fn to_cancel(&self) -> bool {
        let aborted_live = !self.state.is_terminal() && self.campaign_state == state::ABORTED;
        (aborted_live || self.state == DeploymentState::Cancelled) && !self.acknowledged_cancel
    }
}

/// The root poll: a check-in, then at most one action link.
async fn root(
    State(s): State<Shared>,
    Path((tenant, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    let (base, target) = admit(&s, &headers, &tenant, &id).await?;
    let device = devices::get(&s.db, &id).await?;
    let report = CheckIn {
        // What it ran at registration, or the last release it confirmed.
        version: device
            .version
            .clone()
            .unwrap_or_else(|| targets::UNKNOWN_VERSION.into()),
        booted_slot: Slot::A,
        committed_slot: Slot::A,
        security_floor: 0,
        images: Vec::new(),
        waiting: None,
    };
    let answer = checkin::check_in(&s.check_in_context(), &id, &report).await?;
    let mut links = serde_json::Map::new();
    match newest(&s, &id).await? {
        Some(n) if n.to_cancel() => {
            let href = format!("{base}/cancelAction/{}", action_id(&n.id));
            links.insert("cancelAction".into(), json!({ "href": href }));
        }
        _ => {
            if let Some(a) = &answer.assignment {
                let href = format!("{base}/deploymentBase/{}", action_id(&a.deployment_id));
                links.insert("deploymentBase".into(), json!({ "href": href }));
            }
        }
    }
    if !target.has_attributes {
        links.insert(
            "configData".into(),
            json!({ "href": format!("{base}/configData") }),
        );
    }
    Ok(Json(json!({
        "config": { "polling": { "sleep": sleep(answer.poll_interval_secs) } },
        "_links": links,
    })))
}

/// The deployment of `device_id` that `action` names.
async fn deployment_of(s: &Shared, device_id: &str, action: &str) -> ApiResult<String> {
    let unknown = || ApiError::not_found("unknown-action", format!("no action {action}"));
    let wanted: u32 = action.parse().map_err(|_| unknown())?;
    let rows = sqlx::query("SELECT id FROM deployments WHERE device_id = $1")
        .bind(device_id)
        .fetch_all(&s.db.pool)
        .await?;
    for row in rows {
        let id: String = row.try_get("id")?;
        if action_id(&id) == wanted {
            return Ok(id);
        }
    }
    Err(unknown())
}

/// What the handlers need of one of the device's deployments.
struct Action {
    state: DeploymentState,
    release_id: String,
}

async fn action_of(s: &Shared, device_id: &str, deployment: &str) -> ApiResult<Action> {
    let row = sqlx::query(
        "SELECT d.state, c.release_id FROM deployments d JOIN campaigns c ON c.id = d.campaign_id \
         WHERE d.id = $1 AND d.device_id = $2",
    )
    .bind(deployment)
    .bind(device_id)
    .fetch_one(&s.db.pool)
    .await?;
    Ok(Action {
        state: deployments::parse_state(&row.try_get::<String, _>("state")?)?,
        release_id: row.try_get("release_id")?,
    })
}

async fn deployment_base(
    State(s): State<Shared>,
    Path((tenant, id, action)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    let (base, _) = admit(&s, &headers, &tenant, &id).await?;
    let deployment = deployment_of(&s, &id, &action).await?;
    let current = action_of(&s, &id, &deployment).await?;
    if current.state.is_terminal() {
        return Err(ApiError::not_found(
            "action-closed",
            format!("action {action} is {}", current.state.as_str()),
        ));
    }
    let (release, manifest) = releases::get_with_manifest(&s.db, &current.release_id).await?;
    let files: Vec<Value> = artifacts::of_release(&s.db, &manifest)
        .await?
        .into_iter()
        .map(|a| {
            let href = format!(
                "{base}/softwaremodules/{}/artifacts/{}",
                a.sha256, a.filename
            );
            json!({
                "filename": a.filename,
                "hashes": { "sha1": a.sha1, "md5": a.md5, "sha256": a.sha256 },
                "size": a.size,
                "_links": { "download": { "href": href }, "download-http": { "href": href } },
            })
        })
        .collect();
    Ok(Json(json!({
        "id": action,
        "deployment": {
            "download": "forced",
            "update": "forced",
            "chunks": [{
                "part": "os",
                "version": release.version,
                "name": release.compatible,
                "artifacts": files,
            }],
        },
        "actionHistory": { "status": current.state.as_str(), "messages": [] },
    })))
}

/// The deployment a feedback is about and what it says, once the client is admitted.
async fn feedback_on(
    s: &Shared,
    headers: &HeaderMap,
    (tenant, id, action): (&str, &str, &str),
    body: &[u8],
) -> ApiResult<(String, feedback::Feedback)> {
    admit(s, headers, tenant, id).await?;
    let deployment = deployment_of(s, id, action).await?;
    let fb =
        feedback::parse(body).map_err(|e| ApiError::bad_request("bad-feedback", e.to_string()))?;
    Ok((deployment, fb))
}

async fn deployment_feedback(
    State(s): State<Shared>,
    Path((tenant, id, action)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let (deployment, fb) = feedback_on(&s, &headers, (&tenant, &id, &action), &body).await?;
    let detail = feedback::detail(&fb);
    let effect = feedback::effect(&fb);
    let states: &[ReportedState] = match effect {
        Effect::Nothing => &[],
        Effect::Progress(ReportedState::Installing) => {
            &[ReportedState::Downloading, ReportedState::Installing]
        }
        Effect::Progress(_) => &[ReportedState::Downloading],
        // The client confirms after the restart into the release: the restart and the
        // commit, in the device API's terms.
        Effect::Succeeded => &[ReportedState::Rebooting, ReportedState::Committed],
        Effect::Failed => &[ReportedState::Failed],
    };
    for &reported in states {
        let report = Report {
            report_id: format!("ddi-{}", crate::transitions::reported_name(reported)),
            state: reported,
            detail: detail.clone(),
        };
        match reports::report(&s.db, &id, &deployment, &report).await {
            Ok(ack) => {
                if ack.deployment_state.is_terminal() && !ack.duplicate {
                    s.caches.invalidate_campaigns();
                }
            }
            // A client that reports on an action the server already ended (cancelled,
            // failed) gets its 200: refusing would only make it retry forever.
            Err(e) if e.status() == StatusCode::CONFLICT => {
                tracing::info!(device = %id, %deployment, "DDI feedback on an ended action ignored: {e}");
                return Ok(ok());
            }
            Err(e) => return Err(e),
        }
    }
    if effect == Effect::Succeeded {
        // The version the next poll checks in with.
        let release =
            releases::get(&s.db, &action_of(&s, &id, &deployment).await?.release_id).await?;
        let old = devices::get(&s.db, &id).await?.version;
        checkin::record_new_version(&s.db, &id, old.as_deref(), &release.version).await?;
    }
    Ok(ok())
}

async fn cancel_action(
    State(s): State<Shared>,
    Path((tenant, id, action)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    admit(&s, &headers, &tenant, &id).await?;
    deployment_of(&s, &id, &action).await?;
    Ok(Json(
        json!({ "id": action, "cancelAction": { "stopId": action } }),
    ))
}

/// The client's answer to a cancelAction: `closed` (cancelled on the device) ends the
/// deployment as cancelled; `rejected` (too late to stop) lets it go on. Either way the
/// cancel is not offered again.
async fn cancel_feedback(
    State(s): State<Shared>,
    Path((tenant, id, action)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let (deployment, fb) = feedback_on(&s, &headers, (&tenant, &id, &action), &body).await?;
    let now = now_ms();
    let mut tx = s.db.pool.begin().await?;
    let current = deployments::state_in(&mut tx, &deployment).await?;
    let detail = match fb.execution.as_str() {
        "closed" | "canceled" if !current.is_terminal() => {
            deployments::move_state(
                &mut tx,
                &deployment,
                current,
                DeploymentState::Cancelled,
                Some("cancelled on the device (hawkBit cancelAction)"),
                now,
            )
            .await?;
            format!("{deployment}: cancelled on the device")
        }
        "closed" | "canceled" => format!("{deployment}: the device acknowledged the cancel"),
        other => format!("{deployment}: the device answered the cancel with '{other}'"),
    };
    sqlx::query(
        "INSERT INTO ddi_cancel_acks (deployment_id, acknowledged_at) VALUES ($1, $2) \
         ON CONFLICT DO NOTHING",
    )
    .bind(&deployment)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    devices::record_in(&mut tx, &id, now, "cancel-acknowledged", &detail).await?;
    tx.commit().await?;
    s.caches.invalidate_campaigns();
    Ok(ok())
}

async fn config_data(
    State(s): State<Shared>,
    Path((tenant, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    admit(&s, &headers, &tenant, &id).await?;
    let value: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request("bad-config-data", format!("not JSON: {e}")))?;
    let data = value["data"]
        .as_object()
        .ok_or_else(|| ApiError::bad_request("bad-config-data", "no \"data\" object"))?;
    targets::set_attributes(&s.db, &id, data).await?;
    Ok(ok())
}

/// An artifact of the device's live deployment, with Range and HEAD support.
async fn artifact(
    State(s): State<Shared>,
    Path((tenant, id, module, file)): Path<(String, String, String, String)>,
    headers: HeaderMap,
    request: Request,
) -> ApiResult<Response> {
    admit(&s, &headers, &tenant, &id).await?;
    let missing =
        || ApiError::not_found("unknown-artifact", format!("no artifact {module}/{file}"));
    let live = sqlx::query(
        "SELECT c.release_id FROM deployments d JOIN campaigns c ON c.id = d.campaign_id \
         WHERE d.device_id = $1 AND d.live = 1",
    )
    .bind(&id)
    .fetch_optional(&s.db.pool)
    .await?
    .ok_or_else(missing)?;
    let (_, manifest) =
        releases::get_with_manifest(&s.db, &live.try_get::<String, _>("release_id")?).await?;
    let entitled = manifest
        .images
        .iter()
        .any(|i| artifacts::is_artifact(i) && i.sha256 == module && i.name == file);
    if !entitled {
        return Err(missing());
    }
    let response = ServeFile::new(artifacts::path(&s.config.blobs, &module))
        .try_call(request)
        .await
        .map_err(|e| anyhow::anyhow!("serving artifact {module}: {e}"))?;
    Ok(response.map(Body::new))
}
