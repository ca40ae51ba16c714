//! The web dashboard: server-rendered HTML pages: campaigns, devices, releases, the
//! audit log. Who may see it: a signed-in user (`auth::session`, any role), or the admin
//! token (a bearer header, or `?token=...` once, traded for a session cookie). Pages show
//! the forms that act (`dashboard_actions`) only to roles that may use them.

use std::collections::HashMap;
use std::fmt::Write;

use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::header::{LOCATION, SET_COOKIE};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};

use crate::app::Shared;
use crate::auth::{dashboard_access, session_cookie, DashboardAccess, Principal};
use crate::campaigns::{self, CampaignStatus};
use crate::devices::DeviceFilter;
use crate::error::ApiResult;
use crate::users::{self, Role};
use crate::{deployments, devices};

/// Someone allowed to see the dashboard. As an extractor it answers for the handler
/// otherwise: the cookie redirect when the page was opened with `?token=`, or the
/// sign-in page.
pub struct Viewer(pub Session);

/// Who a dashboard request acts as, and the session its forms belong to.
pub struct Session {
    pub principal: Principal,
    /// The session cookie's value; `None` when the admin token came as a header.
    pub cookie: Option<String>,
}

impl Session {
    pub fn may(&self, role: Role) -> bool {
        self.principal.role >= role
    }

    /// The hidden field forms under this session carry (empty without a cookie: a
    /// header-authenticated script has no use for forms).
    pub fn csrf_field(&self, state: &Shared) -> String {
        let token = self
            .cookie
            .as_deref()
            .map(|c| state.session_key.csrf(c))
            .unwrap_or_default();
        format!("<input type=\"hidden\" name=\"csrf\" value=\"{token}\">")
    }
}

impl FromRequestParts<Shared> for Viewer {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &Shared) -> Result<Viewer, Response> {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let cookie = session_cookie(&parts.headers).map(str::to_string);
        if let Some(name) = cookie
            .as_deref()
            .and_then(|c| state.session_key.session_user(c, now))
        {
            match users::active(&state.db, name).await {
                Ok(Some(user)) => {
                    return Ok(Viewer(Session {
                        principal: Principal {
                            actor: format!("user:{}", user.name),
                            role: user.role,
                        },
                        cookie,
                    }))
                }
                Ok(None) => {}
                Err(e) => return Err(e.into_response()),
            }
        }
        let https = state.config.tls.is_some();
        match dashboard_access(&state.admin_token, &parts.headers, &parts.uri, now, https) {
            DashboardAccess::Allowed => Ok(Viewer(Session {
                principal: Principal {
                    actor: crate::audit::ADMIN_TOKEN.into(),
                    role: Role::Admin,
                },
                cookie,
            })),
            DashboardAccess::SetCookie(cookie) => Err((
                StatusCode::SEE_OTHER,
                [
                    (SET_COOKIE, cookie),
                    (LOCATION, parts.uri.path().to_string()),
                ],
            )
                .into_response()),
            DashboardAccess::Denied => Err((
                StatusCode::UNAUTHORIZED,
                Html(crate::dashboard_actions::sign_in_page(None)),
            )
                .into_response()),
        }
    }
}

pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// [`page`] with who is signed in on top: their sign-out form and the links their role
/// opens.
fn page_for(session: &Session, s: &Shared, title: &str, body: &str) -> String {
    page(title, &(session_bar(session, s) + body))
}

/// [`page_for`] without the reload: the page holds a form that may be in use.
fn form_page_for(session: &Session, s: &Shared, title: &str, body: &str) -> String {
    form_page(title, &(session_bar(session, s) + body))
}

fn session_bar(session: &Session, s: &Shared) -> String {
    let mut bar = format!(
        "<p class=\"session\">Signed in as <b id=\"who\">{}</b> ({})",
        escape(&session.principal.actor),
        session.principal.role.as_str()
    );
    if session.may(Role::Operator) {
        bar.push_str(" · <a href=\"/ui/campaigns/new\">New campaign</a>");
    }
    if session.may(Role::Admin) {
        bar.push_str(" · <a href=\"/ui/users\">Users</a>");
    }
    if session.cookie.is_some() {
        let _ = write!(
            bar,
            " <form method=\"post\" action=\"/ui/logout\" style=\"display:inline\">{}\
             <button>Sign out</button></form>",
            session.csrf_field(s)
        );
    }
    bar.push_str("</p>");
    bar
}

