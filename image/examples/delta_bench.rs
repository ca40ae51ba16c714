//! Delta sizes, times and memory of Cairn's `block-bsdiff` and `zstd-patch` against bsdiff, xdelta3 and
//! `zstd --patch-from`, for `cargo xtask bench delta`. A measurement, never a test: it
//! prints numbers and ratios against bsdiff taken in the same run, and fails only when a
//! tool breaks (a delta that does not rebuild its target is an error).
//!
//! Pairs of real erofs slot images:
//! - `profile`: the QEMU board's v1 → v2 slot images (`image/profiles/qemu-arm64.toml` and
//!   `qemu-arm64-v2.toml`: kernel 6.1.0-55 → 56 plus the mirror's newer packages, lz4hc,
//!   dm-verity tree appended), built by the image pipeline or reused from
//!   `target/cairn/<profile>/rootfs.img` when present (`--rebuild` builds them again).
//! - `debian` (with `--large`): two Debian bookworm arm64 trees one monthly security
//!   update apart, ~360 MB each: v1 from bookworm with the 6.1.0-55 cloud kernel, v2 with
//!   bookworm-updates and -security and the 6.1.0-56 kernel (so /lib/modules is renamed
//!   and openssl, ca-certificates, liblzma, pcre2, pam and libzstd change), packed as
//!   uncompressed and as lz4hc erofs. Cached under `target/cairn/bench-delta/`.
//! - `debian v0 -> v2` (with `--large`), chunked image only: v0 is v1 with the 6.1.0-54
//!   kernel, so a device holding v0 is two kernel updates behind v2 and has no delta.
//!
//! A target with a `verity.json` beside it (the profile's) has its hash tree described
//! to `block-bsdiff` as `bundle create` does from the manifest.
//!
//! Each pair's header gives the full payload's size and how long it takes to decode and
//! sync, the baseline for the apply column (a delta install should never be slower than
//! a full one). Each pair also gets the chunked image's numbers (what it adds to a
//! bundle, and what a device holding only the source fetches without a delta; see
//! `bundle/FORMAT.md`).
//!
//! Every tool runs as a child process under `/usr/bin/time`: wall time and peak RSS
//! (`ru_maxrss`) to make and to apply, each delta applied and compared with its target.
//! Cairn's children run this example's `make`/`apply` modes, which call the bundle
//! crate's codec as `cairn-image bundle create` and cairnd do; the apply mode also samples
//! its anonymous memory (`RssAnon`, every 2 ms): the heap, without the mapped source.

use std::fs::{self, File};
use std::io::{BufReader, BufWriter, Read};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use cairn_bundle::chunked::{Filter, Layout};
use cairn_bundle::codec::{block_bsdiff, full, zstd_patch};
use cairn_image::os::pipeline::Build;

const USAGE: &str = "usage: delta_bench [--large] [--levels 12,19] [--skip TOOL,...] [--rebuild]
       delta_bench make METHOD SOURCE TARGET LEVEL OUT | apply METHOD SOURCE DELTA SIZE OUT";

/// Packages of the large pair besides the kernel (apt adds their dependencies).
const DEBIAN_PACKAGES: &str = "busybox-static,containerd,runc,python3,openssl,ca-certificates,\
libpam-modules,liblzma5,libzstd1,libpcre2-8-0,iproute2,curl,perl";
const MIRROR: &str = "http://deb.debian.org/debian";
const SECURITY: &str = "http://deb.debian.org/debian-security";
/// What an image does not ship (as the profile trims it).
const TRIM: &[&str] = &[
    "usr/share/doc",
    "usr/share/man",
    "usr/share/locale",
    "usr/share/info",
    "var/cache/apt",
    "var/lib/apt/lists",
];
const UUID: &str = "c41a7e11-0000-4000-8000-000000000001";

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("make") if args.len() == 6 => make(&args[1..]),
        Some("apply") if args.len() == 6 => apply(&args[1..]),
        _ => bench(&args),
    }
}

struct Options {
    large: bool,
    levels: Vec<i32>,
    skip: Vec<String>,
    rebuild: bool,
}

