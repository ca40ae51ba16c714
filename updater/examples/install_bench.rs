//! Install throughput and memory of the real `cairn` and `cairnd` binaries, for
//! `cargo xtask bench install`. Targets: a full install at ≥ 0.9× the throughput of
//! `dd conv=fsync`, ≤ 48 MiB peak RSS while installing, ≤ 8 MiB idle RSS for cairnd.
//!
//! A device laid out like the integration tests' (cairn-testkit's `DeviceDir`): slots
//! are plain files, the U-Boot env backend works on a directory, reboots are on request.
//! The bundle carries one 512 MiB image with only a full zstd payload. Each run writes
//! the raw image with `dd bs=1M conv=fsync,notrunc` (the baseline; `notrunc` so that,
//! like cairn on a partition, it overwrites allocated blocks in place) and then installs
//! the bundle with `cairn install --no-reboot` into slot B, alternating; the medians are
//! reported (MB = 10^6 bytes). Both read inputs the page cache already holds and write
//! to files on the same filesystem. dd only copies, while cairn also hashes payload and
//! image and decompresses: where the disk is fast, the ratio measures cairn's CPU cost.
//! Peak RSS is the install process's `ru_maxrss`, idle RSS cairnd's VmRSS after 3 s.
//!
//! Needs the release binaries next to this example: `cargo build --release -p
//! cairn-updater --bins` first (the xtask does). Everything lives in
//! target/cairn/bench-install/, which is recreated on each run.

