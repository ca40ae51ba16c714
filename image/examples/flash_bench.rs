//! `cargo xtask bench flash`: `cairn-image flash` against `dd` and `bmaptool copy`,
//! writing the same disk image to the same loop device in the same run. Prints seconds
//! and ratios against dd; never fails on a threshold.
//!
//! Usage: flash_bench DISK.img (its .bmap beside it); needs root (losetup).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};

fn main() -> Result<()> {
    let image = PathBuf::from(
        std::env::args()
            .nth(1)
            .context("usage: flash_bench DISK.img")?,
    );
    let bmap = PathBuf::from(format!("{}.bmap", image.display()));
    let size = std::fs::metadata(&image)
        .with_context(|| format!("{}", image.display()))?
        .len();
    let cairn_image = std::env::current_exe()?
        .parent()
        .and_then(Path::parent)
        .map(|dir| dir.join("cairn-image"))
        .context("no target dir")?;
    let dir = tempfile::tempdir_in(image.parent().unwrap_or(Path::new(".")))?;
    let backing = dir.path().join("medium");
    std::fs::File::create(&backing)?.set_len(size + (64 << 20))?;
    let device = output("losetup", &["-f", "--show", path(&backing)])?;
    let result = bench(&image, &bmap, &device, &cairn_image);
    let _ = Command::new("losetup").args(["-d", &device]).status();
    result
}

fn bench(image: &Path, bmap: &Path, device: &str, cairn_image: &Path) -> Result<()> {
    // Warm the page cache with the image so every tool reads it from memory.
    std::io::copy(&mut std::fs::File::open(image)?, &mut std::io::sink())?;
    let of = format!("of={device}");
    let iff = format!("if={}", image.display());
    let runs: [(&str, Vec<&str>); 3] = [
        (
            "dd bs=4M conv=fsync",
            vec!["dd", &iff, &of, "bs=4M", "conv=fsync", "status=none"],
        ),
        (
            "bmaptool copy",
            vec![
                "bmaptool",
                "-q",
                "copy",
                "--bmap",
                path(bmap),
                path(image),
                device,
            ],
        ),
        (
            "cairn-image flash (incl. read-back)",
            vec![path(cairn_image), "flash", path(image), device],
        ),
    ];
    let mut baseline = None;
    println!(
        "flash bench: {} ({:.1} MiB image) to a loop device",
        image.display(),
        std::fs::metadata(image)?.len() as f64 / 1048576.0
    );
    println!("{:<38} {:>9} {:>9}", "tool", "seconds", "vs dd");
    for (name, argv) in runs {
        // Same starting point for each tool: nothing of the target cached.
        let _ = Command::new("sync").status();
        let started = Instant::now();
        let out = Command::new(argv[0]).args(&argv[1..]).output()?;
        let secs = started.elapsed().as_secs_f64();
        if !out.status.success() {
            bail!("{name} failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let base = *baseline.get_or_insert(secs);
        println!("{name:<38} {secs:>9.2} {:>8.2}x", secs / base);
    }
    Ok(())
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap_or_default()
}

fn output(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program).args(args).output()?;
    if !out.status.success() {
        bail!("{program}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}
