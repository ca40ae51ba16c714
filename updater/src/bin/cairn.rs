//! `cairn`: the operator's command line on the device.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::{bail, Context as _, Result};
use cairn_updater::containers::{self, Preload};
use cairn_updater::context::Context;
use cairn_updater::install::{self, InstallRequest, Progress};
use cairn_updater::reboot_hooks::{self, Backoff, Drain};
use cairn_updater::trial::{self, Verdict};
use cairn_updater::{config, health, logpipe, provision, reboot, status};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cairn",
    version,
    about = "Inspect and control Cairn A/B updates on this device"
)]
struct Cli {
    /// System configuration.
    #[arg(long, global = true, default_value = config::DEFAULT_PATH)]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Slots, versions, boot state, pending update, last error.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Install a bundle from a file or an http(s) URL into the inactive slot.
    Install {
        location: String,
        /// Install even a version whose trial failed before.
        #[arg(long)]
        force: bool,
        /// Do not reboot afterwards, whatever the reboot policy says.
        #[arg(long)]
        no_reboot: bool,
    },
    /// Commit the running trial now (or refresh the committed slot's tries).
    MarkGood,
    /// Reject the running trial (or a pending update) and reboot into the committed slot.
    MarkBad,
    /// Go back to the other slot: reject a pending/trial update, or arm the previous version.
    Rollback,
    /// Run this image's health checks once and print the results.
    CheckHealth,
    /// The update history.
    History {
        #[arg(long)]
        json: bool,
    },
    /// Reboot now (for the on-request reboot policy).
    Reboot,
    /// Print this device's provisioning record (identity, TPM EK, hardware id) as JSON, the
    /// form `cairn-server device import` takes; with --out, also write DIR/<id>.json.
    ProvisionRecord {
        #[arg(long)]
        out: Option<PathBuf>,
        #[arg(long = "tag")]
        tags: Vec<String>,
    },
    /// Append stdin to FILE, rotating it at --max-bytes and keeping --keep old copies
    /// (the image's services log through this; a full disk drops output, never blocks).
    LogTo {
        file: PathBuf,
        #[arg(long, default_value_t = 4 << 20)]
        max_bytes: u64,
        #[arg(long, default_value_t = 2)]
        keep: u32,
    },
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CAIRN_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    if let Command::LogTo {
        file,
        max_bytes,
        keep,
    } = &cli.command
    {
        // Needs no config: it runs for every service, cairnd's own included.
        let mut log = logpipe::RotatingLog::new(file, *max_bytes, *keep);
        let stats = logpipe::pipe(std::io::stdin().lock(), &mut log);
        if stats.dropped > 0 {
            eprintln!(
                "cairn log-to {}: dropped {} bytes",
                file.display(),
                stats.dropped
            );
        }
        return Ok(());
    }
    let mut ctx =
        Context::open(&cli.config).with_context(|| format!("loading {}", cli.config.display()))?;
    match cli.command {
        Command::Status { json } => {
            let s = status::status(&ctx);
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                print!("{}", status::render(&s));
            }
        }
        Command::Install {
            location,
            force,
            no_reboot,
        } => install_cmd(&mut ctx, location, force, no_reboot)?,
        Command::MarkGood => {
            let _lock = ctx.lock_install()?;
            report(trial::mark_good(&mut ctx)?);
        }
        Command::MarkBad => {
            let _lock = ctx.lock_install()?;
            let verdict = trial::mark_bad(&mut ctx)?;
            let rejected = matches!(verdict, Verdict::RolledBack { .. });
            report(verdict);
            if rejected && booted_on_trial(&ctx) {
                reboot::reboot(&ctx.config.reboot).map_err(anyhow::Error::msg)?;
            }
        }
        Command::Rollback => {
            let _lock = ctx.lock_install()?;
            report(trial::rollback(&mut ctx)?);
            println!("reboot to complete the rollback (cairn reboot)");
        }
        Command::CheckHealth => check_health(&ctx)?,
        Command::History { json } => history(&ctx, json)?,
        Command::Reboot => {
            drain(&ctx)?;
            reboot::reboot(&ctx.config.reboot).map_err(anyhow::Error::msg)?
        }
        Command::LogTo { .. } => unreachable!("handled before loading the config"),
        Command::ProvisionRecord { out, tags } => {
            let record = provision::record(&ctx, &tags)?;
            if let Some(dir) = out {
                provision::write(&record, &dir)?;
            }
            println!("{}", serde_json::to_string_pretty(&record)?);
        }
    }
    Ok(())
}