fn options(args: &[String]) -> Result<Options> {
    let mut o = Options {
        large: false,
        levels: vec![12, 19],
        skip: Vec::new(),
        rebuild: false,
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--large" => o.large = true,
            "--rebuild" => o.rebuild = true,
            "--levels" => {
                let list = it.next().context(USAGE)?;
                o.levels = list
                    .split(',')
                    .map(|l| l.parse().with_context(|| format!("level '{l}'")))
                    .collect::<Result<_>>()?;
            }
            "--skip" => {
                o.skip = it
                    .next()
                    .context(USAGE)?
                    .split(',')
                    .map(String::from)
                    .collect()
            }
            "--" => {}
            other => bail!("unknown argument '{other}'\n{USAGE}"),
        }
    }
    Ok(o)
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("image/ has a parent")
        .to_path_buf()
}

fn bench(args: &[String]) -> Result<()> {
    let o = options(args)?;
    let mut pairs = vec![profile_pair(o.rebuild)?];
    let mut two_apart = Vec::new();
    if o.large {
        let debian = debian_pairs()?;
        pairs.extend(debian.one_apart);
        two_apart = debian.two_apart;
    }
    let work = workspace().join("target/cairn/bench-delta/work");
    fs::create_dir_all(&work)?;
    let mut tables = Vec::new();
    for pair in &pairs {
        tables.push(run_pair(pair, &o, &work)?);
    }
    for pair in &two_apart {
        tables.push(adaptive_only(pair, &work)?);
    }
    println!("\n==== delta bench: all pairs (ratios against bsdiff in the same run) ====");
    for table in tables {
        println!("{table}");
    }
    Ok(())
}

/// Two slot images and what to call them.
struct Pair {
    name: String,
    source: PathBuf,
    target: PathBuf,
    /// Earlier releases of the target a grouped chunked image is grouped by, named.
    history: Vec<(String, PathBuf)>,
}

fn profile_pair(rebuild: bool) -> Result<Pair> {
    let mut slots = Vec::new();
    for profile in ["qemu-arm64.toml", "qemu-arm64-v2.toml"] {
        let build = Build::new(&workspace().join("image/profiles").join(profile))?;
        let slot = build.layout.slot_image();
        if rebuild || !slot.exists() {
            eprintln!("==> building the slot image of {profile}");
            build.rootfs(None)?;
            build.slot()?;
        } else {
            eprintln!("==> reusing {}", slot.display());
        }
        slots.push(slot);
    }
    let target = slots.pop().expect("two");
    let source = slots.pop().expect("two");
    Ok(Pair {
        name: "profile qemu-arm64 v1 -> v2 (lz4hc erofs + verity)".into(),
        history: vec![("v1".into(), source.clone())],
        target,
        source,
    })
}

/// The large pairs, each as uncompressed and as lz4hc erofs.
struct DebianPairs {
    /// v1 -> v2: every tool side by side.
    one_apart: Vec<Pair>,
    /// v0 -> v2: what a device two kernel updates behind fetches with no delta made.
    two_apart: Vec<Pair>,
}

fn debian_pairs() -> Result<DebianPairs> {
    let dir = workspace().join("target/cairn/bench-delta");
    let mut pairs = DebianPairs {
        one_apart: Vec::new(),
        two_apart: Vec::new(),
    };
    for v in ["v0", "v1", "v2"] {
        debian_tree(&dir, v)?;
    }
    for (label, lz4hc) in [("uncompressed", false), ("lz4hc", true)] {
        let image = |v: &str| -> Result<PathBuf> {
            let image = dir.join(format!("debian-{v}-{label}.erofs"));
            if !image.exists() {
                let partial = image.with_extension("partial");
                let mut mkfs = Command::new("mkfs.erofs");
                mkfs.args(["-T0", &format!("-U{UUID}"), "--all-root", "--quiet"]);
                if lz4hc {
                    mkfs.arg("-zlz4hc");
                }
                run(mkfs.arg(&partial).arg(dir.join(v)))?;
                fs::rename(&partial, &image)?;
            }
            Ok(image)
        };
        // v2's bundle grouped by the two releases before it, as a release engineer
        // with devices on both would make it.
        let history = vec![
            ("v0".to_string(), image("v0")?),
            ("v1".to_string(), image("v1")?),
        ];
        pairs.one_apart.push(Pair {
            name: format!("debian bookworm arm64, one security update ({label} erofs)"),
            source: image("v1")?,
            target: image("v2")?,
            history: history.clone(),
        });
        pairs.two_apart.push(Pair {
            name: format!(
                "debian bookworm arm64, two kernel updates apart, adaptive only ({label} erofs)"
            ),
            source: image("v0")?,
            target: image("v2")?,
            history,
        });
    }
    Ok(pairs)
}

