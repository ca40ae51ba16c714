//! `cairnd`: decides trials at boot, reboots into installed updates by policy, serves
//! metrics, and (with a server configured) checks in for updates.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use cairn_updater::context::Context;
use cairn_updater::metrics::{self, Counters};
use cairn_updater::state::Phase;
use cairn_updater::trial::{self, Verdict};
use cairn_updater::{config, reboot};
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
        .init();
    let args = Args::parse();
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, stop.clone())?;
    }
    let mut ctx = Context::open(&args.config)
        .with_context(|| format!("loading {}", args.config.display()))?;
    let verdict = {
        let _lock = ctx.lock_install()?;
        trial::on_boot(&mut ctx)?
    };
    match &verdict {
        Verdict::Idle => {
            tracing::info!(state = %cairn_updater::status::describe(&ctx.state.phase), "started")
        }
        Verdict::Committed { slot, version } => tracing::info!(%slot, %version, "update committed"),
        Verdict::RolledBack { slot, reason } => {
            tracing::error!(%slot, %reason, "update rejected; rebooting into the committed slot");
            reboot::reboot(&ctx.config.reboot).map_err(anyhow::Error::msg)?;
        }
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
    run(&args, &stop)
}

/// The idle loop: reboot into an installed update when the policy says so.
fn run(args: &Args, stop: &AtomicBool) -> Result<()> {
    let tick = Duration::from_secs(5);
    let mut last = Instant::now() - tick;
    while !stop.load(Ordering::Relaxed) {
        if last.elapsed() >= tick {
            last = Instant::now();
            let ctx = Context::open(&args.config)?;
            if matches!(ctx.state.phase, Phase::InstalledPending { .. })
                && reboot::due(&ctx.config.reboot, time::OffsetDateTime::now_utc())
            {
                reboot::reboot(&ctx.config.reboot).map_err(anyhow::Error::msg)?;
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    tracing::info!("stopping");
    Ok(())
}
