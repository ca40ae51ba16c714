//! `cairn-image bundle create | inspect | verify`.

use std::fs::File;
use std::io::{self, BufWriter};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use cairn_bundle::writer::{self, BuildEvent, BundleSpec, DeltaCodec, DeltaSource, ImageInput};
use cairn_bundle::{BundleFile, ImageKind, Manifest, Policy, SignedRoot, TrustRoot};
use clap::{Args, Subcommand};
use time::{Duration, OffsetDateTime};

use crate::keys_cmd::{load_secret, read};
use cairn_image::os::pinned_pcrs::{self, BootChain, PinnedPcrs};

#[derive(Subcommand)]
pub enum BundleCommand {
    /// Create a signed bundle from image files.
    Create(Box<CreateArgs>),
    /// Show what a bundle contains (no trust check).
    Inspect(InspectArgs),
    /// Check signatures against a trust root and every payload hash.
    Verify(VerifyArgs),
}

#[derive(Args)]
pub struct CreateArgs {
    /// Device type the bundle is for, e.g. cairn-qemu-arm64.
    #[arg(long)]
    compatible: String,
    /// Release version (semver).
    #[arg(long)]
    version: semver::Version,
    /// Anti-rollback counter; devices refuse bundles below their floor.
    #[arg(long)]
    security_version: u64,
    /// Images as NAME=PATH (repeat): rootfs=..., kernel=..., initrd=...
    #[arg(long = "image", required_unless_present = "artifacts", value_parser = parse_pair)]
    images: Vec<(String, PathBuf)>,
    /// Container images as NAME=ARCHIVE (repeat): an OCI image layout archive (e.g.
    /// the Kubernetes distribution's system images for this version) that devices import
    /// into containerd before they reboot into the release. Deltas apply as to any image.
    #[arg(long = "oci", value_parser = parse_pair)]
    oci: Vec<(String, PathBuf)>,
    /// NAME=FILE: a file a hawkBit DDI device downloads and installs with its own client
    /// (an SWUpdate `.swu`, a RAUC bundle), named by its file name there. Repeatable.
    #[arg(long = "artifact", value_parser = parse_pair)]
    artifacts: Vec<(String, PathBuf)>,
    /// dm-verity parameters for an image as NAME=verity.json (from `cairn-image slot`).
    #[arg(long = "verity", value_parser = parse_pair)]
    verity: Vec<(String, PathBuf)>,
    /// Previous bundles to make deltas from (their full images are extracted).
    #[arg(long = "from")]
    from_bundles: Vec<PathBuf>,
    /// Previous image files to make deltas from, as NAME=PATH.
    #[arg(long = "from-image", value_parser = parse_pair)]
    from_images: Vec<(String, PathBuf)>,
    /// Secret key(s) to sign with; none gives an unsigned bundle for `cairn-image sign`.
    #[arg(long = "key")]
    keys: Vec<PathBuf>,
    /// The signed systemd-boot the device image ships (`systemd-boot.efi` beside a UEFI
    /// profile's disk): with it, each unified kernel image also gets the PCR 4 value the
    /// firmware leaves when it starts that loader and then the UKI, which attestation on
    /// the UEFI path requires (docs/UEFI.md).
    #[arg(long)]
    efi_loader: Option<PathBuf>,
    /// The firmware variable store the device image enrolls (`efi-vars.fd` beside a UEFI
    /// profile's disk): with `--efi-loader`, each unified kernel image also gets the PCR 7
    /// value (the firmware's Secure Boot policy) attestation requires (docs/UEFI.md).
    #[arg(long)]
    efi_vars: Option<PathBuf>,
    /// Trust roots to carry for devices that must follow a rotation.
    #[arg(long = "carry-root")]
    roots: Vec<PathBuf>,
    #[arg(long, default_value_t = 90)]
    expires_days: i64,
    /// Creation time as Unix seconds (defaults to SOURCE_DATE_EPOCH, then now).
    #[arg(long)]
    created: Option<i64>,
    #[arg(long)]
    description: Option<String>,
    /// zstd level (1-19) for all payloads.
    #[arg(long, default_value_t = 12)]
    level: i32,
    /// How deltas are made: `block-bsdiff` (copies of unchanged blocks, bsdiff of the
    /// rest, the hash tree computed on the device), or `zstd-patch` for devices older than
    /// block-bsdiff, which skip it and install the full payload instead.
    #[arg(long, default_value = "block-bsdiff", value_parser = parse_delta_codec)]
    delta_codec: DeltaCodec,
    /// Also carry each image in chunks with a hash per 4 KiB block, so a device with no
    /// delta for its version builds the image from the blocks it holds in any slot and
    /// fetches only the rest, and an interrupted download resumes where it stopped.
    /// Costs about a second full payload in the bundle.
    #[arg(long)]
    chunked: bool,
    /// Bytes of the image before each chunk that its frame may reference (`--chunked`).
    /// 0 makes chunks that devices older than windowed frames read (`zstd-chunks`: 32
    /// KiB chunks at `--level`); they take the full payload of a windowed bundle.
    #[arg(long, default_value_t = cairn_bundle::chunked::Layout::default().window)]
    chunk_window: u32,
    /// Earlier image files devices may hold, as NAME=PATH (at most two per image): with
    /// a window, `--chunked` then groups each image's blocks by which of them hold each
    /// block, so a device holding one of them fetches its missing blocks in a few large
    /// frames. Without it, the sources of an image's deltas serve. Repeatable.
    #[arg(long = "chunk-history", value_parser = parse_pair)]
    chunk_history: Vec<(String, PathBuf)>,
    /// zstd level of windowed chunk frames (`--chunked`); their cost grows with it.
    #[arg(long, default_value_t = cairn_bundle::chunked::Layout::default().level)]
    chunk_level: i32,
    #[arg(long, short)]
    out: PathBuf,
}