/// `dir/v0`, `dir/v1` or `dir/v2`, unpacked by mmdebstrap once (a `.complete` marker
/// says it finished). v0 and v1 prefer bookworm's own versions (`APT::Default-Release`)
/// with the 6.1.0-54 (upstream 6.1.190) and 6.1.0-55 (6.1.192) kernels, both only in
/// bookworm-security; v2 takes every update with 6.1.0-56. The mirror keeps one version
/// of each other package per suite, so v0 and v1 differ only in the kernel: v0 -> v2 is
/// two kernel updates apart, one for the rest.
fn debian_tree(dir: &Path, version: &str) -> Result<()> {
    let tree = dir.join(version);
    let marker = dir.join(format!("{version}.complete"));
    if marker.exists() {
        return Ok(());
    }
    if tree.exists() {
        fs::remove_dir_all(&tree)?;
    }
    fs::create_dir_all(dir)?;
    eprintln!("==> unpacking the Debian {version} tree (mmdebstrap, a few minutes)");
    let mut cmd = Command::new("mmdebstrap");
    cmd.args(["--variant=extract", "--architectures=arm64", "--quiet"]);
    if version != "v2" {
        let abi = if version == "v0" { 54 } else { 55 };
        cmd.arg(format!(
            "--include={DEBIAN_PACKAGES},linux-image-6.1.0-{abi}-cloud-arm64"
        ))
        .arg("--aptopt=APT::Default-Release \"bookworm\"")
        .arg("bookworm")
        .arg(&tree)
        .arg(format!("deb {MIRROR} bookworm main"))
        .arg(format!("deb {SECURITY} bookworm-security main"));
    } else {
        cmd.arg(format!(
            "--include={DEBIAN_PACKAGES},linux-image-6.1.0-56-cloud-arm64"
        ))
        .arg("bookworm")
        .arg(&tree)
        .arg(format!("deb {MIRROR} bookworm main"))
        .arg(format!("deb {MIRROR} bookworm-updates main"))
        .arg(format!("deb {SECURITY} bookworm-security main"));
    }
    run(&mut cmd)?;
    for path in TRIM {
        let p = tree.join(path);
        if p.exists() {
            fs::remove_dir_all(&p)?;
        }
    }
    fs::write(marker, "")?;
    Ok(())
}

/// A delta tool: how to make `delta` from source and target, and apply it.
struct Tool {
    name: String,
    make: Vec<String>,
    apply: Vec<String>,
}

/// One tool's result on one pair.
struct Row {
    tool: String,
    delta: Option<u64>,
    make: Measured,
    apply: Measured,
    /// Cairn only: sampled peak of anonymous memory while applying.
    apply_heap_kib: Option<u64>,
}

#[derive(Clone, Copy, Default)]
struct Measured {
    secs: f64,
    max_rss_kib: u64,
}