/// A page that reloads itself every 15 s (campaigns move while the operator watches).
fn page(title: &str, body: &str) -> String {
    template(title, body, "<meta http-equiv=\"refresh\" content=\"15\">")
}

/// A page with a form being filled in: it must not reload under the operator's hands.
pub fn form_page(title: &str, body: &str) -> String {
    template(title, body, "")
}

fn template(title: &str, body: &str, head: &str) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">{head}<title>{} · Cairn</title>\
         <style>body{{font-family:sans-serif;margin:2em;color:#222}}table{{border-collapse:collapse;margin:1em 0}}\
         td,th{{border:1px solid #ccc;padding:.3em .6em;text-align:left}}th{{background:#f3f3f3}}\
         .bar{{display:flex;width:20em;height:1em;background:#eee}}.ok{{background:#3a3}}.bad{{background:#c33}}.run{{background:#fb3}}\
         nav a{{margin-right:1em}}</style></head><body><nav><a href=\"/\">Campaigns</a><a href=\"/ui/fleet\">Fleet</a><a href=\"/ui/devices\">Devices</a><a href=\"/ui/releases\">Releases</a><a href=\"/ui/audit\">Audit log</a></nav>\
         <h1>{}</h1>{body}</body></html>",
        escape(title),
        escape(title)
    )
}

fn when(ms: Option<i64>) -> String {
    let Some(ms) = ms else { return "never".into() };
    time::OffsetDateTime::from_unix_timestamp(ms / 1000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| ms.to_string())
}

fn share(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        (part as f64 * 100.0 / whole as f64).min(100.0)
    }
}

fn waves_table(status: &CampaignStatus) -> String {
    let mut out = String::from(
        "<table class=\"waves\"><tr><th>wave</th><th>open</th><th>devices</th><th>succeeded</th>\
         <th>failed</th><th>in progress</th><th>progress</th></tr>",
    );
    for w in &status.waves {
        let whole = w.expected.max(w.assigned);
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td><div class=\"bar\">\
             <div class=\"ok\" style=\"width:{:.1}%\"></div><div class=\"bad\" style=\"width:{:.1}%\"></div>\
             <div class=\"run\" style=\"width:{:.1}%\"></div></div></td></tr>",
            w.index + 1,
            if w.open { "open" } else { "closed" },
            whole,
            w.succeeded,
            w.failed,
            w.in_progress,
            share(w.succeeded, whole),
            share(w.failed, whole),
            share(w.in_progress, whole),
        );
    }
    out.push_str("</table>");
    out
}

fn campaign_section(status: &CampaignStatus) -> String {
    let c = &status.campaign;
    format!(
        "<section class=\"campaign\" id=\"campaign-{id}\"><h2><a href=\"/ui/campaigns/{id}\">{id}</a></h2>\
         <p>Release <b>{release}</b> · state <b class=\"state\">{state}</b>{reason} · {open} of {total} waves open</p>{waves}{leases}</section>",
        id = escape(&c.id),
        release = escape(&c.release_id),
        state = escape(&c.state),
        reason = c.state_reason.as_deref().map(|r| format!(" ({})", escape(r))).unwrap_or_default(),
        open = c.opened_waves,
        total = status.waves.len(),
        waves = waves_table(status),
        leases = leases_table(status),
    )
}

/// Who is rebooting under the campaign's reboot budget now; nothing without a budget.
fn leases_table(status: &CampaignStatus) -> String {
    let Some(budget) = &status.campaign.policy.reboot_budget else {
        return String::new();
    };
    let mut out = format!(
        "<p class=\"reboot-budget\">Reboot budget: {} at a time per {}, leases of {} s; {} held</p>",
        budget.max_rebooting,
        escape(budget.group_by.as_deref().unwrap_or("campaign")),
        budget.lease_secs,
        status.reboot_leases.len(),
    );
    if status.reboot_leases.is_empty() {
        return out;
    }
    out.push_str(
        "<table class=\"reboot-leases\"><tr><th>group</th><th>device</th><th>since</th><th>expires</th></tr>",
    );
    for l in &status.reboot_leases {
        let _ = write!(
            out,
            "<tr><td>{}</td><td><a href=\"/ui/devices/{id}\">{id}</a></td><td>{}</td><td>{}</td></tr>",
            escape(&l.group),
            when(Some(l.granted_at)),
            when(Some(l.expires_at)),
            id = escape(&l.device_id),
        );
    }
    out.push_str("</table>");
    out
}

