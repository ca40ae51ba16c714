//! `cairnd`: decides trials at boot, reboots into installed updates by policy, serves
//! metrics, and (with a server configured) checks in for updates.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use cairn_tpm::FloorProtection;
use cairn_updater::containers::Preload;
use cairn_updater::context::Context;
use cairn_updater::fleet::reboot_lease::LeaseKeeper;
use cairn_updater::fleet::{self, ServerClient};
use cairn_updater::metrics::{self, Counters};
use cairn_updater::reboot_hooks::{self, Backoff, Drain};
use cairn_updater::state::Phase;
use cairn_updater::trial::{self, Verdict};
use cairn_updater::{attestation, config, reboot};
use clap::Parser;

#[derive(Parser)]
#[command(name = "cairnd", version, about = "The Cairn update daemon")]
struct Args {
    #[arg(long, default_value = config::DEFAULT_PATH)]
    config: PathBuf,
    /// Decide any pending trial, then exit (for init scripts and tests).
    #[arg(long)]
    once: bool,
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CAIRN_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        // Logs usually go to a file (the image's init redirects them): no colour codes.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .init();
    let args = Args::parse();
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, stop.clone())?;
    }
    let mut ctx = Context::open(&args.config)
        .with_context(|| format!("loading {}", args.config.display()))?;
    // First: the initramfs armed the watchdog and nothing feeds it until now.
    cairn_updater::watchdog::start(&ctx.config.watchdog);
    fleet::server_override::log_outcome(&ctx.server_override);
    // Before anything checks a certificate or a signature's expiry: a board without a
    // clock battery starts in 1970.
    ctx.clock().enforce_floor();
    let verdict = {
        let _lock = ctx.lock_install()?;
        // Saved before anything slow: on a trial boot, the record that its userspace
        // came up (a fallback from here on is an interruption after boot).
        let next = trial::record_boot(&mut ctx)?;
        measure_boot(&ctx);
        cairn_updater::provision::on_start(&ctx);
        // Before the verdict: a commit (or a rollback) owes the node its uncordon hook,
        // and a crash right after the commit must not lose that.
        if let Phase::TrialBoot { version, .. } = &ctx.state.phase {
            if let Err(e) = reboot_hooks::owe_uncordon(&ctx, version) {
                tracing::error!("the uncordon hook's debt not recorded: {e}");
            }
        }
        trial::decide(&mut ctx, next)?
    };
    match &verdict {
        Verdict::Idle => {
            tracing::info!(state = %cairn_updater::status::describe(&ctx.state.phase), "started")
        }
        Verdict::Committed { slot, version } => tracing::info!(%slot, %version, "update committed"),
        // A failed trial reboots at once, back to the committed slot: no drain hook (the
        // node was drained before the reboot into the trial; the uncordon runs there).
        Verdict::RolledBack { slot, reason } => {
            tracing::error!(%slot, %reason, "update rejected; rebooting into the committed slot");
            reboot::reboot(&ctx.config.reboot).map_err(anyhow::Error::msg)?;
        }
    }
    if !matches!(verdict, Verdict::RolledBack { .. }) {
        // At once at every start, whatever the backoff: the node rejoins as soon as it can.
        uncordon_if_owed(&ctx, Backoff::Ignore);
    }
    match attestation::sync_floor(&ctx.config, ctx.state.security_floor) {
        Ok(Some((floor, FloorProtection::OwnerDeletable))) => tracing::warn!(
            floor,
            "the TPM security floor is owner-deletable (the platform hierarchy was closed \
             when it was provisioned): anyone with TPM owner authorisation can reset it"
        ),
        Ok(Some((floor, protection))) => tracing::info!(floor, %protection, "TPM security floor"),
        Ok(None) => {}
        Err(e) => tracing::error!("TPM security floor not updated: {e}"),
    }
    if args.once {
        return Ok(());
    }
    let counters = Arc::new(Counters::default());
    if let Err(e) = metrics::serve(
        &ctx.config.system.metrics_listen,
        args.config.clone(),
        counters.clone(),
    ) {
        tracing::warn!(error = %e, listen = %ctx.config.system.metrics_listen, "metrics disabled");
    }
    run(&args, &stop, &counters)
}

/// On a thread of its own, so a slow or silent NTP server never holds up check-ins or
/// reboots: ask NTP and keep the time floor, at start and every hour.
fn keep_time(config: PathBuf, stop: Arc<AtomicBool>) {
    let spawned = std::thread::Builder::new()
        .name("clock".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if let Ok(ctx) = Context::open(&config) {
                    let clock = ctx.clock();
                    clock.sync_ntp();
                    clock.keep_floor();
                }
                let next = Instant::now() + Duration::from_secs(3600);
                while Instant::now() < next && !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
        });
    if let Err(e) = spawned {
        tracing::error!("no clock thread, the time is kept only at check-ins: {e}");
    }
}