fn run_pair(pair: &Pair, o: &Options, work: &Path) -> Result<String> {
    let (src_len, tgt_len) = (
        fs::metadata(&pair.source)?.len(),
        fs::metadata(&pair.target)?.len(),
    );
    eprintln!("\n==> pair: {}", pair.name);
    let patch = work.join("delta");
    let out = work.join("rebuilt");
    let (full, full_decode_secs) = full_payload(&pair.target, &out)?;
    let (s, t, p, r) = (&pair.source, &pair.target, &patch, &out);
    let mut rows = Vec::new();
    let a = |x: &Path| x.display().to_string();
    let argv = |words: &[&str]| words.iter().map(|w| w.to_string()).collect::<Vec<_>>();
    let mut tools = vec![
        Tool {
            name: "bsdiff".into(),
            make: argv(&["bsdiff", &a(s), &a(t), &a(p)]),
            apply: argv(&["bspatch", &a(s), &a(r), &a(p)]),
        },
        Tool {
            name: "xdelta3 -9".into(),
            make: argv(&["xdelta3", "-9", "-e", "-f", "-s", &a(s), &a(t), &a(p)]),
            apply: argv(&["xdelta3", "-d", "-f", "-s", &a(s), &a(p), &a(r)]),
        },
        Tool {
            name: "zstd -19 --long=31 --patch-from".into(),
            make: argv(&[
                "zstd",
                "-19",
                "--long=31",
                "-q",
                "-f",
                &format!("--patch-from={}", a(s)),
                &a(t),
                "-o",
                &a(p),
            ]),
            apply: argv(&[
                "zstd",
                "-d",
                "--long=31",
                "-q",
                "-f",
                &format!("--patch-from={}", a(s)),
                &a(p),
                "-o",
                &a(r),
            ]),
        },
    ];
    let me = std::env::current_exe()?.display().to_string();
    // block-bsdiff compresses at level 19 or above whatever it is given: one row.
    let block_levels = &o.levels[..o.levels.len().min(1)];
    for (method, levels) in [
        (block_bsdiff::METHOD, block_levels),
        (zstd_patch::METHOD, &o.levels[..]),
    ] {
        for level in levels {
            tools.push(Tool {
                name: if method == block_bsdiff::METHOD {
                    format!(
                        "cairn {method} level {}",
                        level.max(&block_bsdiff::MIN_LEVEL)
                    )
                } else {
                    format!("cairn {method} level {level}")
                },
                make: argv(&[&me, "make", method, &a(s), &a(t), &level.to_string(), &a(p)]),
                apply: argv(&[
                    &me,
                    "apply",
                    method,
                    &a(s),
                    &a(p),
                    &tgt_len.to_string(),
                    &a(r),
                ]),
            });
        }
    }
    for tool in tools {
        let name = tool.name;
        let program = &tool.make[0];
        if o.skip.iter().any(|s| name.starts_with(s.as_str())) {
            eprintln!("--> {name}: skipped");
            continue;
        }
        if !program.starts_with('/') && !on_path(program) {
            eprintln!("--> {name}: {program} not installed (cargo xtask bench delta installs it)");
            continue;
        }
        eprintln!("--> {name}: making");
        let _ = fs::remove_file(&patch);
        let _ = fs::remove_file(&out);
        let (make, _) = timed(&tool.make)?;
        let delta = fs::metadata(&patch)?.len();
        eprintln!("--> {name}: {delta} bytes in {:.1} s; applying", make.secs);
        let (apply, stdout) = timed(&tool.apply)?;
        ensure!(
            same_file(&out, &pair.target)?,
            "{name}: the applied delta does not rebuild the target"
        );
        let apply_heap_kib = stdout
            .lines()
            .find_map(|l| l.strip_prefix("heap_peak_kib "))
            .and_then(|v| v.trim().parse().ok());
        rows.push(Row {
            tool: name,
            delta: Some(delta),
            make,
            apply,
            apply_heap_kib,
        });
    }
    let _ = fs::remove_file(&patch);
    let _ = fs::remove_file(&out);
    let mut report = table(pair, src_len, tgt_len, (full, full_decode_secs), &rows);
    for cut in chunk_cuts(pair) {
        report += &chunked(pair, &cut, full, base_make_secs(&rows))?;
    }
    Ok(report)
}

/// A pair only the chunked image is measured on: no delta is made for it.
fn adaptive_only(pair: &Pair, work: &Path) -> Result<String> {
    eprintln!("\n==> pair: {}", pair.name);
    let (full, _) = full_payload(&pair.target, &work.join("rebuilt"))?;
    let mut report = format!(
        "\n{}\n  full payload (zstd 12) {:.2} MB\n",
        pair.name,
        full as f64 / 1e6
    );
    for cut in chunk_cuts(pair) {
        report += &chunked(pair, &cut, full, None)?;
    }
    Ok(report)
}

fn base_make_secs(rows: &[Row]) -> Option<f64> {
    rows.iter()
        .find(|r| r.tool == "bsdiff")
        .map(|r| r.make.secs)
}

/// How a chunked image of a pair's target is cut.
enum Cut<'a> {
    Fixed(Layout),
    /// Grouped by these earlier releases (`bundle create --chunk-history`), with this
    /// filter (`None`: the one `bundle create` chooses).
    Grouped(&'a [(String, PathBuf)], Option<Filter>),
}