pub async fn campaigns(Viewer(session): Viewer, State(s): State<Shared>) -> ApiResult<Response> {
    let mut body = String::new();
    for c in campaigns::list(&s.db).await? {
        body.push_str(&campaign_section(&campaigns::status(&s.db, &c.id).await?));
    }
    if body.is_empty() {
        body.push_str("<p>No campaigns yet.</p>");
    }
    Ok(Html(page_for(&session, &s, "Campaigns", &body)).into_response())
}

pub async fn campaign(
    Viewer(session): Viewer,
    State(s): State<Shared>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let status = campaigns::status(&s.db, &id).await?;
    let mut body = campaign_section(&status);
    if session.may(Role::Operator) {
        let actions: &[&str] = match status.campaign.state.as_str() {
            campaigns::state::DRAFT => &["start", "abort"],
            campaigns::state::RUNNING => &["pause", "abort"],
            campaigns::state::PAUSED => &["resume", "abort"],
            _ => &[],
        };
        body.push_str(&action_forms(
            &session,
            &s,
            &format!("/ui/campaigns/{id}"),
            actions,
        ));
    }
    if status.campaign.state == campaigns::state::DRAFT {
        body.push_str(&dry_run_table(&crate::dry_run::dry_run(&s.db, &id).await?));
    }
    body.push_str(&deployments_table(&s, &id).await?);
    Ok(Html(page_for(&session, &s, &format!("Campaign {id}"), &body)).into_response())
}

/// Sends the chosen bundle as the request body (streamed by the server to disk, then
/// verified) and shows how much of it went out; the server's one-line answer after.
fn upload_script(csrf: &str) -> String {
    format!(
        "<script>document.getElementById('upload').addEventListener('submit', e => {{\
         e.preventDefault();\
         const file = document.getElementById('bundle').files[0];\
         const bar = document.getElementById('upload-progress');\
         const status = document.getElementById('upload-status');\
         if (!file) {{ status.textContent = 'choose a bundle first'; return; }}\
         const x = new XMLHttpRequest();\
         x.open('POST', '/ui/releases?csrf={csrf}');\
         x.upload.onprogress = p => {{ if (p.lengthComputable) {{\
           bar.value = 100 * p.loaded / p.total;\
           status.textContent = p.loaded + ' of ' + p.total + ' bytes sent'; }} }};\
         x.upload.onload = () => {{ status.textContent = 'sent; verifying'; }};\
         x.onload = () => {{ status.textContent = x.responseText;\
           if (x.status === 200) {{ setTimeout(() => location.reload(), 500); }} }};\
         x.send(file); }});</script>"
    )
}

/// One small form per action, each a POST to `<base>/<action>` with the CSRF token.
fn action_forms(session: &Session, s: &Shared, base: &str, actions: &[&str]) -> String {
    let mut out = String::from("<p class=\"actions\">");
    for action in actions {
        let _ = write!(
            out,
            "<form method=\"post\" action=\"{base}/{action}\" style=\"display:inline\">{}\
             <button id=\"{action}\">{action}</button></form> ",
            session.csrf_field(s)
        );
    }
    out.push_str("</p>");
    out
}

/// What starting a draft would do: devices and bytes per wave.
fn dry_run_table(dry: &crate::dry_run::DryRun) -> String {
    let mut out = format!(
        "<h2>Dry run</h2><p class=\"dry-run\">{} devices, {} bytes to fetch in all</p>\
         <table class=\"dry-run\"><tr><th>wave</th><th>devices</th><th>bytes</th></tr>",
        dry.devices, dry.total_bytes
    );
    for w in &dry.waves {
        let ids: Vec<String> = w.devices.iter().map(|d| escape(&d.device_id)).collect();
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
            w.index + 1,
            ids.join(", "),
            w.bytes
        );
    }
    out.push_str("</table>");
    out
}

