//! What the server tells the systems that run it: `/metrics` in Prometheus' text format
//! (behind the admin token, as Prometheus' `authorization` scrape setting sends it),
//! `/healthz` (the process serves) and `/readyz` (and its database answers).
//!
//! Request counts and latencies, and the bytes of bundles served, are kept in memory
//! (they restart at zero with the server, as Prometheus counters may). Requests are
//! counted by [`track`], a middleware around every route, labelled by the route's
//! template (`/v1/device/check-in`, `/admin/v1/devices/{id}`), never by the raw path, so
//! a scanner cannot grow the label set. Fleet figures (devices by approval and version,
//! deployments by campaign and state) are counted from the database at each scrape.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sqlx::Row as _;

use crate::app::Shared;
use crate::auth::Admin;
use crate::error::ApiResult;

/// Upper bounds (seconds) of the latency histogram's buckets.
const BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Debug, Default, Clone)]
struct Histogram {
    /// Requests at or under each bound of [`BUCKETS`] (not cumulative; summed when
    /// rendered).
    buckets: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, seconds: f64) {
        if let Some(i) = BUCKETS.iter().position(|bound| seconds <= *bound) {
            self.buckets[i] += 1;
        }
        self.count += 1;
        self.sum += seconds;
    }
}

/// (method, route template, status class such as `2xx`).
type RequestKey = (String, String, &'static str);

/// The in-memory part of the metrics, one per server.
#[derive(Debug, Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<RequestKey, Histogram>>,
    /// Bytes of bundle files sent to devices (`blobs::serve`), Range answers included.
    pub bundle_bytes_served: AtomicU64,
}

impl Metrics {
    fn observe(&self, key: RequestKey, seconds: f64) {
        let mut requests = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        requests.entry(key).or_default().observe(seconds);
    }

    fn render_requests(&self, out: &mut String) {
        let requests = self
            .requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        out.push_str(
            "# HELP cairn_http_request_duration_seconds Time to answer a request, by route.\n\
             # TYPE cairn_http_request_duration_seconds histogram\n",
        );
        for ((method, route, status), h) in &requests {
            let labels = format!(
                "method=\"{}\",route=\"{}\",status=\"{status}\"",
                escape(method),
                escape(route)
            );
            let mut cumulative = 0;
            for (bound, n) in BUCKETS.iter().zip(h.buckets) {
                cumulative += n;
                let _ = writeln!(
                    out,
                    "cairn_http_request_duration_seconds_bucket{{{labels},le=\"{bound}\"}} {cumulative}"
                );
            }
            let _ = writeln!(
                out,
                "cairn_http_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}\n\
                 cairn_http_request_duration_seconds_sum{{{labels}}} {}\n\
                 cairn_http_request_duration_seconds_count{{{labels}}} {}",
                h.count, h.sum, h.count
            );
        }
        let check_ins: u64 = requests
            .iter()
            .filter(|((_, route, _), _)| route == "/v1/device/check-in")
            .map(|(_, h)| h.count)
            .sum();
        let _ = writeln!(
            out,
            "# HELP cairn_checkins_total Device check-ins answered, any outcome.\n\
             # TYPE cairn_checkins_total counter\n\
             cairn_checkins_total {check_ins}"
        );
        let _ = writeln!(
            out,
            "# HELP cairn_bundle_bytes_served_total Bytes of bundles sent to devices.\n\
             # TYPE cairn_bundle_bytes_served_total counter\n\
             cairn_bundle_bytes_served_total {}",
            self.bundle_bytes_served.load(Ordering::Relaxed)
        );
    }
}

/// Middleware: times every request and counts it under its route template.
pub async fn track(State(state): State<Shared>, request: Request, next: Next) -> Response {
    let method = request.method().to_string();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_string();
    let started = Instant::now();
    let response = next.run(request).await;
    let status = match response.status().as_u16() {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    };
    state
        .metrics
        .observe((method, route, status), started.elapsed().as_secs_f64());
    response
}

/// `GET /metrics` (admin token).
pub async fn serve(_: Admin, State(state): State<Shared>) -> ApiResult<Response> {
    let mut out = String::new();
    state.metrics.render_requests(&mut out);
    render_fleet(&state, &mut out).await?;
    render_pool(&state, &mut out);
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    )
        .into_response())
}

