//! What the dashboard does besides showing: signing in and out, and the forms that act
//! (approve, reject or revoke a device; create, start, pause, resume or abort a campaign;
//! add users and change their role). Every form is a POST carrying the session's CSRF
//! token; each handler checks the role, then the token, then acts, and the action is
//! audited under the user's name (`user:<name>`).

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::header::{LOCATION, SET_COOKIE};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use axum::Form;
use serde::Deserialize;

use crate::app::Shared;
use crate::auth::admin::SESSION_SECS;
use crate::auth::SESSION_COOKIE;
use crate::dashboard::{escape, form_page, Session, Viewer};
use crate::db::Db;
use crate::error::ApiError;
use crate::policy::{CampaignPolicy, RebootBudget, Selector, WaveSize, DEFAULT_REBOOT_LEASE_SECS};
use crate::users::{self, Role};
use crate::{audit, campaigns, devices, releases};

/// The sign-in page; `error` says why the last attempt failed.
pub fn sign_in_page(error: Option<&str>) -> String {
    let error = error
        .map(|e| format!("<p class=\"error\">{}</p>", escape(e)))
        .unwrap_or_default();
    form_page(
        "Sign in",
        &format!(
            "{error}<form method=\"post\" action=\"/ui/login\" id=\"sign-in\">\
             <label>Name <input name=\"name\" id=\"name\" autocomplete=\"username\"></label> \
             <label>Password <input name=\"password\" id=\"password\" type=\"password\" \
             autocomplete=\"current-password\"></label> \
             <button type=\"submit\" id=\"sign-in-button\">Sign in</button></form>\
             <p>Scripts: open any page once with <code>?token=&lt;admin token&gt;</code> \
             (<code>cairn-server admin-token</code> prints it), or use the admin API.</p>"
        ),
    )
}

pub async fn sign_in_form() -> Html<String> {
    Html(sign_in_page(None))
}

#[derive(Deserialize)]
pub struct SignIn {
    name: String,
    password: String,
}

pub async fn sign_in(State(s): State<Shared>, Form(form): Form<SignIn>) -> Response {
    let user = match users::verify(&s.db, &form.name, &form.password).await {
        Ok(Some(user)) => user,
        Ok(None) => {
            tracing::warn!(user = %form.name, "dashboard sign-in refused");
            let page = sign_in_page(Some("Wrong name or password, or the account is disabled."));
            return (StatusCode::UNAUTHORIZED, Html(page)).into_response();
        }
        Err(e) => return e.into_response(),
    };
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let session = s.session_key.user_session(&user.name, now, SESSION_SECS);
    let secure = if s.config.tls.is_some() {
        "; Secure"
    } else {
        ""
    };
    let cookie = format!(
        "{SESSION_COOKIE}={session}; Path=/; Max-Age={SESSION_SECS}; HttpOnly; SameSite=Strict{secure}"
    );
    tracing::info!(user = %user.name, role = user.role.as_str(), "dashboard sign-in");
    (
        StatusCode::SEE_OTHER,
        [(SET_COOKIE, cookie), (LOCATION, "/".to_string())],
    )
        .into_response()
}

/// The CSRF token of a form.
#[derive(Deserialize)]
pub struct Csrf {
    #[serde(default)]
    csrf: String,
}

pub async fn sign_out(
    Viewer(session): Viewer,
    State(s): State<Shared>,
    Form(form): Form<Csrf>,
) -> Response {
    if let Some(no) = refusal(&session, &s, Role::Viewer, &form.csrf) {
        return no;
    }
    let cookie = format!("{SESSION_COOKIE}=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict");
    (
        StatusCode::SEE_OTHER,
        [(SET_COOKIE, cookie), (LOCATION, "/ui/login".to_string())],
    )
        .into_response()
}

/// `POST /ui/devices/{id}/{approve|reject|revoke}`: operators.
pub async fn device_action(
    Viewer(session): Viewer,
    State(s): State<Shared>,
    Path((id, action)): Path<(String, String)>,
    Form(form): Form<Csrf>,
) -> Response {
    if let Some(no) = refusal(&session, &s, Role::Operator, &form.csrf) {
        return no;
    }
    let actor = &session.principal.actor;
    let done = match action.as_str() {
        "approve" => devices::approve(&s.db, &id, actor).await.map(drop),
        "reject" => devices::reject(&s.db, &id, actor).await.map(drop),
        "revoke" => devices::revoke(&s.db, &id, actor).await.map(drop),
        other => Err(ApiError::not_found(
            "unknown-action",
            format!("no device action '{other}'"),
        )),
    };
    after(done, &format!("/ui/devices/{id}"))
}

#[derive(Deserialize)]
pub struct Tags {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    tags: String,
}