fn booted_on_trial(ctx: &Context) -> bool {
    let boot = ctx.boot_state().ok();
    ctx.boot_facts()
        .is_ok_and(|f| boot.is_some_and(|b| b.committed != f.slot))
}

fn install_cmd(ctx: &mut Context, location: String, force: bool, no_reboot: bool) -> Result<()> {
    let _lock = ctx.lock_install()?;
    let cancel = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, cancel.clone())?;
    }
    let request = InstallRequest {
        location,
        force,
        deployment: None,
    };
    let installed = install::install(ctx, &request, cancel, &mut print_progress)?;
    eprintln!();
    println!(
        "installed {} into slot {}; it boots once on trial at the next reboot",
        installed.version, installed.slot
    );
    if !no_reboot && reboot::due(&ctx.config.reboot, time::OffsetDateTime::now_utc()) {
        drain(ctx)?;
        reboot::reboot(&ctx.config.reboot).map_err(anyhow::Error::msg)?;
    }
    Ok(())
}

/// Before a reboot into an installed update: its container images into containerd, then
/// the node's drain hook, at once whatever cairnd's backoff; a failure is the command's
/// error and no reboot. (An operator rebooting by hand asks no server for a lease.)
fn drain(ctx: &Context) -> Result<()> {
    match containers::preload(ctx, time::OffsetDateTime::now_utc(), false)? {
        Preload::Done => {}
        Preload::Waiting => bail!("waiting for the container preload's next try"),
        Preload::Failed(e) => bail!("not rebooting, the container preload failed: {e}"),
    }
    match reboot_hooks::drain(ctx, time::OffsetDateTime::now_utc(), Backoff::Ignore)? {
        Drain::Done => Ok(()),
        Drain::Waiting => bail!("waiting for the drain hook's next try"),
        Drain::Failed(e) => bail!("not rebooting, the drain failed: {e}"),
    }
}

fn print_progress(p: Progress) {
    let mut err = std::io::stderr().lock();
    let _ = match p {
        Progress::Verified { version, images } => {
            writeln!(err, "verified bundle {version} ({images} images)")
        }
        Progress::Image { name, method, size } => writeln!(
            err,
            "{name}: writing {size} bytes from the {method} payload"
        ),
        Progress::Bytes { name, done, total } => {
            write!(
                err,
                "\r{name}: {:>5.1}% ({} / {} MiB)",
                100.0 * done as f64 / total.max(1) as f64,
                done >> 20,
                total >> 20
            )
        }
        Progress::Reused { name, outcome: o } => writeln!(
            err,
            "\r{name}: {} blocks already in place, {} copied from local slots, {} zero; \
             fetched {} chunks ({} blocks, {} bytes)",
            o.kept, o.copied, o.zeros, o.fetched_chunks, o.fetched_blocks, o.fetched_bytes
        ),
        Progress::ImageDone { name } => writeln!(err, "\r{name}: written and verified{:30}", ""),
        Progress::Armed { slot } => writeln!(err, "slot {slot} armed for one trial boot"),
    };
}

fn report(verdict: Verdict) {
    match verdict {
        Verdict::Idle => println!("nothing to decide"),
        Verdict::Committed { slot, version } => println!("committed {version} in slot {slot}"),
        Verdict::RolledBack { slot, reason } => println!("slot {slot} rejected: {reason}"),
    }
}

fn check_health(ctx: &Context) -> Result<()> {
    let checks = health::load_checks(&ctx.config.health_dir)?;
    if checks.is_empty() {
        println!("no health checks in {}", ctx.config.health_dir.display());
    }
    let mut failed = 0;
    for check in &checks {
        match health::run_once(&check.spec) {
            Ok(()) => println!("ok    {}", check.name),
            Err(output) => {
                failed += 1;
                println!("FAIL  {}: {output}", check.name);
            }
        }
    }
    if failed > 0 {
        bail!("{failed} of {} health checks failed", checks.len());
    }
    Ok(())
}

fn history(ctx: &Context, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(&ctx.state.history)?);
        return Ok(());
    }
    for h in &ctx.state.history {
        let slot = h.slot.map_or("-".into(), |s| s.to_string());
        println!(
            "{}  {:<18} slot {slot}  {}  {}",
            h.at,
            h.event,
            h.version.as_deref().unwrap_or("-"),
            h.detail.as_deref().unwrap_or("")
        );
    }
    Ok(())
}