use std::fs::{self, File, OpenOptions};
use std::io::{BufReader, Seek, SeekFrom, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use cairn_bundle::writer::BundleSpec;
use cairn_bundle::SigningKey;
use cairn_testkit::{
    bundle_spec, image_inputs, in_days, new_key, sign_bundle, slot_image_bytes, DeviceDir,
    SlotImages,
};
use cairn_updater::bootstate::{BootState, BootStateStore, UbootEnvStore};

const MB: f64 = 1e6;
const MIB: f64 = (1 << 20) as f64;

fn main() -> Result<()> {
    let started = Instant::now();
    let (mib, runs) = parse_args()?;
    let size = mib << 20;
    let release = std::env::current_exe()?
        .parent()
        .and_then(Path::parent)
        .context("example path")?
        .to_path_buf();
    let (cairn, cairnd) = (release.join("cairn"), release.join("cairnd"));
    ensure!(
        cairn.exists() && cairnd.exists(),
        "{} and cairnd missing: cargo build --release -p cairn-updater --bins",
        cairn.display()
    );
    let root = release
        .parent()
        .context("target dir")?
        .join("cairn/bench-install");
    if root.exists() {
        fs::remove_dir_all(&root).with_context(|| format!("removing {}", root.display()))?;
    }

    let t = Instant::now();
    let image = slot_image_bytes(size, 7);
    let image_sha = cairn_bundle::sha256_reader(&mut &image[..])?.0;
    let device = Device::create(&root, &image)?;
    let bundle = device.bundle(&image)?;
    drop(image);
    let bundle_len = fs::metadata(&bundle)?.len();
    println!(
        "install bench: {mib} MiB image, bundle {:.0} MiB (one full zstd payload), set up in {:.0}s; \
         {runs} runs each, alternating, medians reported",
        bundle_len as f64 / MIB,
        t.elapsed().as_secs_f64()
    );

    let (mut dd, mut install) = (Vec::new(), Vec::new());
    for run in 1..=runs {
        let d = device.dd()?;
        device.reset(run)?;
        let own = vm_rss_mib("self")?;
        let c = device.install(&cairn, &bundle, run)?;
        let sha = hash_file(&device.slot_b())?;
        ensure!(
            sha == image_sha,
            "slot B differs from the image after install {run}: {sha} != {image_sha}"
        );
        println!(
            "  run {run}: dd {:.0} MB/s ({:.2}s, {:.2}s CPU); cairn install {:.0} MB/s ({:.2}s, \
             {:.2}s CPU), slot B verified, peak RSS {:.1} MiB (floor: this bench's {own:.1} MiB)",
            d.mb_per_s(size),
            d.secs,
            d.cpu_secs,
            c.mb_per_s(size),
            c.secs,
            c.cpu_secs,
            c.peak_mib
        );
        dd.push(d);
        install.push(c);
    }
    device.reset(0)?;
    let idle = device.idle_rss(&cairnd)?;

    let dd_mbs = median(dd.iter().map(|m| m.mb_per_s(size)));
    let cairn_mbs = median(install.iter().map(|m| m.mb_per_s(size)));
    let peak = install.iter().map(|m| m.peak_mib).fold(0.0, f64::max);
    let ratio = cairn_mbs / dd_mbs;
    let row = |what: &str, value: String, target: &str, ok: Option<bool>| {
        let verdict = match ok {
            Some(true) => "ok",
            Some(false) => "MISSED",
            None => "",
        };
        println!("  {what:<36} {value:>9}  {target:<8} {verdict}");
    };
    println!();
    row("", "measured".into(), "target", None);
    row(
        "dd bs=1M conv=fsync (MB/s, median)",
        format!("{dd_mbs:.0}"),
        "",
        None,
    );
    row(
        "cairn install (MB/s, median)",
        format!("{cairn_mbs:.0}"),
        "",
        None,
    );
    row(
        "ratio cairn / dd",
        format!("{ratio:.2}"),
        ">= 0.90",
        Some(ratio >= 0.9),
    );
    row(
        "cairn install peak RSS (MiB, max)",
        format!("{peak:.1}"),
        "<= 48",
        Some(peak <= 48.0),
    );
    row(
        "cairnd idle RSS (MiB)",
        format!("{idle:.1}"),
        "<= 8",
        Some(idle <= 8.0),
    );
    println!(
        "  dd copies the raw image; cairn reads the bundle, hashes the payload, decompresses it, \
         hashes the image and writes it. {:.0}s in all.",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// One measured child process.
struct Measured {
    secs: f64,
    /// User + system time.
    cpu_secs: f64,
    peak_mib: f64,
}

impl Measured {
    fn mb_per_s(&self, bytes: usize) -> f64 {
        bytes as f64 / MB / self.secs
    }
}

/// Runs `cmd` to completion; fails with `log`'s contents when it fails.
fn measure(cmd: &mut Command, log: &Path) -> Result<Measured> {
    let log_file = File::create(log)?;
    cmd.stdin(Stdio::null())
        .stdout(log_file.try_clone()?)
        .stderr(log_file);
    // Any pre_exec hook makes std fork instead of vfork/posix_spawn. A vfork child
    // shares this process's memory until exec, and exec records that memory's high
    // water mark (this bench held the whole image) as the child's ru_maxrss. A forked
    // child starts from this process's *current* RSS, a few MiB, printed per run.
    // SAFETY: the hook does nothing, so it is async-signal-safe.
    unsafe { cmd.pre_exec(|| Ok(())) };
    let t = Instant::now();
    let child = cmd.spawn().with_context(|| format!("starting {cmd:?}"))?;
    let (status, usage) = wait4(child.id())?;
    let secs = t.elapsed().as_secs_f64();
    if !status.success() {
        bail!(
            "{cmd:?} failed ({status}):\n{}",
            fs::read_to_string(log).unwrap_or_default()
        );
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Ok(Measured {
        secs,
        cpu_secs: tv(usage.ru_utime) + tv(usage.ru_stime),
        peak_mib: usage.ru_maxrss as f64 / 1024.0,
    })
}

fn parse_args() -> Result<(usize, usize)> {
    let (mut mib, mut runs) = (512, 3);
    let mut args = std::env::args().skip(1).filter(|a| a != "--");
    while let Some(arg) = args.next() {
        let mut value = || -> Result<usize> {
            let v = args
                .next()
                .with_context(|| format!("{arg} needs a value"))?;
            v.parse().with_context(|| format!("{arg} {v}"))
        };
        match arg.as_str() {
            "--mib" => mib = value()?,
            "--runs" => runs = value()?.max(1),
            _ => bail!("usage: install_bench [--mib 512] [--runs 3]"),
        }
    }
    Ok((mib, runs))
}

fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.collect();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn hash_file(path: &Path) -> Result<String> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    Ok(cairn_bundle::sha256_reader(&mut BufReader::with_capacity(1 << 20, file))?.0)
}

/// A device in `dir`, booted from slot A, with only a `rootfs` image per slot.
struct Device {
    layout: DeviceDir,
    key: SigningKey,
}

impl Device {
    fn create(dir: &Path, image: &[u8]) -> Result<Device> {
        let key = new_key();
        let d = Device {
            layout: DeviceDir::create(dir, &key, "1.0.0"),
            key,
        };
        fs::write(d.path("build/rootfs.img"), image)?;
        // Slots and the dd target hold allocated, different bytes, like partitions: both
        // measurements overwrite in place.
        let other = slot_image_bytes(image.len(), 8);
        for name in ["rootfs-a", "rootfs-b", "dd-target"] {
            let mut f = File::create(d.path(&format!("dev/{name}")))?;
            f.write_all(&other)?;
            f.sync_all()?;
        }
        fs::write(
            d.layout.config(),
            d.layout.system_toml("cairn-bench", SlotImages::Rootfs),
        )?;
        d.layout.write_cmdline("A", false);
        d.reset(0)?;
        Ok(d)
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.layout.path(rel)
    }

    fn slot_b(&self) -> PathBuf {
        self.path("dev/rootfs-b")
    }

    fn bundle(&self, image: &[u8]) -> Result<PathBuf> {
        let spec = BundleSpec {
            expires: in_days(10),
            images: image_inputs(&[("rootfs", &self.path("build/rootfs.img"))]),
            ..bundle_spec("cairn-bench", "2.0.0")
        };
        let out = self.path("build/bench.cairn");
        let manifest = sign_bundle(&spec, &[&self.key], &out);
        ensure!(
            manifest.images[0].size == image.len() as u64 && manifest.images[0].deltas.is_empty()
        );
        Ok(out)
    }

    /// A freshly flashed device running slot A again: no cairnd state, factory boot state,
    /// a new boot id; slot B's bytes are marked so the next install must rewrite them.
    fn reset(&self, run: usize) -> Result<()> {
        let data = self.path("data/cairn");
        if data.exists() {
            fs::remove_dir_all(&data)?;
        }
        UbootEnvStore::new(self.path("boot")).store(&BootState::factory())?;
        self.layout.write_boot_id(run);
        let mut slot = OpenOptions::new().write(true).open(self.slot_b())?;
        let len = slot.seek(SeekFrom::End(0))?;
        let junk = slot_image_bytes(1 << 20, 100 + run as u8);
        for at in (0..len.saturating_sub(junk.len() as u64)).step_by(64 << 20) {
            slot.seek(SeekFrom::Start(at))?;
            slot.write_all(&junk)?;
        }
        slot.sync_all()?;
        Ok(())
    }

    /// `dd` copying the raw image onto the dd target and fsyncing it.
    fn dd(&self) -> Result<Measured> {
        measure(
            Command::new("dd")
                .arg(format!("if={}", self.path("build/rootfs.img").display()))
                .arg(format!("of={}", self.path("dev/dd-target").display()))
                .args(["bs=1M", "conv=fsync,notrunc", "status=none"]),
            &self.path("dd.log"),
        )
    }

    /// `cairn install --no-reboot` of `bundle` into slot B.
    fn install(&self, cairn: &Path, bundle: &Path, run: usize) -> Result<Measured> {
        measure(
            Command::new(cairn)
                .arg("--config")
                .arg(self.layout.config())
                .arg("install")
                .arg(bundle)
                .arg("--no-reboot"),
            &self.path(&format!("install-{run}.log")),
        )
    }

    /// VmRSS in MiB of `cairnd` (the daemon loop, no server configured) after 3 s.
    fn idle_rss(&self, cairnd: &Path) -> Result<f64> {
        let log = self.path("cairnd.log");
        let log_file = File::create(&log)?;
        let mut child = Command::new(cairnd)
            .arg("--config")
            .arg(self.layout.config())
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .spawn()
            .context("starting cairnd")?;
        std::thread::sleep(Duration::from_secs(3));
        let rss = vm_rss_mib(&child.id().to_string());
        let exited = child.try_wait()?;
        let _ = child.kill();
        let _ = child.wait();
        if let Some(exit) = exited {
            bail!(
                "cairnd exited early ({exit}):\n{}",
                fs::read_to_string(&log).unwrap_or_default()
            );
        }
        rss
    }
}

/// VmRSS of a process (`self` or a pid) in MiB.
fn vm_rss_mib(pid: &str) -> Result<f64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS in /proc/PID/status")?;
    Ok(kib / 1024.0)
}

/// Waits for child `pid` and returns its exit status and resource usage (`ru_maxrss`
/// is the peak RSS in KiB).
fn wait4(pid: u32) -> Result<(ExitStatus, libc::rusage)> {
    let mut status = 0;
    // SAFETY: rusage is plain data, all-zero is a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: valid pointers to locals; `pid` is our own child, not yet reaped (its
        // `Child` handle is never waited on).
        let r = unsafe { libc::wait4(pid as libc::pid_t, &mut status, 0, &mut usage) };
        if r == pid as libc::pid_t {
            return Ok((ExitStatus::from_raw(status), usage));
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e).context("wait4");
        }
    }
}