/// `GET /healthz`: the process answers.
pub async fn healthz() -> &'static str {
    "ok\n"
}

/// `GET /readyz`: the database answers too (503 while it does not).
pub async fn readyz(State(state): State<Shared>) -> (StatusCode, String) {
    match sqlx::query("SELECT 1").execute(&state.db.pool).await {
        Ok(_) => (StatusCode::OK, "ready\n".into()),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("database unavailable: {e}\n"),
        ),
    }
}

async fn render_fleet(state: &Shared, out: &mut String) -> ApiResult<()> {
    let devices = sqlx::query(
        "SELECT approval, COALESCE(version, '') AS version, COUNT(*) AS n FROM devices \
         GROUP BY approval, version ORDER BY approval, version",
    )
    .fetch_all(&state.db.pool)
    .await?;
    out.push_str(
        "# HELP cairn_devices Devices by approval and running version (empty: not reported).\n\
         # TYPE cairn_devices gauge\n",
    );
    for row in devices {
        let (approval, version, n): (String, String, i64) = (
            row.try_get("approval")?,
            row.try_get("version")?,
            row.try_get("n")?,
        );
        let _ = writeln!(
            out,
            "cairn_devices{{approval=\"{}\",version=\"{}\"}} {n}",
            escape(&approval),
            escape(&version)
        );
    }
    let deployments = sqlx::query(
        "SELECT c.id AS campaign, c.state AS campaign_state, d.state AS state, COUNT(*) AS n \
         FROM deployments d JOIN campaigns c ON c.id = d.campaign_id \
         GROUP BY c.id, c.state, d.state ORDER BY c.id, d.state",
    )
    .fetch_all(&state.db.pool)
    .await?;
    out.push_str(
        "# HELP cairn_campaign_deployments A campaign's deployments by state.\n\
         # TYPE cairn_campaign_deployments gauge\n",
    );
    for row in deployments {
        let (campaign, campaign_state, deployment_state, n): (String, String, String, i64) = (
            row.try_get("campaign")?,
            row.try_get("campaign_state")?,
            row.try_get("state")?,
            row.try_get("n")?,
        );
        let _ = writeln!(
            out,
            "cairn_campaign_deployments{{campaign=\"{}\",campaign_state=\"{}\",state=\"{}\"}} {n}",
            escape(&campaign),
            escape(&campaign_state),
            escape(&deployment_state)
        );
    }
    Ok(())
}

fn render_pool(state: &Shared, out: &mut String) {
    let pool = &state.db.pool;
    let (size, idle) = (pool.size(), pool.num_idle() as u32);
    let _ = writeln!(
        out,
        "# HELP cairn_db_connections Database pool connections by state.\n\
         # TYPE cairn_db_connections gauge\n\
         cairn_db_connections{{state=\"in_use\"}} {}\n\
         cairn_db_connections{{state=\"idle\"}} {idle}\n\
         # HELP cairn_db_connections_max The pool's limit.\n\
         # TYPE cairn_db_connections_max gauge\n\
         cairn_db_connections_max {}",
        size.saturating_sub(idle),
        pool.options().get_max_connections()
    );
}

/// A label value as the text format wants it: `\`, `"` and newlines escaped.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_histogram_renders_cumulative_buckets() {
        let metrics = Metrics::default();
        for seconds in [0.001, 0.02, 0.02, 3.0, 60.0] {
            metrics.observe(
                ("POST".into(), "/v1/device/check-in".into(), "2xx"),
                seconds,
            );
        }
        let mut out = String::new();
        metrics.render_requests(&mut out);
        let labels = "method=\"POST\",route=\"/v1/device/check-in\",status=\"2xx\"";
        for (le, n) in [
            ("0.005", 1),
            ("0.025", 3),
            ("2.5", 3),
            ("5", 4),
            ("+Inf", 5),
        ] {
            let line =
                format!("cairn_http_request_duration_seconds_bucket{{{labels},le=\"{le}\"}} {n}\n");
            assert!(out.contains(&line), "no {line} in\n{out}");
        }
        assert!(out.contains("cairn_checkins_total 5\n"), "{out}");
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