/// The campaign's deployments, most recently changed first.
async fn deployments_table(s: &Shared, campaign_id: &str) -> ApiResult<String> {
    let listed = deployments::list_of_campaign(&s.db, campaign_id, 500).await?;
    let mut out = String::from(
        "<h2>Deployments</h2><table class=\"deployments\"><tr><th>device</th><th>wave</th>\
         <th>state</th><th>reason</th><th>changed</th></tr>",
    );
    for dep in listed {
        let _ = write!(
            out,
            "<tr><td><a href=\"/ui/devices/{d}\">{d}</a></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            dep.wave + 1,
            escape(&dep.state),
            escape(dep.reason.as_deref().unwrap_or_default()),
            when(Some(dep.updated_at)),
            d = escape(&dep.device_id),
        );
    }
    out.push_str("</table>");
    Ok(out)
}

/// Each listed device's newest deployment state (`idle` when it never had one).
async fn deployment_states(
    s: &Shared,
    listed: &[devices::Device],
) -> ApiResult<HashMap<String, String>> {
    let (Some(first), Some(last)) = (listed.first(), listed.last()) else {
        return Ok(HashMap::new());
    };
    deployments::newest_states(&s.db, &first.id, &last.id).await
}

pub async fn devices(
    Viewer(session): Viewer,
    State(s): State<Shared>,
    Query(filter): Query<DeviceFilter>,
) -> ApiResult<Response> {
    let listed = devices::list_filtered(&s.db, &filter).await?;
    let states = deployment_states(&s, &listed).await?;
    let mut body = filter_form(&filter);
    let _ = write!(body, "<p class=\"count\">{} devices</p>", listed.len());
    body.push_str(
        "<table class=\"devices\"><tr><th>device</th><th>approval</th><th>compatible</th><th>tags</th>\
         <th>version</th><th>booted / committed</th><th>deployment</th><th>last check-in</th></tr>",
    );
    for d in listed {
        let _ = write!(
            body,
            "<tr><td><a href=\"/ui/devices/{id}\">{id}</a></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td>{} / {}</td><td>{}</td><td>{}</td></tr>",
            escape(&d.approval),
            escape(&d.compatible),
            escape(&d.tags.join(", ")),
            escape(d.version.as_deref().unwrap_or("-")),
            escape(d.booted_slot.as_deref().unwrap_or("-")),
            escape(d.committed_slot.as_deref().unwrap_or("-")),
            escape(&match (states.get(&d.id), &d.waiting) {
                (Some(state), Some(waiting)) => format!("{state}, {waiting}"),
                (Some(state), None) => state.clone(),
                (None, _) => "idle".into(),
            }),
            when(d.last_checkin),
            id = escape(&d.id),
        );
    }
    body.push_str("</table>");
    Ok(Html(page_for(&session, &s, "Devices", &body)).into_response())
}

pub async fn device(
    Viewer(session): Viewer,
    State(s): State<Shared>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let d = devices::get(&s.db, &id).await?;
    let actions: &[&str] = match d.approval.as_str() {
        _ if !session.may(Role::Operator) => &[],
        "pending" => &["approve", "reject"],
        "rejected" => &["approve"],
        "approved" => &["revoke"],
        _ => &[],
    };
    let mut actions = action_forms(&session, &s, &format!("/ui/devices/{id}"), actions);
    if session.may(Role::Operator) {
        let _ = write!(
            actions,
            "<form method=\"post\" action=\"/ui/devices/{}/tags\">{}<label>Tags \
             <input name=\"tags\" id=\"tags\" value=\"{}\"></label> \
             <button id=\"set-tags\">Set tags</button></form>",
            escape(&id),
            session.csrf_field(&s),
            escape(&d.tags.join(", "))
        );
    }
    let mut body = actions + &format!(
        "<p>Version <b class=\"version\">{}</b> · type {} · tags {} · security floor {} · last check-in {}</p>\
         <p class=\"tpm\">TPM: {}</p>{}<h2>History</h2>\
         <table class=\"history\"><tr><th>when</th><th>event</th><th>detail</th></tr>",
        escape(d.version.as_deref().unwrap_or("-")),
        escape(&d.compatible),
        escape(&d.tags.join(", ")),
        d.security_floor.map(|f| f.to_string()).unwrap_or_else(|| "-".into()),
        when(d.last_checkin),
        match d.ak_trusted_at {
            Some(at) => format!("attestation key trusted since {}", when(Some(at))),
            None => "no trusted attestation key (cannot be attested)".into(),
        },
        d.waiting
            .as_deref()
            .map(|w| format!("<p class=\"waiting\">Update installed, {}</p>", escape(w)))
            .unwrap_or_default(),
    );
    for h in devices::history(&s.db, &id, 200).await? {
        let _ = write!(
            body,
            "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
            when(Some(h.at)),
            escape(&h.event),
            escape(&h.detail)
        );
    }
    body.push_str("</table>");
    Ok(Html(page_for(&session, &s, &format!("Device {id}"), &body)).into_response())
}