/// The chunked image (`bundle create --chunked`) of the target: what it adds to the
/// bundle, and what a device holding only the source fetches with no delta made for the
/// pair (index plus the frames of chunks with a block the source lacks, counted with the
/// plan cairnd uses).
fn chunked(pair: &Pair, cut: &Cut, full: u64, bsdiff_secs: Option<f64>) -> Result<String> {
    use cairn_bundle::chunked::plan::Finder;
    use cairn_bundle::chunked::{block_key, encode, encode_grouped, GROUP_LEVEL};
    let target = map(&pair.target)?;
    let started = Instant::now();
    let mut data = Vec::new();
    let (index, what) = match cut {
        Cut::Fixed(layout) => (
            encode(&target, *layout, &mut data)?,
            format!(
                "level {}, {} KiB chunks, {} KiB window{}",
                layout.level,
                layout.block_size as usize * layout.chunk_blocks as usize / 1024,
                layout.window / 1024,
                if *layout == Layout::default() {
                    ", the default without history"
                } else {
                    ""
                }
            ),
        ),
        Cut::Grouped(history, filter) => {
            let maps = history
                .iter()
                .map(|(_, p)| map(p))
                .collect::<Result<Vec<_>>>()?;
            let slices: Vec<&[u8]> = maps.iter().map(|m| &m[..]).collect();
            let names: Vec<&str> = history.iter().map(|(n, _)| n.as_str()).collect();
            (
                encode_grouped(
                    &target,
                    &slices,
                    GROUP_LEVEL,
                    *filter,
                    &mut |_| {},
                    &mut data,
                )?,
                format!(
                    "level {GROUP_LEVEL}, grouped by {}, {}{}",
                    names.join(" and "),
                    match filter {
                        None => "the filter it chooses",
                        Some(_) => "no filter",
                    },
                    match history.iter().any(|(_, p)| *p == pair.source) {
                        true => ", the default with history",
                        false => ": a device older than the history",
                    }
                ),
            )
        }
    };
    let make_secs = started.elapsed().as_secs_f64();
    let what = match index.filter() {
        Filter::Arm64 => format!("{what}; arm64 branch filter"),
        Filter::None => what,
    };
    let frames = data.len() as u64;
    let decode_secs = decode_all(&index, &data, &target)?;
    drop(data);
    let source = map(&pair.source)?;
    let mut finder = Finder::new(&index);
    let block = index.block_size as usize;
    for (i, b) in source.chunks_exact(block).enumerate() {
        finder.offer_source(0, (i * block) as u64, block_key(b));
    }
    let plan = finder.plan();
    let index_len = index.encode().len() as u64;
    let fetched = index_len + plan.fetch_bytes(&index);
    let fetched_blocks = plan.count(|a| *a == cairn_bundle::chunked::plan::Action::Fetch);
    let mb = |b: u64| b as f64 / 1e6;
    Ok(format!(
        "  cairn chunked ({what}): adds {:.2} MB to the bundle ({:.2}x full), \
         made in {make_secs:.1} s ({}), all frames decoded and checked in {decode_secs:.1} s; \
         a device holding only the source fetches {:.2} MB \
         ({:.4}x full: index {:.2} MB + {} of {} chunks, {fetched_blocks} blocks)\n",
        mb(frames + index_len),
        (frames + index_len) as f64 / full.max(1) as f64,
        bsdiff_secs.map_or("no bsdiff time".into(), |b| format!(
            "{:.3}x bsdiff's time",
            make_secs / b
        )),
        mb(fetched),
        fetched as f64 / full.max(1) as f64,
        mb(index_len),
        plan.fetch_runs().iter().map(|r| r.len()).sum::<usize>(),
        index.chunk_count(),
    ))
}

/// Seconds to decode every frame in order and check its blocks, as a device that holds
/// nothing of the image does (compare the full payload's decode time).
fn decode_all(
    index: &cairn_bundle::chunked::ChunkIndex,
    data: &[u8],
    target: &[u8],
) -> Result<f64> {
    let started = Instant::now();
    let mut at = 0;
    let mut same = true;
    cairn_bundle::chunked::decode_in_order("bench", index, data, |chunk| {
        same &= target.get(at..at + chunk.len()) == Some(chunk);
        at += chunk.len();
    })?;
    let secs = started.elapsed().as_secs_f64();
    ensure!(
        same && at == target.len(),
        "the frames decode to other bytes"
    );
    Ok(secs)
}