#[derive(Args)]
pub struct InspectArgs {
    bundle: PathBuf,
    /// Print the manifest and layout as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct VerifyArgs {
    bundle: PathBuf,
    /// The trust root to check signatures against.
    #[arg(long)]
    root: PathBuf,
    /// Also require this compatible string.
    #[arg(long)]
    compatible: Option<String>,
    /// Also require security_version >= this floor.
    #[arg(long, default_value_t = 0)]
    floor: u64,
}

pub fn run(cmd: BundleCommand) -> Result<()> {
    match cmd {
        BundleCommand::Create(a) => create(*a),
        BundleCommand::Inspect(a) => inspect(a),
        BundleCommand::Verify(a) => verify(a),
    }
}

/// The chunk layout `--chunk-window` and `--chunk-level` ask for: without a window, the
/// layout devices that predate windowed frames read, at the bundle's level.
fn chunk_layout(window: u32, chunk_level: i32, level: i32) -> cairn_bundle::chunked::Layout {
    use cairn_bundle::chunked::Layout;
    match window {
        0 => Layout {
            level,
            ..Layout::unwindowed()
        },
        _ => Layout {
            window,
            level: chunk_level,
            ..Layout::default()
        },
    }
}

fn parse_pair(s: &str) -> Result<(String, PathBuf), String> {
    let (name, path) = s
        .split_once('=')
        .ok_or_else(|| format!("expected NAME=PATH, got '{s}'"))?;
    Ok((name.to_string(), PathBuf::from(path)))
}