/// The devices page's filters, as a GET form (it changes nothing, so needs no CSRF
/// token), showing the filter in force.
fn filter_form(filter: &DeviceFilter) -> String {
    let text = |name: &str, label: &str, value: &Option<String>| {
        format!(
            "<label>{label} <input name=\"{name}\" value=\"{}\" size=\"12\"></label> ",
            escape(value.as_deref().unwrap_or(""))
        )
    };
    let select = |name: &str, label: &str, options: &[(&str, &str)], chosen: &str| {
        let mut html = format!("<label>{label} <select name=\"{name}\">");
        for (value, shown) in options {
            let selected = if *value == chosen { " selected" } else { "" };
            let _ = write!(html, "<option value=\"{value}\"{selected}>{shown}</option>");
        }
        html + "</select></label> "
    };
    let approval = filter.approval.as_deref().unwrap_or("");
    let attested = filter.attested.as_deref().unwrap_or("");
    let unseen = filter.unseen_secs.as_deref().unwrap_or("");
    format!(
        "<form class=\"filters\" method=\"get\" action=\"/ui/devices\">{}{}{}{}{}{}\
         <button>Filter</button> <a href=\"/ui/devices\">clear</a></form>",
        text("q", "ID", &filter.q),
        select(
            "approval",
            "approval",
            &[
                ("", "any"),
                ("approved", "approved"),
                ("pending", "pending"),
                ("rejected", "rejected"),
                ("revoked", "revoked")
            ],
            approval,
        ),
        text("version", "version", &filter.version),
        text("tag", "tag", &filter.tag),
        select(
            "unseen_secs",
            "not seen for",
            &[
                ("", "-"),
                ("3600", "1 hour"),
                ("86400", "1 day"),
                ("604800", "7 days")
            ],
            unseen,
        ),
        select(
            "attested",
            "attestation key",
            &[("", "any"), ("true", "trusted"), ("false", "none")],
            attested,
        ),
    )
}

