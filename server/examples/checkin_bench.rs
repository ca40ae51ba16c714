//! Check-ins per second on loopback, for `cargo xtask bench`.
//!
//! Sets up a fleet of devices (100k by default) directly in the database, a release and
//! a running campaign whose first wave (1 %) is open, so every check-in takes the real
//! path (authentication, device lookup, campaign matching, wave hashing, state batching,
//! a few assignments). Then many concurrent clients check in as those devices over HTTP
//! on 127.0.0.1, each device keeping its ETag like a real one.
//!
//! Numbers are reported against a baseline measured in the same run with the same client:
//! a trivial axum endpoint that does no database work. The ratio is what to compare
//! between machines; the absolute numbers depend on the machine and its load.

#[path = "../tests/common/postgres.rs"]
mod postgres;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use axum::routing::post;
use cairn_bundle::writer::BundleSpec;
use cairn_bundle::TrustRoot;
use cairn_server::db::Db;
use cairn_server::http::{self, Config, Shared};
use cairn_server::policy::{CampaignPolicy, Selector, WaveSize};
use cairn_server::{campaigns, releases};
use cairn_server_api::{paths, CheckIn, InstalledImage, Slot};
use cairn_testkit::{bundle_spec, image_inputs, in_days, new_key, root_for, sign_bundle};
use clap::Parser;

const COMPATIBLE: &str = "cairn-bench";

/// The same allocator as the `cairn-server` binary.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
struct Args {
    /// sqlite, postgres, or both.
    #[arg(long, default_value = "both")]
    backend: String,
    #[arg(long, default_value_t = 100_000)]
    devices: usize,
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(args))
}