fn create(a: CreateArgs) -> Result<()> {
    let scratch = tempfile::tempdir_in(
        a.out
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(".".as_ref()),
    )?;
    let mut delta_sources: Vec<DeltaSource> = a
        .from_images
        .iter()
        .map(|(image, path)| DeltaSource {
            image: image.clone(),
            path: path.clone(),
        })
        .collect();
    let all_images: Vec<(String, PathBuf)> = a
        .images
        .iter()
        .chain(&a.oci)
        .chain(&a.artifacts)
        .cloned()
        .collect();
    for (i, old) in a.from_bundles.iter().enumerate() {
        delta_sources.extend(extract_sources(
            old,
            &all_images,
            &scratch.path().join(i.to_string()),
        )?);
    }
    let chain = match (&a.efi_loader, &a.efi_vars) {
        (Some(loader), vars) => Some(BootChain::read(loader, vars.as_deref())?),
        (None, Some(_)) => bail!("--efi-vars needs --efi-loader"),
        (None, None) => None,
    };
    let mut images = Vec::new();
    for (name, path) in &a.images {
        let verity = match a.verity.iter().find(|(n, _)| n == name) {
            Some((_, p)) => Some(
                serde_json::from_slice(&read(p)?)
                    .with_context(|| format!("verity file {}", p.display()))?,
            ),
            None => None,
        };
        let pinned = pinned_pcrs(path, chain.as_ref())?;
        if let Some(p) = &pinned {
            let shown = |value: Option<[u8; 32]>| value.map_or("unknown".into(), hex::encode);
            eprintln!(
                "[bundle] {name}: unified kernel image, PCR 4 {}, PCR 7 {}, PCR 11 {}",
                shown(p.pcr4),
                shown(p.pcr7),
                hex::encode(p.pcr11)
            );
            if p.pcr4.is_none() || p.pcr7.is_none() {
                eprintln!(
                    "[bundle] {name}: without --efi-loader and --efi-vars devices that boot \
                     this release cannot be attested"
                );
            }
        }
        images.push(ImageInput {
            name: name.clone(),
            path: path.clone(),
            verity,
            kind: ImageKind::Slot,
            pcr11: pinned.as_ref().map(|p| p.pcr11),
            pcr4: pinned.as_ref().and_then(|p| p.pcr4),
            pcr7: pinned.as_ref().and_then(|p| p.pcr7),
        });
    }
    for (name, path) in &a.oci {
        let names = cairn_image::oci::image_names(path)
            .with_context(|| format!("--oci {name}={}", path.display()))?;
        eprintln!("[bundle] {name}: container images {}", names.join(", "));
        images.push(ImageInput {
            name: name.clone(),
            path: path.clone(),
            verity: None,
            kind: ImageKind::OciArchive,
            pcr11: None,
            pcr4: None,
            pcr7: None,
        });
    }
    for (name, path) in &a.artifacts {
        images.push(ImageInput {
            name: name.clone(),
            path: path.clone(),
            verity: None,
            kind: ImageKind::Artifact,
            pcr11: None,
            pcr4: None,
            pcr7: None,
        });
    }
    let created = match a.created.or_else(|| {
        std::env::var("SOURCE_DATE_EPOCH")
            .ok()
            .and_then(|s| s.parse().ok())
    }) {
        Some(secs) => OffsetDateTime::from_unix_timestamp(secs)?,
        None => OffsetDateTime::now_utc().replace_nanosecond(0)?,
    };
    let roots = a
        .roots
        .iter()
        .map(|p| SignedRoot::parse(&read(p)?).with_context(|| format!("root {}", p.display())))
        .collect::<Result<Vec<_>>>()?;
    let spec = BundleSpec {
        compatible: a.compatible,
        version: a.version,
        security_version: a.security_version,
        created,
        expires: created + Duration::days(a.expires_days),
        description: a.description,
        images,
        delta_sources,
        chunk_history: (a.chunk_history.iter())
            .map(|(image, path)| DeltaSource {
                image: image.clone(),
                path: path.clone(),
            })
            .collect(),
        level: a.level,
        delta_codec: a.delta_codec,
        chunked: a
            .chunked
            .then(|| chunk_layout(a.chunk_window, a.chunk_level, a.level)),
        roots,
    };
    let keys = a
        .keys
        .iter()
        .map(|p| load_secret(p))
        .collect::<Result<Vec<_>>>()?;
    let started = std::time::Instant::now();
    let mut reporter = Reporter::default();
    let manifest = writer::create(&spec, &keys, &a.out, &mut |e| reporter.report(e))?;
    let size = std::fs::metadata(&a.out)?.len();
    eprintln!(
        "wrote {} ({}, {} image(s), {} signature(s)) in {:.1}s",
        a.out.display(),
        human(size),
        manifest.images.len(),
        keys.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Prints what bundle creation reports: each stage, each payload's size, and an
/// encoding's progress every [`Reporter::STEP`] percent.
#[derive(Default)]
struct Reporter {
    /// The last percentage printed for the payload being encoded.
    shown: Option<u64>,
}

impl Reporter {
    const STEP: u64 = 10;

    fn report(&mut self, event: BuildEvent) {
        match event {
            BuildEvent::Encoding {
                image,
                label,
                done,
                total,
            } => {
                let percent = (done * 100 / total.max(1)).min(100) / Self::STEP * Self::STEP;
                if self.shown.is_none_or(|shown| percent > shown) && percent < 100 {
                    eprintln!(
                        "[bundle] image {image}: {label} {percent}% ({} of {})",
                        human(done),
                        human(total)
                    );
                    self.shown = Some(percent);
                }
            }
            BuildEvent::Stage(s) => {
                self.shown = None;
                eprintln!("[bundle] {s}");
            }
            BuildEvent::Payload {
                image,
                label,
                input,
                output,
            } => {
                self.shown = None;
                eprintln!(
                    "[bundle] image {image}: {label} payload {} from {} ({:.1}%)",
                    human(output),
                    human(input),
                    100.0 * output as f64 / input.max(1) as f64
                );
            }
        }
    }
}

/// Extracts from `old` the full images whose names the new bundle also has.
fn extract_sources(
    old: &PathBuf,
    images: &[(String, PathBuf)],
    dir: &std::path::Path,
) -> Result<Vec<DeltaSource>> {
    std::fs::create_dir_all(dir)?;
    let bundle =
        BundleFile::open(old).with_context(|| format!("previous bundle {}", old.display()))?;
    let mut sources = Vec::new();
    for image in &bundle.bundle.manifest.images {
        if !images.iter().any(|(n, _)| *n == image.name) {
            continue;
        }
        let path = dir.join(&image.name);
        eprintln!(
            "[bundle] extracting {} {} from {}",
            image.name,
            bundle.bundle.manifest.version,
            old.display()
        );
        let out = BufWriter::new(File::create(&path)?);
        bundle
            .extract_full(image, out)?
            .into_inner()
            .map_err(|e| e.into_error())?
            .sync_all()?;
        sources.push(DeltaSource {
            image: image.name.clone(),
            path,
        });
    }
    Ok(sources)
}

fn inspect(a: InspectArgs) -> Result<()> {
    let bundle = BundleFile::open(&a.bundle)?;
    let b = &bundle.bundle;
    if a.json {
        let out = serde_json::json!({
            "format_version": cairn_bundle::header::FORMAT_VERSION,
            "payload_area_offset": b.header.payload_area_offset,
            "file_size": b.header.file_len(),
            "manifest": b.manifest,
            "signatures": b.signatures,
            "carried_roots": b.roots.iter().map(|r| r.signed.version).collect::<Vec<_>>(),
        });
        serde_json::to_writer_pretty(io::stdout().lock(), &out)?;
        println!();
        return Ok(());
    }
    print_manifest(&b.manifest);
    println!(
        "file:        {} bytes, payloads from offset {}",
        b.header.file_len(),
        b.header.payload_area_offset
    );
    println!(
        "signatures:  {}",
        b.signatures
            .iter()
            .map(|s| s.key_id.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    if !b.roots.is_empty() {
        println!(
            "carries trust roots: {:?}",
            b.roots.iter().map(|r| r.signed.version).collect::<Vec<_>>()
        );
    }
    Ok(())
}

fn print_manifest(m: &Manifest) {
    println!("compatible:  {}", m.compatible);
    println!(
        "version:     {} (security version {})",
        m.version, m.security_version
    );
    println!("created:     {}\nexpires:     {}", m.created, m.expires);
    for image in &m.images {
        println!(
            "image {}: {} sha256 {}",
            image.name,
            human(image.size),
            image.sha256
        );
        if let Some(pcr11) = &image.pcr11 {
            println!("  unified kernel image, PCR 11 {pcr11}");
        }
        if let Some(pcr4) = &image.pcr4 {
            println!("  PCR 4 after the firmware started systemd-boot and it: {pcr4}");
        }
        if let Some(pcr7) = &image.pcr7 {
            println!("  PCR 7 of the image's firmware variables: {pcr7}");
        }
        if let Some(v) = &image.verity {
            println!("  verity root hash {}", v.root_hash);
        }
        println!(
            "  full  {:>10}  {}",
            human(image.full.size),
            image.full.method
        );
        for d in &image.deltas {
            let src = d
                .source
                .as_ref()
                .map_or(String::new(), |s| s.sha256[..16].to_string());
            println!("  delta {:>10}  {} from {src}", human(d.size), d.method);
        }
        if let Some(c) = &image.chunked {
            println!(
                "  chunks {:>9}  {} (index {})",
                human(c.data.size),
                c.data.method,
                human(c.index.size)
            );
        }
    }
}

fn verify(a: VerifyArgs) -> Result<()> {
    let root = TrustRoot::from_json(&read(&a.root)?)
        .with_context(|| format!("trust root {}", a.root.display()))?;
    let bundle = BundleFile::open(&a.bundle)?;
    let policy = Policy {
        compatible: a.compatible,
        security_floor: a.floor,
        now: OffsetDateTime::now_utc(),
    };
    let verified = bundle.verify(&root, &policy)?;
    bundle.check_payloads(|msg| eprintln!("[verify] {msg}"))?;
    if verified.manifest.images.is_empty() {
        bail!("bundle has no images");
    }
    println!(
        "OK: {} {} signed by trust root v{}; every payload and image hash matches",
        verified.manifest.compatible,
        verified.manifest.version,
        verified.root.version()
    );
    Ok(())
}

fn human(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 => format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}

fn parse_delta_codec(name: &str) -> Result<DeltaCodec, String> {
    [DeltaCodec::BlockBsdiff, DeltaCodec::ZstdPatch]
        .into_iter()
        .find(|c| c.method() == name)
        .ok_or_else(|| format!("'{name}' is not a delta codec (block-bsdiff, zstd-patch)"))
}

/// What the manifest pins for `path` when it is a unified kernel image (a PE image with a
/// `.linux` section); `None` for anything else. Only files that start like a PE image
/// are read whole.
fn pinned_pcrs(path: &Path, chain: Option<&BootChain>) -> Result<Option<PinnedPcrs>> {
    use std::io::Read;
    let mut magic = [0u8; 2];
    let mut file =
        std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    if file.read_exact(&mut magic).is_err() || &magic != b"MZ" {
        return Ok(None);
    }
    pinned_pcrs::for_image(&read(path)?, chain).with_context(|| path.display().to_string())
}

#[cfg(test)]
mod uki_tests {
    use super::*;
    use cairn_image::os::pe::{authenticode, minimal_image};
    use cairn_image::os::uki::{self, UkiParts};

    #[test]
    fn ukis_get_their_pcr11_and_pcr4_and_other_images_none() {
        let dir = tempfile::tempdir().unwrap();
        let stub = minimal_image(
            &[
                (".text", &[0xc3; 16]),
                (".sdmagic", b"#### LoaderInfo ####"),
            ],
            8,
        );
        let parts = UkiParts {
            linux: b"MZkernel",
            initrd: b"initrd",
            cmdline: "cairn.slot=a",
            os_release: "NAME=Cairn\n",
            uname: "6.1",
        };
        let image = uki::build(&stub, &parts).unwrap();
        let files = [
            ("uki", &image[..]),
            ("stub", &stub[..]),
            ("rootfs", &b"erofs..."[..]),
            ("tiny", &b"M"[..]),
        ];
        for (name, bytes) in files {
            std::fs::write(dir.path().join(name), bytes).unwrap();
        }
        let pcr11 = uki::pcr11_sha256(&image).unwrap();
        assert_eq!(
            pinned_pcrs(&dir.path().join("uki"), None).unwrap(),
            Some(PinnedPcrs {
                pcr11,
                pcr4: None,
                pcr7: None
            })
        );
        let loader = minimal_image(&[(".text", b"systemd-boot")], 1);
        let chain = BootChain {
            loader: loader.clone(),
            vars: None,
        };
        let digests = [
            authenticode::sha256(&loader).unwrap(),
            authenticode::sha256(&image).unwrap(),
        ];
        assert_eq!(
            pinned_pcrs(&dir.path().join("uki"), Some(&chain)).unwrap(),
            Some(PinnedPcrs {
                pcr11,
                pcr4: Some(uki::pcr4_after_firmware(&digests)),
                pcr7: None
            })
        );
        for other in ["stub", "rootfs", "tiny"] {
            assert_eq!(
                pinned_pcrs(&dir.path().join(other), Some(&chain)).unwrap(),
                None,
                "{other}"
            );
        }
        assert!(pinned_pcrs(&dir.path().join("missing"), None).is_err());
    }
}