/// The default chunk layout, the one bundles carried before windowed frames, and the
/// pair's history grouped: as all of it, and as only what comes after the source (a
/// device older than every release the bundle was grouped by).
fn chunk_cuts(pair: &Pair) -> Vec<Cut<'_>> {
    let mut cuts = vec![
        Cut::Fixed(Layout::default()),
        Cut::Fixed(Layout::unwindowed()),
    ];
    if !pair.history.is_empty() {
        cuts.push(Cut::Grouped(&pair.history, None));
        cuts.push(Cut::Grouped(&pair.history, Some(Filter::None)));
    }
    if let Some(after) = pair.history.iter().position(|(_, p)| *p == pair.source) {
        if after + 1 < pair.history.len() {
            cuts.push(Cut::Grouped(&pair.history[after + 1..], None));
        }
    }
    cuts
}

/// The bundle's full payload for the target (zstd level 12, as `bundle create`): its
/// size, and the seconds it takes to decode into `out` and sync it, as the apply
/// column's deltas are (what a full install spends besides the download).
fn full_payload(target: &Path, out: &Path) -> Result<(u64, f64)> {
    let mut payload = Vec::new();
    full::encode(&mut BufReader::new(File::open(target)?), &mut payload, 12)?;
    let started = Instant::now();
    let mut file = BufWriter::with_capacity(1 << 20, File::create(out)?);
    full::decode(&payload[..], &mut file)?;
    file.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    let secs = started.elapsed().as_secs_f64();
    ensure!(
        fs::metadata(out)?.len() == fs::metadata(target)?.len(),
        "the full payload decodes to a different size"
    );
    fs::remove_file(out)?;
    Ok((payload.len() as u64, secs))
}

fn table(
    pair: &Pair,
    src_len: u64,
    tgt_len: u64,
    (full, full_decode_secs): (u64, f64),
    rows: &[Row],
) -> String {
    let mb = |b: u64| b as f64 / 1e6;
    let mut s = format!(
        "\n{}\n  source {:.1} MB -> target {:.1} MB; full payload (zstd 12) {:.2} MB, \
         decoded and synced in {:.1} s (compare apply s)\n",
        pair.name,
        mb(src_len),
        mb(tgt_len),
        mb(full),
        full_decode_secs
    );
    s += &format!(
        "  {:<34} {:>10} {:>8} {:>9} {:>10} {:>8} {:>10} {:>10} | {:>7} {:>7} {:>7} {:>7}\n",
        "tool",
        "delta MB",
        "of full",
        "make s",
        "make MiB",
        "apply s",
        "apply MiB",
        "heap MiB",
        "bytes",
        "time",
        "mk mem",
        "ap mem"
    );
    let base = rows.iter().find(|r| r.tool == "bsdiff");
    for r in rows {
        let delta = r.delta.unwrap_or(0);
        let ratio = |a: f64, b: f64| {
            if b > 0.0 {
                format!("{:.2}x", a / b)
            } else {
                "-".into()
            }
        };
        let (rb, rt, rm, ra) = match base {
            Some(b) => (
                ratio(delta as f64, b.delta.unwrap_or(0) as f64),
                ratio(r.make.secs, b.make.secs),
                ratio(r.make.max_rss_kib as f64, b.make.max_rss_kib as f64),
                ratio(r.apply.max_rss_kib as f64, b.apply.max_rss_kib as f64),
            ),
            None => ("-".into(), "-".into(), "-".into(), "-".into()),
        };
        s += &format!(
            "  {:<34} {:>10.3} {:>7.1}% {:>9.1} {:>10.0} {:>8.1} {:>10.0} {:>10} | {:>7} {:>7} {:>7} {:>7}\n",
            r.tool,
            mb(delta),
            100.0 * delta as f64 / full.max(1) as f64,
            r.make.secs,
            r.make.max_rss_kib as f64 / 1024.0,
            r.apply.secs,
            r.apply.max_rss_kib as f64 / 1024.0,
            r.apply_heap_kib
                .map_or("-".into(), |k| format!("{:.0}", k as f64 / 1024.0)),
            rb,
            rt,
            rm,
            ra
        );
    }
    if base.is_none() {
        s += "  (bsdiff did not run: no ratios)\n";
    }
    s += "  MB = 10^6 bytes; MiB of peak RSS (ru_maxrss) of the child process; heap = Cairn's sampled peak RssAnon while applying (without the mapped source)\n";
    s
}