/// `POST /ui/devices/{id}/tags`: operators; comma-separated tags replace the device's.
pub async fn set_tags(
    Viewer(session): Viewer,
    State(s): State<Shared>,
    Path(id): Path<String>,
    Form(form): Form<Tags>,
) -> Response {
    if let Some(no) = refusal(&session, &s, Role::Operator, &form.csrf) {
        return no;
    }
    let tags: Vec<String> = form
        .tags
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .collect();
    let done = match devices::set_tags(&s.db, &id, &tags).await {
        Ok(_) => {
            let detail = format!("tags set to {}", tags.join(", "));
            match s.db.pool.acquire().await {
                Ok(mut conn) => {
                    audit::record(&mut conn, &session.principal.actor, "tags", &id, &detail).await
                }
                Err(e) => Err(e.into()),
            }
        }
        Err(e) => Err(e),
    };
    after(done, &format!("/ui/devices/{id}"))
}

/// `POST /ui/campaigns/{id}/{start|pause|resume|abort}`: operators. Audited right after
/// the campaign's own compare-and-set succeeded.
pub async fn campaign_action(
    Viewer(session): Viewer,
    State(s): State<Shared>,
    Path((id, action)): Path<(String, String)>,
    Form(form): Form<Csrf>,
) -> Response {
    if let Some(no) = refusal(&session, &s, Role::Operator, &form.csrf) {
        return no;
    }
    let done = match action.as_str() {
        "start" => campaigns::start(&s.db, &id).await.map(drop),
        "pause" => campaigns::pause(
            &s.db,
            &id,
            &format!("paused by {}", session.principal.actor),
        )
        .await
        .map(drop),
        "resume" => campaigns::resume(&s.db, &id).await.map(drop),
        "abort" => campaigns::abort(&s.db, &id).await.map(drop),
        other => Err(ApiError::not_found(
            "unknown-action",
            format!("no campaign action '{other}'"),
        )),
    };
    let done = match done {
        Ok(()) => {
            s.caches.invalidate_campaigns();
            record(
                &s.db,
                &session,
                &format!("campaign-{action}"),
                &format!("campaign:{id}"),
                "",
            )
            .await
        }
        Err(e) => Err(e),
    };
    after(done, &format!("/ui/campaigns/{id}"))
}