/// `/ui/releases`: every release, its images, and the images each one's deltas start
/// from, named by the release that carries them where the server knows it.
pub async fn releases(Viewer(session): Viewer, State(s): State<Shared>) -> ApiResult<Response> {
    let listed = crate::releases::list(&s.db).await?;
    let mut known: HashMap<&str, String> = HashMap::new();
    for r in &listed {
        for image in &r.images {
            known
                .entry(image.sha256.as_str())
                .or_insert_with(|| format!("{} {}", r.version, image.name));
        }
    }
    let mut body = String::from(
        "<table class=\"releases\"><tr><th>release</th><th>security version</th>\
         <th>bundle</th><th>image</th><th>size</th><th>full payload</th>\
         <th>deltas from</th></tr>",
    );
    for r in &listed {
        for (i, image) in r.images.iter().enumerate() {
            let release_cells = if i == 0 {
                let span = r.images.len();
                format!(
                    "<td rowspan=\"{span}\">{}</td><td rowspan=\"{span}\">{}</td>\
                     <td rowspan=\"{span}\">{} · {}</td>",
                    escape(&r.id),
                    r.security_version,
                    mib(r.bundle_size),
                    escape(r.external_url.as_deref().unwrap_or("served here"))
                )
            } else {
                String::new()
            };
            let sources: Vec<String> = image
                .delta_sources
                .iter()
                .map(|sha| match known.get(sha.as_str()) {
                    Some(name) => escape(name),
                    None => format!("unknown image {}", escape(sha.get(..12).unwrap_or(sha))),
                })
                .collect();
            let _ = write!(
                body,
                "<tr>{release_cells}<td>{}</td><td>{}</td><td>{}</td><td class=\"sources\">{}</td></tr>",
                escape(&image.name),
                mib(image.size),
                mib(image.full_bytes),
                if sources.is_empty() { "none (full only)".to_string() } else { sources.join(", ") },
            );
        }
    }
    body.push_str("</table>");
    if !session.may(Role::Operator) {
        return Ok(Html(page_for(&session, &s, "Releases", &body)).into_response());
    }
    let csrf = session
        .cookie
        .as_deref()
        .map(|c| s.session_key.csrf(c))
        .unwrap_or_default();
    let _ = write!(
        body,
        "<h2>Add a release</h2><form id=\"upload\"><input type=\"file\" id=\"bundle\" \
         accept=\".cairn\"> <button id=\"upload-button\">Upload and verify</button> \
         <progress id=\"upload-progress\" max=\"100\" value=\"0\"></progress> \
         <span id=\"upload-status\"></span></form>{}",
        upload_script(&csrf)
    );
    Ok(Html(form_page_for(&session, &s, "Releases", &body)).into_response())
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// `/ui/audit`: operator actions on devices' trust, newest first (who, what, when).
/// `GET /ui/fleet`: versions across the fleet over the last two weeks, each release's
/// success rate, devices not seen for a day.
pub async fn fleet(Viewer(session): Viewer, State(s): State<Shared>) -> ApiResult<Response> {
    use crate::overview;
    let now = crate::db::now_ms();
    let days = overview::versions_by_day(&s.db, 14, now).await?;
    let mut body = format!(
        "<h2>Versions, day by day</h2>{}",
        overview::versions_chart(&days)
    );
    body.push_str(
        "<h2>Updates by release</h2><table class=\"outcomes\"><tr><th>release</th>\
         <th>succeeded</th><th>failed</th><th>in progress</th><th>success rate</th></tr>",
    );
    for (release, o) in overview::outcomes_by_release(&s.db).await? {
        let _ = write!(
            body,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"rate\">{}</td></tr>",
            escape(&release),
            o.succeeded,
            o.failed,
            o.in_progress,
            o.success_rate()
                .map_or("-".to_string(), |r| format!("{:.0}%", r * 100.0)),
        );
    }
    let unseen = overview::unseen_since(&s.db, now - overview::DAY_MS).await?;
    let _ = write!(
        body,
        "</table><p class=\"unseen\"><a href=\"/ui/devices?approval=approved&unseen_secs=86400\">\
         {unseen} approved devices</a> not seen for a day.</p>"
    );
    Ok(Html(page_for(&session, &s, "Fleet", &body)).into_response())
}

pub async fn audit(Viewer(session): Viewer, State(s): State<Shared>) -> ApiResult<Response> {
    let mut body = String::from(
        "<table class=\"audit\"><tr><th>when</th><th>who</th><th>action</th><th>device</th>\
         <th>detail</th></tr>",
    );
    for e in crate::audit::list(&s.db, 500).await? {
        let _ = write!(
            body,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td><a href=\"/ui/devices/{id}\">{id}</a></td>\
             <td>{}</td></tr>",
            when(Some(e.at)),
            escape(&e.actor),
            escape(&e.action),
            escape(&e.detail),
            id = escape(&e.device_id),
        );
    }
    body.push_str("</table>");
    Ok(Html(page_for(&session, &s, "Audit log", &body)).into_response())
}

#[cfg(test)]
mod tests {
    #[test]
    fn device_supplied_text_cannot_become_markup() {
        let detail = r#"<script>alert("x")</script> & 'more'"#;
        let shown = super::escape(detail);
        assert!(!shown.contains('<') && !shown.contains('>') && !shown.contains('"'));
        assert_eq!(
            shown,
            "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#39;more&#39;"
        );
    }
}