async fn run(args: Args) -> Result<()> {
    println!(
        "check-in bench: {} devices, {} s per measurement, {} in flight, {} CPUs",
        args.devices,
        args.seconds,
        args.concurrency,
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    let work = tempfile::tempdir()?;
    if matches!(args.backend.as_str(), "sqlite" | "both") {
        let url = format!("sqlite://{}", work.path().join("bench.db").display());
        let (rate, baseline) = bracketed(&args, measure_server(&args, &url, work.path())).await?;
        report("sqlite", rate, baseline);
    }
    if matches!(args.backend.as_str(), "postgres" | "both") {
        let pg = tokio::task::spawn_blocking(postgres::PgCluster::start).await?;
        let url = pg.create_database("bench");
        let (rate, baseline) = bracketed(&args, measure_server(&args, &url, work.path())).await?;
        report("postgres", rate, baseline);
        drop(pg);
    }
    Ok(())
}

/// Measures the baseline right before and right after `measurement` and returns both
/// results, the baseline as the mean: on a shared machine the load drifts, and the ratio
/// is only meaningful against a baseline taken under the same conditions.
async fn bracketed(
    args: &Args,
    measurement: impl std::future::Future<Output = Result<f64>>,
) -> Result<(f64, f64)> {
    let before = measure_baseline(args).await?;
    let rate = measurement.await?;
    let after = measure_baseline(args).await?;
    println!("  baseline (trivial axum endpoint, no database): {before:.0} before, {after:.0} after, requests/s");
    Ok((rate, (before + after) / 2.0))
}

fn report(backend: &str, rate: f64, baseline: f64) {
    println!(
        "{backend}: {rate:.0} check-ins/s = {:.2} x baseline (target on 2 cores with SQLite: 20000/s)",
        rate / baseline
    );
}

async fn measure_baseline(args: &Args) -> Result<f64> {
    let router = axum::Router::new().route(
        paths::CHECK_IN,
        post(|| async {
            (
                [("content-type", "application/json")],
                r#"{"assignment":null,"poll_interval_secs":300}"#,
            )
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let server = tokio::spawn(async move { axum::serve(listener, router).await });
    let tokens: Vec<String> = (0..args.devices.min(1000))
        .map(|i| format!("baseline-{i}"))
        .collect();
    let rate = drive(&url, Arc::new(tokens), args).await?;
    server.abort();
    Ok(rate)
}

async fn measure_server(args: &Args, db_url: &str, work: &std::path::Path) -> Result<f64> {
    let db = Db::connect(db_url).await?;
    let blobs = tempfile::tempdir_in(work)?;
    let (root, bundle) = release_bundle(work)?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let local = listener.local_addr()?;
    let mut config = Config::new(blobs.path().to_path_buf());
    config.root = Some(root.clone());
    config.evaluate_every = Duration::from_secs(3600);
    let (router, state) = http::build(db.clone(), config, local).await?;
    let server = tokio::spawn(async move { axum::serve(listener, router).await });

    let started = Instant::now();
    let tokens = populate(&state, args.devices).await?;
    let staged = blobs.path().join(".upload-bench");
    std::fs::copy(&bundle, &staged)?;
    let release = releases::add(&db, blobs.path(), Some(&root), staged, None).await?;
    let policy = CampaignPolicy {
        selector: Selector {
            compatible: COMPATIBLE.into(),
            tags: vec![],
            device_ids: vec![],
        },
        waves: vec![WaveSize::Percent(1.0), WaveSize::Percent(100.0)],
        min_success_ratio: 1.0,
        bake_secs: 3600,
        failure_threshold: 0.5,
        attestation_required: false,
        retry_declined: false,
        reboot_budget: None,
    };
    campaigns::create(&db, "bench", &release.id, policy).await?;
    campaigns::start(&db, "bench").await?;
    println!(
        "  set-up of {db_url}: {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let rate = drive(&format!("http://{local}"), Arc::new(tokens), args).await?;
    state.writer.flush().await;
    let status = campaigns::status(&db, "bench").await?;
    println!(
        "  deployments assigned during the run: {}",
        status.waves[0].assigned
    );
    server.abort();
    Ok(rate)
}

/// Devices straight into the database, as they are after their first check-in (running
/// 1.0.0): enrollment and first contact are not what is measured, the steady state of a
/// polling fleet is. And a token for each, as `/v1/device/token` would issue.
async fn populate(state: &Shared, count: usize) -> Result<Vec<String>> {
    let expires = cairn_server::auth::unix_now() + 3600;
    let ids: Vec<String> = (0..count).map(|i| format!("bench-{i:07}")).collect();
    let mut tx = state.db.pool.begin().await?;
    for chunk in ids.chunks(200) {
        let mut sql = String::from("INSERT INTO devices (id, public_key, approval, compatible, tags, version, created_at) VALUES ");
        for (n, _) in chunk.iter().enumerate() {
            if n > 0 {
                sql.push(',');
            }
            sql.push_str(&format!(
                "(${}, 'bench', 'approved', '{COMPATIBLE}', '', '1.0.0', 0)",
                n + 1
            ));
        }
        let mut query = sqlx::query(&sql);
        for id in chunk {
            query = query.bind(id);
        }
        query
            .execute(&mut *tx)
            .await
            .context("inserting bench devices")?;
    }
    tx.commit().await?;
    Ok(ids
        .iter()
        .map(|id| state.token_key.issue(id, expires))
        .collect())
}

fn release_bundle(work: &std::path::Path) -> Result<(TrustRoot, std::path::PathBuf)> {
    let key = new_key();
    let image = work.join("rootfs.img");
    std::fs::write(&image, vec![7u8; 1 << 20])?;
    let out = work.join("bench.cairn");
    let spec = BundleSpec {
        expires: in_days(1),
        images: image_inputs(&[("rootfs", &image)]),
        ..bundle_spec(COMPATIBLE, "2.0.0")
    };
    sign_bundle(&spec, &[&key], &out);
    Ok((TrustRoot::anchor(root_for(&key, 1))?, out))
}

/// Check-ins from `concurrency` tasks for `seconds`, each request as the next device in
/// turn; returns successful check-ins per second.
async fn drive(base: &str, tokens: Arc<Vec<String>>, args: &Args) -> Result<f64> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .build()?;
    let state = CheckIn {
        version: "1.0.0".into(),
        booted_slot: Slot::A,
        committed_slot: Slot::A,
        security_floor: 1,
        images: vec![InstalledImage {
            name: "rootfs".into(),
            sha256: "ab".repeat(32),
            size: 1 << 20,
        }],
        waiting: None,
    };
    let body = Arc::new(serde_json::to_vec(&state)?);
    let etags: Arc<Vec<Mutex<Option<String>>>> =
        Arc::new((0..tokens.len()).map(|_| Mutex::new(None)).collect());
    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    // Parsed once: URL parsing per request would be client cost, not server cost.
    let url = reqwest::Url::parse(&format!("{base}{}", paths::CHECK_IN))?;
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let mut tasks = Vec::new();
    for _ in 0..args.concurrency {
        let (client, tokens, body, etags, next, done, failed, url) = (
            client.clone(),
            tokens.clone(),
            body.clone(),
            etags.clone(),
            next.clone(),
            done.clone(),
            failed.clone(),
            url.clone(),
        );
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                let i = next.fetch_add(1, Ordering::Relaxed) % tokens.len();
                let etag = etags[i].lock().map(|e| e.clone()).unwrap_or(None);
                let mut request = client
                    .post(url.clone())
                    .bearer_auth(&tokens[i])
                    .header("content-type", "application/json")
                    .body(body.as_ref().clone());
                if let Some(etag) = etag {
                    request = request.header("if-none-match", etag);
                }
                match request.send().await {
                    Ok(r) if r.status().is_success() || r.status().as_u16() == 304 => {
                        if let Some(tag) = r.headers().get("etag").and_then(|v| v.to_str().ok()) {
                            if let Ok(mut slot) = etags[i].lock() {
                                *slot = Some(tag.to_string());
                            }
                        }
                        let _ = r.bytes().await;
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    let started = Instant::now();
    for t in tasks {
        t.await?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let failed = failed.load(Ordering::Relaxed);
    if failed > 0 {
        println!("  {failed} requests failed");
    }
    Ok(done.load(Ordering::Relaxed) as f64 / elapsed)
}