/// First thing: extend PCR 12 with the booted slot's identity, before health checks or
/// anything else from the slot runs. A failure is logged, not fatal: the device still
/// updates, and the server will refuse its attestation.
fn measure_boot(ctx: &Context) {
    let Some(tpm) = &ctx.config.tpm else {
        return;
    };
    let measured = attestation::boot_events(&ctx.config).and_then(|events| {
        let mut device = cairn_tpm::Tpm::open(&tpm.tcti)?;
        attestation::measure_boot(&mut device, tpm, &events)
    });
    match measured {
        Ok(log) => tracing::info!(events = log.events().len(), "boot measured into PCR 12"),
        Err(e) => tracing::error!("boot not measured, attestation will fail: {e}"),
    }
}

/// The daemon's loop: check in with the server when one is configured (installing what
/// it assigns), and reboot into an installed update when the policy says so.
fn run(args: &Args, stop: &Arc<AtomicBool>, counters: &Counters) -> Result<()> {
    let tick = Duration::from_secs(5);
    let mut client = None;
    let mut lease = LeaseKeeper::default();
    let mut next_check_in = Instant::now();
    let mut last_tick = Instant::now() - tick;
    keep_time(args.config.clone(), stop.clone());
    while !stop.load(Ordering::Relaxed) {
        if Instant::now() >= next_check_in {
            next_check_in = Instant::now() + check_in(args, &mut client, stop, counters);
        }
        if last_tick.elapsed() >= tick {
            last_tick = Instant::now();
            match Context::open(&args.config) {
                Ok(ctx) => uncordon_if_owed(&ctx, Backoff::Respect),
                Err(e) => tracing::error!("{e}"),
            }
            reboot_if_due(args, &mut client, &mut lease)?;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    tracing::info!("stopping");
    Ok(())
}

/// One check-in round; returns the wait until the next. Errors are logged and retried:
/// the server being away never stops the daemon.
fn check_in(
    args: &Args,
    client: &mut Option<ServerClient>,
    stop: &Arc<AtomicBool>,
    counters: &Counters,
) -> Duration {
    let ctx = match Context::open(&args.config) {
        Ok(ctx) => ctx,
        Err(e) => {
            tracing::error!("{e}");
            return Duration::from_secs(30);
        }
    };
    let Some(server) = ctx.config.server.clone() else {
        return Duration::from_secs(3600);
    };
    let retry = Duration::from_secs(server.poll_secs.clamp(1, 60));
    if client.is_none() {
        match fleet::client(&ctx, &server) {
            Ok(c) => *client = Some(c),
            Err(e) => {
                tracing::error!("cannot talk to {}: {e}", server.url);
                return retry;
            }
        }
    }
    let Some(c) = client.as_mut() else {
        return retry;
    };
    match fleet::cycle(&args.config, c, stop, counters) {
        Ok(wait) => wait,
        Err(e) => {
            counters.checkin_errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!("check-in with {} failed: {e}", server.url);
            retry
        }
    }
}

/// Reboots into an installed update when the policy allows, after telling the server
/// (`rebooting` must reach it before the reboot when it can).
fn reboot_if_due(
    args: &Args,
    client: &mut Option<ServerClient>,
    lease: &mut LeaseKeeper,
) -> Result<()> {
    let mut ctx = Context::open(&args.config)?;
    if !matches!(ctx.state.phase, Phase::InstalledPending { .. })
        || !reboot::due(&ctx.config.reboot, time::OffsetDateTime::now_utc())
    {
        return Ok(());
    }
    if let Some(c) = client.as_mut() {
        if let Err(e) = fleet::deliver_reports(&mut ctx, c) {
            tracing::warn!("rebooting before the server heard about it: {e}");
        }
    }
    // The release's container images into containerd first: slow, and it disturbs no
    // workload, so it holds no reboot lease.
    match cairn_updater::containers::preload(&ctx, time::OffsetDateTime::now_utc(), true) {
        Ok(Preload::Done) => {}
        Ok(Preload::Waiting | Preload::Failed(_)) => return Ok(()),
        Err(e) => {
            tracing::error!("reboot postponed: {e}");
            return Ok(());
        }
    }
    // The server's leave (the campaign's reboot budget), before the drain: a node drains
    // only once it may go.
    if !lease.may_reboot(&ctx, client.as_mut()) {
        return Ok(());
    }
    // The node's drain hook ([reboot] before): a failure postpones the reboot, retried
    // with backoff on a later call.
    match reboot_hooks::drain(&ctx, time::OffsetDateTime::now_utc(), Backoff::Respect) {
        Ok(Drain::Done) => {}
        Ok(Drain::Waiting | Drain::Failed(_)) => return Ok(()),
        Err(e) => {
            tracing::error!("reboot postponed: {e}");
            return Ok(());
        }
    }

    tracing::info!("rebooting into the installed update");
    reboot::reboot(&ctx.config.reboot).map_err(anyhow::Error::msg)
}

/// The uncordon hook ([reboot] after_commit) when it is owed and the device settled;
/// a failure is recorded and retried from the loop with backoff.
fn uncordon_if_owed(ctx: &Context, backoff: Backoff) {
    if let Err(e) = reboot_hooks::uncordon(ctx, time::OffsetDateTime::now_utc(), backoff) {
        tracing::error!("uncordon hook: {e}");
    }
}