/// The new-campaign form: operators.
pub async fn new_campaign(Viewer(session): Viewer, State(s): State<Shared>) -> Response {
    if !session.may(Role::Operator) {
        return refused(
            StatusCode::FORBIDDEN,
            &role_needed(&session, Role::Operator),
        );
    }
    let releases = match releases::list(&s.db).await {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let options: String = releases
        .iter()
        .map(|r| format!("<option value=\"{id}\">{id}</option>", id = escape(&r.id)))
        .collect();
    let field = |name: &str, label: &str, value: &str| {
        format!(
            "<p><label>{label} <input name=\"{name}\" id=\"{name}\" value=\"{}\"></label></p>",
            escape(value)
        )
    };
    let body = format!(
        "<form method=\"post\" action=\"/ui/campaigns\" id=\"new-campaign\">{csrf}\
         {id}<p><label>Release <select name=\"release\" id=\"release\">{options}</select></label></p>\
         {tags}{waves}{min_success}{bake}{failures}{budget}{group}\
         <p><button type=\"submit\" id=\"create\">Create (a draft: its dry run shows next)</button></p></form>",
        csrf = session.csrf_field(&s),
        id = field("id", "Campaign id", ""),
        tags = field("tags", "Only devices with all of these tags (comma-separated)", ""),
        waves = field("waves", "Waves (counts or percentages)", "1,100%"),
        min_success = field("min_success", "Success ratio a wave needs", "0.9"),
        bake = field("bake_secs", "Bake time after a wave's gate (s)", "3600"),
        failures = field("failure_threshold", "Pause above this failure ratio", "0.1"),
        budget = field("reboot_budget", "Reboot budget (empty: none)", ""),
        group = field("reboot_group_by", "Reboot group tag key", ""),
    );
    Html(form_page("New campaign", &body)).into_response()
}

#[derive(Deserialize)]
pub struct NewCampaign {
    #[serde(default)]
    csrf: String,
    id: String,
    release: String,
    #[serde(default)]
    tags: String,
    waves: String,
    min_success: String,
    bake_secs: String,
    failure_threshold: String,
    #[serde(default)]
    reboot_budget: String,
    #[serde(default)]
    reboot_group_by: String,
}

impl NewCampaign {
    fn policy(&self, compatible: String) -> Result<CampaignPolicy, ApiError> {
        let bad = |m: String| ApiError::bad_request("bad-form", m);
        let number = |name: &str, v: &str| -> Result<f64, ApiError> {
            v.trim()
                .parse()
                .map_err(|_| bad(format!("{name} '{v}' is not a number")))
        };
        let waves = self
            .waves
            .split(',')
            .map(|w| w.parse::<WaveSize>().map_err(bad))
            .collect::<Result<Vec<_>, _>>()?;
        let reboot_budget = match self.reboot_budget.trim() {
            "" => None,
            n => Some(RebootBudget {
                max_rebooting: n
                    .parse()
                    .map_err(|_| bad(format!("reboot budget '{n}' is not a count")))?,
                group_by: Some(self.reboot_group_by.trim().to_string()).filter(|g| !g.is_empty()),
                lease_secs: DEFAULT_REBOOT_LEASE_SECS,
            }),
        };
        Ok(CampaignPolicy {
            selector: Selector {
                compatible,
                tags: self
                    .tags
                    .split(',')
                    .map(str::trim)
                    .filter(|t| !t.is_empty())
                    .map(str::to_string)
                    .collect(),
                device_ids: Vec::new(),
            },
            waves,
            min_success_ratio: number("success ratio", &self.min_success)?,
            bake_secs: self
                .bake_secs
                .trim()
                .parse()
                .map_err(|_| bad(format!("bake time '{}' is not seconds", self.bake_secs)))?,
            failure_threshold: number("failure ratio", &self.failure_threshold)?,
            attestation_required: false,
            retry_declined: false,
            reboot_budget,
        })
    }
}

/// `POST /ui/campaigns`: a draft campaign; its page shows the dry run and the start button.
pub async fn create_campaign(
    Viewer(session): Viewer,
    State(s): State<Shared>,
    Form(form): Form<NewCampaign>,
) -> Response {
    if let Some(no) = refusal(&session, &s, Role::Operator, &form.csrf) {
        return no;
    }
    let created = async {
        let release = releases::get(&s.db, &form.release).await?;
        let policy = form.policy(release.compatible)?;
        campaigns::create(&s.db, form.id.trim(), &form.release, policy).await?;
        let detail = format!("release {}", form.release);
        record(
            &s.db,
            &session,
            "campaign-create",
            &format!("campaign:{}", form.id.trim()),
            &detail,
        )
        .await
    }
    .await;
    after(created, &format!("/ui/campaigns/{}", form.id.trim()))
}

#[derive(Deserialize)]
pub struct UploadQuery {
    #[serde(default)]
    csrf: String,
}

/// `POST /ui/releases?csrf=...`: operators; the body is the bundle (the releases page's
/// script sends the file and shows the upload's progress). Streamed to disk, verified
/// against the trust root before it is accepted. Answers one line for the page.
pub async fn upload_release(
    Viewer(session): Viewer,
    State(s): State<Shared>,
    Query(q): Query<UploadQuery>,
    body: Body,
) -> Response {
    if let Some(no) = refusal(&session, &s, Role::Operator, &q.csrf) {
        return no;
    }
    let root = s.config.root.as_ref();
    match releases::add_upload(&s.db, &s.config.blobs, root, body, None).await {
        Ok(release) => {
            let subject = format!("release:{}", release.id);
            let detail = format!(
                "{} bytes, sha256 {}",
                release.bundle_size, release.bundle_sha256
            );
            if let Err(e) = record(&s.db, &session, "release-add", &subject, &detail).await {
                return e.into_response();
            }
            (StatusCode::OK, format!("added {}", release.id)).into_response()
        }
        Err(ApiError::Client {
            status, message, ..
        }) => (status, message).into_response(),
        Err(e) => {
            tracing::error!("release upload: {e}");
            let message = "The server failed to store the release (its log says why).";
            (StatusCode::INTERNAL_SERVER_ERROR, message).into_response()
        }
    }
}

/// `GET /ui/users`: admins.
pub async fn users_page(Viewer(session): Viewer, State(s): State<Shared>) -> Response {
    if !session.may(Role::Admin) {
        return refused(StatusCode::FORBIDDEN, &role_needed(&session, Role::Admin));
    }
    let list = match users::list(&s.db).await {
        Ok(l) => l,
        Err(e) => return e.into_response(),
    };
    let csrf = session.csrf_field(&s);
    let roles = |chosen: Role| -> String {
        [Role::Viewer, Role::Operator, Role::Admin]
            .iter()
            .map(|r| {
                let selected = if *r == chosen { " selected" } else { "" };
                format!("<option{selected}>{}</option>", r.as_str())
            })
            .collect()
    };
    let mut body = String::from(
        "<table class=\"users\"><tr><th>name</th><th>role</th><th>state</th><th></th></tr>",
    );
    for u in &list {
        let name = escape(&u.name);
        let toggle = if u.disabled { "enable" } else { "disable" };
        body.push_str(&format!(
            "<tr><td>{name}</td><td><form method=\"post\" action=\"/ui/users/{name}/role\">{csrf}\
             <select name=\"value\">{}</select><button>Set</button></form></td><td>{}</td>\
             <td><form method=\"post\" action=\"/ui/users/{name}/{toggle}\">{csrf}\
             <input type=\"hidden\" name=\"value\" value=\"\"><button>{toggle}</button></form></td></tr>",
            roles(u.role),
            if u.disabled { "disabled" } else { "enabled" },
        ));
    }
    body.push_str(&format!(
        "</table><h2>Add a user</h2><form method=\"post\" action=\"/ui/users\" id=\"add-user\">{csrf}\
         <label>Name <input name=\"name\"></label> <label>Password <input name=\"password\" \
         type=\"password\" autocomplete=\"new-password\"></label> <label>Role <select name=\"role\">{}\
         </select></label> <button>Add</button></form>",
        roles(Role::Viewer)
    ));
    Html(form_page("Users", &body)).into_response()
}

#[derive(Deserialize)]
pub struct NewUser {
    #[serde(default)]
    csrf: String,
    name: String,
    password: String,
    role: String,
}

pub async fn add_user(
    Viewer(session): Viewer,
    State(s): State<Shared>,
    Form(form): Form<NewUser>,
) -> Response {
    if let Some(no) = refusal(&session, &s, Role::Admin, &form.csrf) {
        return no;
    }
    let added = match form.role.parse::<Role>() {
        Ok(role) => users::add(
            &s.db,
            &form.name,
            &form.password,
            role,
            &session.principal.actor,
        )
        .await
        .map(drop),
        Err(e) => Err(ApiError::bad_request("bad-role", e)),
    };
    after(added, "/ui/users")
}

#[derive(Deserialize)]
pub struct UserChange {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    value: String,
}

/// `POST /ui/users/{name}/{role|disable|enable}`: admins.
pub async fn change_user(
    Viewer(session): Viewer,
    State(s): State<Shared>,
    Path((name, what)): Path<(String, String)>,
    Form(form): Form<UserChange>,
) -> Response {
    if let Some(no) = refusal(&session, &s, Role::Admin, &form.csrf) {
        return no;
    }
    let actor = &session.principal.actor;
    let changed = match what.as_str() {
        "role" => match form.value.parse::<Role>() {
            Ok(role) => users::update(&s.db, &name, Some(role), None, actor).await,
            Err(e) => Err(ApiError::bad_request("bad-role", e)),
        },
        "disable" => users::update(&s.db, &name, None, Some(true), actor).await,
        "enable" => users::update(&s.db, &name, None, Some(false), actor).await,
        other => Err(ApiError::not_found(
            "unknown-action",
            format!("no user change '{other}'"),
        )),
    };
    after(changed.map(drop), "/ui/users")
}

/// Why the form is refused, if it is: the role, then the CSRF token must hold before
/// anything is done.
fn refusal(session: &Session, s: &Shared, role: Role, csrf: &str) -> Option<Response> {
    if !session.may(role) {
        return Some(refused(StatusCode::FORBIDDEN, &role_needed(session, role)));
    }
    let valid = session
        .cookie
        .as_deref()
        .is_some_and(|cookie| s.session_key.csrf_valid(cookie, csrf));
    if !valid {
        tracing::warn!(actor = %session.principal.actor, "dashboard form without a valid CSRF token refused");
        return Some(refused(
            StatusCode::FORBIDDEN,
            "This form's CSRF token is missing or belongs to another session; nothing was \
             done. Open the page again and resubmit.",
        ));
    }
    None
}

fn role_needed(session: &Session, role: Role) -> String {
    format!(
        "This needs the role {} or above; {} has the role {}. Nothing was done.",
        role.as_str(),
        session.principal.actor,
        session.principal.role.as_str()
    )
}

/// Back to `to` when it worked; the refusal, as a page, when not.
fn after(done: Result<(), ApiError>, to: &str) -> Response {
    match done {
        Ok(()) => (StatusCode::SEE_OTHER, [(LOCATION, to.to_string())]).into_response(),
        Err(ApiError::Client {
            status, message, ..
        }) => refused(status, &message),
        Err(e) => {
            tracing::error!("dashboard action: {e}");
            refused(
                StatusCode::INTERNAL_SERVER_ERROR,
                "The server failed to do this (its log says why).",
            )
        }
    }
}

fn refused(status: StatusCode, message: &str) -> Response {
    let body = format!("<p class=\"error\">{}</p>", escape(message));
    (status, Html(form_page("Not done", &body))).into_response()
}

async fn record(
    db: &Db,
    session: &Session,
    action: &str,
    subject: &str,
    detail: &str,
) -> Result<(), ApiError> {
    let mut conn = db.pool.acquire().await?;
    audit::record_action(&mut conn, &session.principal.actor, action, subject, detail).await
}