/// Runs `argv` under `/usr/bin/time` and returns wall time, peak RSS and its stdout.
fn timed(argv: &[String]) -> Result<(Measured, String)> {
    let report = tempfile::NamedTempFile::new()?;
    let started = Instant::now();
    let output = Command::new("/usr/bin/time")
        .arg("-f")
        .arg("%M")
        .arg("-o")
        .arg(report.path())
        .args(argv)
        .output()
        .with_context(|| format!("running {argv:?} under /usr/bin/time (Debian package time)"))?;
    let secs = started.elapsed().as_secs_f64();
    ensure!(
        output.status.success(),
        "{argv:?} failed: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let text = fs::read_to_string(report.path())?;
    let max_rss_kib = text
        .lines()
        .rev()
        .find_map(|l| l.trim().parse().ok())
        .with_context(|| format!("no peak RSS from /usr/bin/time: {text}"))?;
    Ok((
        Measured { secs, max_rss_kib },
        String::from_utf8_lossy(&output.stdout).into_owned(),
    ))
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

fn same_file(a: &Path, b: &Path) -> Result<bool> {
    let (mut a, mut b) = (
        BufReader::new(File::open(a)?),
        BufReader::new(File::open(b)?),
    );
    let (mut x, mut y) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let n = read_full(&mut a, &mut x)?;
        let m = read_full(&mut b, &mut y)?;
        if n != m || x[..n] != y[..m] {
            return Ok(false);
        }
        if n == 0 {
            return Ok(true);
        }
    }
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    ensure!(status.success(), "{cmd:?} failed: {status}");
    Ok(())
}

fn map(path: &Path) -> Result<memmap2::Mmap> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: the bench's own files, not modified while mapped.
    Ok(unsafe { memmap2::Mmap::map(&file)? })
}

/// `make METHOD SOURCE TARGET LEVEL OUT`: what `bundle create` does for one delta.
fn make(args: &[String]) -> Result<()> {
    let (source, target) = (map(Path::new(&args[1]))?, map(Path::new(&args[2]))?);
    let level: i32 = args[3].parse()?;
    let mut out = BufWriter::with_capacity(1 << 20, File::create(&args[4])?);
    match args[0].as_str() {
        block_bsdiff::METHOD => {
            // As `bundle create` does with the manifest's `verity` entry.
            let verity = Path::new(&args[2]).with_file_name("verity.json");
            let verity: Option<cairn_bundle::manifest::Verity> = match fs::read(&verity) {
                Ok(bytes) => Some(serde_json::from_slice(&bytes)?),
                Err(_) => None,
            };
            let salt = verity.as_ref().map(|v| hex::decode(&v.salt)).transpose()?;
            let tree =
                verity
                    .as_ref()
                    .zip(salt.as_deref())
                    .map(|(v, salt)| block_bsdiff::HashTree {
                        data_size: v.data_size,
                        salt,
                    });
            block_bsdiff::encode(&source, &target, level, tree, &mut out)?
        }
        zstd_patch::METHOD => {
            zstd_patch::encode(&source, &target, level, zstd_patch::DEFAULT_CHUNK, &mut out)?
        }
        other => bail!("unknown method '{other}'"),
    }
    out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    Ok(())
}

/// `apply METHOD SOURCE DELTA SIZE OUT`: what a device does with one delta (without the
/// hashing threads), printing the sampled peak of its anonymous memory.
fn apply(args: &[String]) -> Result<()> {
    let (method, args) = (args[0].as_str(), &args[1..]);
    let source = map(Path::new(&args[0]))?;
    let size: u64 = args[2].parse()?;
    let peak = AtomicU64::new(0);
    let done = AtomicBool::new(false);
    std::thread::scope(|scope| -> Result<()> {
        scope.spawn(|| {
            while !done.load(Ordering::Relaxed) {
                if let Some(kib) = rss_anon_kib() {
                    peak.fetch_max(kib, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        let result = (|| -> Result<()> {
            let mut input = BufReader::with_capacity(1 << 20, File::open(&args[1])?);
            let mut out = BufWriter::with_capacity(1 << 20, File::create(&args[3])?);
            match method {
                block_bsdiff::METHOD => block_bsdiff::decode(&mut input, &source, size, &mut out)?,
                zstd_patch::METHOD => zstd_patch::decode(&mut input, &source, size, &mut out)?,
                other => bail!("unknown method '{other}'"),
            }
            out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
            Ok(())
        })();
        done.store(true, Ordering::Relaxed);
        result
    })?;
    println!("heap_peak_kib {}", peak.load(Ordering::Relaxed));
    Ok(())
}

fn rss_anon_kib() -> Option<u64> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}
