//! `/metrics`, `/healthz` and `/readyz` after a real campaign on a real server: what an
//! operator's Prometheus and orchestrator read.

mod common;

use std::collections::BTreeMap;

/// The samples of a Prometheus text exposition, `name{labels}` → value; panics on a line
/// that is neither a comment nor `series value`.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').unwrap_or_else(|| panic!("line {l:?}"));
            let value: f64 = value.parse().unwrap_or_else(|_| panic!("value in {l:?}"));
            (series.to_string(), value)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_check_ins_devices_campaign_progress_and_latencies() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("cairn.db").display());
    let outcome = common::fleet::run_campaign_through_waves(&url).await;
    let server = &outcome.server;
    let http = reqwest::Client::new();

    let anonymous = http
        .get(format!("{}/metrics", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401, "metrics without the admin token");

    let (status, _) = server.admin().get("/healthz").await;
    assert_eq!(status, 200);
    let ready = http
        .get(format!("{}/readyz", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);

    let answer = server.admin().metrics().await;
    assert_eq!(answer.status(), 200);
    assert!(answer.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let text = answer.text().await.unwrap();
    let samples = samples(&text);
    let get = |series: &str| {
        *samples
            .get(series)
            .unwrap_or_else(|| panic!("no {series} in\n{text}"))
    };

    // Every one of the 20 devices checked in at least once.
    assert!(get("cairn_checkins_total") >= 20.0);
    let check_ins = "method=\"POST\",route=\"/v1/device/check-in\",status=\"2xx\"";
    assert_eq!(
        get(&format!(
            "cairn_http_request_duration_seconds_count{{{check_ins}}}"
        )),
        get(&format!(
            "cairn_http_request_duration_seconds_bucket{{{check_ins},le=\"+Inf\"}}"
        ))
    );
    // The fleet by approval and version: all 20 approved, all reported a version.
    let approved: f64 = samples
        .iter()
        .filter(|(s, _)| s.starts_with("cairn_devices{approval=\"approved\""))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(approved, 20.0, "{text}");
    assert!(get("cairn_devices{approval=\"approved\",version=\"2.0.0\"}") >= 1.0);
    // The aborted campaign's deployments, by state.
    let campaign: f64 = samples
        .iter()
        .filter(|(s, _)| s.starts_with("cairn_campaign_deployments{campaign=\"rollout-2\""))
        .map(|(_, v)| v)
        .sum();
    assert!(campaign >= 4.0, "{text}");
    // A label value is the route's template, never the raw path.
    assert!(!text.contains("/admin/v1/campaigns/rollout-2\""), "{text}");
    assert!(get("cairn_db_connections_max") >= 1.0);

    outcome.server.stop().await;
}
