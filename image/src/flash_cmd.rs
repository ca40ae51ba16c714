//! `cairn-image flash IMAGE TARGET`: the CLI around [`cairn_image::flash`], with a
//! progress line per second (bytes, rate, ETA) for each pass.

use std::io::Read;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use cairn_image::bmap::{Bmap, MAX_BMAP_BYTES};
use cairn_image::flash::{self, Pass};
use cairn_image::os::progress::mib;

#[derive(clap::Args)]
pub struct FlashArgs {
    /// The disk image (disk.img from `cairn-image disk` or `build`).
    image: PathBuf,
    /// A block device (/dev/sdX, /dev/mmcblkN) or a file.
    target: PathBuf,
    /// The block map; default: IMAGE.bmap. One made by `bmaptool create` works too.
    #[arg(long)]
    bmap: Option<PathBuf>,
}

pub fn flash(args: FlashArgs) -> Result<()> {
    let bmap_path = args
        .bmap
        .unwrap_or_else(|| PathBuf::from(format!("{}.bmap", args.image.display())));
    let mut text = String::new();
    std::fs::File::open(&bmap_path)
        .with_context(|| format!("opening the bmap {}", bmap_path.display()))?
        .take(MAX_BMAP_BYTES + 1)
        .read_to_string(&mut text)
        .with_context(|| format!("reading the bmap {}", bmap_path.display()))?;
    if text.len() as u64 > MAX_BMAP_BYTES {
        bail!(
            "{} is larger than {MAX_BMAP_BYTES} bytes: not a bmap",
            bmap_path.display()
        );
    }
    let bmap = Bmap::parse(&text).with_context(|| format!("{}", bmap_path.display()))?;
    eprintln!(
        "==> flash {} -> {}: {} mapped of {}",
        args.image.display(),
        args.target.display(),
        mib(bmap.mapped_bytes()),
        mib(bmap.image_size)
    );
    let mut meter = Meter::default();
    let report = flash::flash(
        &args.image,
        &bmap,
        &args.target,
        &mut |pass, done, total| meter.update(pass, done, total),
    )?;
    let rate = |d: Duration| mib((report.mapped_bytes as f64 / d.as_secs_f64().max(1e-3)) as u64);
    eprintln!(
        "==> flashed {} ({} of the {} image): checked in {:.1}s, written in {:.1}s ({}/s), \
         read back and verified in {:.1}s",
        args.target.display(),
        mib(report.mapped_bytes),
        mib(report.image_size),
        report.check.as_secs_f64(),
        report.write.as_secs_f64(),
        rate(report.write),
        report.verify.as_secs_f64(),
    );
    Ok(())
}

/// Prints at most one line per second per pass, and the end of every pass.
#[derive(Default)]
struct Meter {
    pass: Option<(Pass, Instant)>,
    printed: Option<Instant>,
}

impl Meter {
    fn update(&mut self, pass: Pass, done: u64, total: u64) {
        let now = Instant::now();
        let started = match self.pass {
            Some((p, started)) if p == pass => started,
            _ => {
                self.pass = Some((pass, now));
                self.printed = Some(now);
                now
            }
        };
        let finished = done >= total;
        if !finished
            && self
                .printed
                .is_some_and(|t| now - t < Duration::from_secs(1))
        {
            return;
        }
        self.printed = Some(now);
        let secs = (now - started).as_secs_f64().max(1e-3);
        let rate = done as f64 / secs;
        let eta = if rate > 0.0 {
            (total - done) as f64 / rate
        } else {
            0.0
        };
        eprintln!(
            "    {:<11} {} / {} ({:.0}%), {}/s, ETA {:.0} s",
            pass.name(),
            mib(done),
            mib(total),
            100.0 * done as f64 / total.max(1) as f64,
            mib(rate as u64),
            eta
        );
    }
}
