//! Creating and signing bundles (the build host's side).

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use cairn_atomic::AtomicFile;
use time::OffsetDateTime;

use crate::canonical;
use crate::chunked;
use crate::chunks::COPY_BUF;
use crate::codec::{block_bsdiff, full, zstd_patch};
use crate::digest::both_digests;
use crate::error::{Error, Result};
use crate::file::BundleFile;
use crate::header::{align_up, Header};
use crate::keys::{Signature, SigningKey};
use crate::manifest::{Chunked, Image, ImageKind, Manifest, Payload, Source, Verity};
use crate::root::SignedRoot;
use crate::signatures::{signed_message, MANIFEST_CONTEXT};

/// One image to put in a bundle.
#[derive(Debug, Clone)]
pub struct ImageInput {
    pub name: String,
    pub path: PathBuf,
    pub verity: Option<Verity>,
    pub kind: ImageKind,
    /// The PCR 11 value of a unified kernel image, computed by the caller (cairn-image,
    /// which owns the UKI format); written to the manifest as `pcr11`.
    pub pcr11: Option<[u8; 32]>,
    /// With `pcr11`: the PCR 4 value the firmware leaves when it starts the image's
    /// systemd-boot and then this UKI (cairn-image computes it too); written as `pcr4`.
    pub pcr4: Option<[u8; 32]>,
    /// With `pcr11`: the PCR 7 value (the firmware's Secure Boot policy) a device of the
    /// image's firmware variables quotes after booting this UKI; written as `pcr7`.
    pub pcr7: Option<[u8; 32]>,
}

/// A previous version of an image that devices may hold; a delta is made from it.
#[derive(Debug, Clone)]
pub struct DeltaSource {
    pub image: String,
    pub path: PathBuf,
}

/// Everything a bundle is made from, besides the signing keys.
#[derive(Debug, Clone)]
pub struct BundleSpec {
    pub compatible: String,
    pub version: semver::Version,
    pub security_version: u64,
    pub created: OffsetDateTime,
    pub expires: OffsetDateTime,
    pub description: Option<String>,
    pub images: Vec<ImageInput>,
    pub delta_sources: Vec<DeltaSource>,
    /// zstd level of the full and delta payloads (chunk frames take their layout's).
    pub level: i32,
    /// How deltas are made.
    pub delta_codec: DeltaCodec,
    /// Also carry every image chunked (`crate::chunked`), cut this way: devices
    /// without a delta for their version then fetch only the chunks they lack.
    pub chunked: Option<chunked::Layout>,
    /// Earlier versions of images that devices may hold, to group a windowed layout's
    /// chunks by (at most [`chunked::MAX_HISTORY`] per image). An image with none here is
    /// grouped by the sources of its deltas, if it has any.
    pub chunk_history: Vec<DeltaSource>,
    /// Trust roots to carry for devices that need to rotate.
    pub roots: Vec<SignedRoot>,
}

/// The codec of the deltas a bundle carries. Devices skip methods they do not know, so
/// a device older than `block-bsdiff` installs a bundle of such deltas from its full or
/// chunked payload; `zstd-patch` keeps deltas those devices can apply.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DeltaCodec {
    /// Copies of unchanged blocks and bsdiff diffs of the rest ([`block_bsdiff`]):
    /// measured smaller than bsdiff itself at a fraction of its time (`cargo xtask bench
    /// delta`).
    #[default]
    BlockBsdiff,
    /// zstd frames against the whole source ([`zstd_patch`]).
    ZstdPatch,
}

impl DeltaCodec {
    pub fn method(self) -> &'static str {
        match self {
            DeltaCodec::BlockBsdiff => block_bsdiff::METHOD,
            DeltaCodec::ZstdPatch => zstd_patch::METHOD,
        }
    }
}

/// The hash tree a `block-bsdiff` delta may let the device compute: only the layout
/// `cairn-image slot` writes (sha256, 4 KiB blocks, tree right after the data). The
/// encoder checks the target's bytes against it before relying on it.
fn hash_tree_of<'a>(verity: &Verity, salt: &'a [u8]) -> Option<block_bsdiff::HashTree<'a>> {
    let layout = verity.hash_algorithm == "sha256"
        && verity.data_block_size == block_bsdiff::BLOCK_SIZE
        && verity.hash_block_size == block_bsdiff::BLOCK_SIZE;
    layout.then_some(block_bsdiff::HashTree {
        data_size: verity.data_size,
        salt,
    })
}

/// What bundle creation reports as it goes.
pub enum BuildEvent<'a> {
    Stage(&'a str),
    /// `done` of an image's `total` bytes are encoded into the payload `label`.
    Encoding {
        image: &'a str,
        label: &'a str,
        done: u64,
        total: u64,
    },
    Payload {
        image: &'a str,
        label: &'a str,
        input: u64,
        output: u64,
    },
}

/// Creates the bundle at `out` atomically and returns its manifest.
pub fn create(
    spec: &BundleSpec,
    keys: &[SigningKey],
    out: &Path,
    progress: &mut dyn FnMut(BuildEvent),
) -> Result<Manifest> {
    let dir = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut area =
        tempfile::tempfile_in(dir).map_err(Error::io("creating payload scratch file"))?;
    let mut images = Vec::new();
    for input in &spec.images {
        images.push(write_image(spec, input, &mut area, progress)?);
    }
    let manifest = Manifest {
        compatible: spec.compatible.clone(),
        version: spec.version.clone(),
        security_version: spec.security_version,
        created: spec.created,
        expires: spec.expires,
        description: spec.description.clone(),
        images,
    };
    let area_len = area
        .stream_position()
        .map_err(Error::io("payload scratch file"))?;
    manifest.validate(area_len)?;
    let manifest_bytes = canonical::to_vec(&manifest)?;
    let message = signed_message(MANIFEST_CONTEXT, &manifest_bytes);
    let signatures: Vec<Signature> = keys.iter().map(|k| k.sign(&message)).collect();
    area.seek(SeekFrom::Start(0))
        .map_err(Error::io("payload scratch file"))?;
    progress(BuildEvent::Stage("writing bundle"));
    assemble(
        out,
        &manifest_bytes,
        &signatures,
        &spec.roots,
        &mut area,
        area_len,
    )?;
    Ok(manifest)
}

/// Adds signatures by `keys` to an existing bundle, rewriting it atomically. Returns the
/// number of signatures it now carries. The manifest bytes are not touched.
pub fn add_signatures(path: &Path, keys: &[SigningKey]) -> Result<usize> {
    let bundle = BundleFile::open(path)?;
    let b = &bundle.bundle;
    let message = signed_message(MANIFEST_CONTEXT, &b.manifest_bytes);
    let mut signatures = b.signatures.clone();
    for key in keys {
        signatures.retain(|s| s.key_id != key.id());
        signatures.push(key.sign(&message));
    }
    let mut file = File::open(path).map_err(Error::io("reopening bundle"))?;
    file.seek(SeekFrom::Start(b.header.payload_area_offset))
        .map_err(Error::io("seeking to payload area"))?;
    assemble(
        path,
        &b.manifest_bytes,
        &signatures,
        &b.roots,
        &mut file,
        b.header.payload_area_len,
    )?;
    Ok(signatures.len())
}

/// Writes a bundle from its parts: header, metadata, padding, then `area_len` bytes of
/// payload area read from `area`. Used by [`create`], [`add_signatures`] and by tests
/// that need a correctly signed bundle with a hostile manifest.
pub fn assemble(
    out: &Path,
    manifest_bytes: &[u8],
    signatures: &[Signature],
    roots: &[SignedRoot],
    area: &mut impl Read,
    area_len: u64,
) -> Result<()> {
    let sig_bytes = serde_json::to_vec(signatures).expect("signatures serialise");
    let root_bytes = if roots.is_empty() {
        Vec::new()
    } else {
        serde_json::to_vec(roots).expect("roots serialise")
    };
    let header = Header::layout(
        manifest_bytes.len(),
        sig_bytes.len(),
        root_bytes.len(),
        area_len,
    )?;
    let ctx = || format!("writing bundle {}", out.display());
    let mut file = AtomicFile::create(out).map_err(Error::io(ctx()))?;
    let mut meta = header.encode().to_vec();
    meta.extend_from_slice(manifest_bytes);
    meta.extend_from_slice(&sig_bytes);
    meta.extend_from_slice(&root_bytes);
    meta.resize(header.payload_area_offset as usize, 0);
    file.write_all(&meta).map_err(Error::io(ctx()))?;
    let copied = io::copy(&mut area.take(area_len), file.file()).map_err(Error::io(ctx()))?;
    if copied != area_len {
        return Err(Error::Truncated {
            what: "payload area source",
            needed: area_len,
            available: copied,
        });
    }
    file.commit().map_err(Error::io(ctx()))
}

fn write_image(
    spec: &BundleSpec,
    input: &ImageInput,
    area: &mut File,
    progress: &mut dyn FnMut(BuildEvent),
) -> Result<Image> {
    progress(BuildEvent::Stage(&format!(
        "image {}: hashing {}",
        input.name,
        input.path.display()
    )));
    let (sha256, blake3, size) = hash_file(&input.path)?;
    let mut image_file = open(&input.path)?;
    let full = write_payload(area, full::METHOD, None, |out| {
        full::encode(&mut image_file, out, spec.level)
    })?;
    progress(BuildEvent::Payload {
        image: &input.name,
        label: "full",
        input: size,
        output: full.size,
    });
    let mut deltas = Vec::new();
    let mut deltas_made_from: Vec<&Path> = Vec::new();
    for source in spec.delta_sources.iter().filter(|s| s.image == input.name) {
        let (source_sha, _, source_size) = hash_file(&source.path)?;
        if source_sha == sha256
            || deltas
                .iter()
                .any(|d: &Payload| d.source.as_ref().is_some_and(|s| s.sha256 == source_sha))
        {
            continue; // unchanged image, or the same source given twice
        }
        progress(BuildEvent::Stage(&format!(
            "image {}: delta from {}",
            input.name,
            source.path.display()
        )));
        let (src_map, dst_map) = (map(&source.path)?, map(&input.path)?);
        let salt = input
            .verity
            .as_ref()
            .and_then(|v| hex::decode(&v.salt).ok())
            .unwrap_or_default();
        let source_ref = Some(Source {
            sha256: source_sha,
            size: source_size,
        });
        let mut encoded = |done| {
            progress(BuildEvent::Encoding {
                image: &input.name,
                label: "delta",
                done,
                total: size,
            })
        };
        encoded(0);
        let delta = write_payload(
            area,
            spec.delta_codec.method(),
            source_ref,
            |out| match spec.delta_codec {
                DeltaCodec::BlockBsdiff => {
                    let tree = input.verity.as_ref().and_then(|v| hash_tree_of(v, &salt));
                    block_bsdiff::encode_with(
                        &src_map,
                        &dst_map,
                        spec.level,
                        tree,
                        None,
                        &mut encoded,
                        out,
                    )
                }
                DeltaCodec::ZstdPatch => zstd_patch::encode_with(
                    &src_map,
                    &dst_map,
                    spec.level,
                    zstd_patch::DEFAULT_CHUNK,
                    None,
                    &mut encoded,
                    out,
                ),
            },
        )?;
        progress(BuildEvent::Payload {
            image: &input.name,
            label: "delta",
            input: size,
            output: delta.size,
        });
        deltas.push(delta);
        deltas_made_from.push(&source.path);
    }
    let chunked = match spec.chunked {
        Some(layout) => {
            let named: Vec<&Path> = (spec.chunk_history.iter())
                .filter(|s| s.image == input.name)
                .map(|s| s.path.as_path())
                .collect();
            let history = match named.is_empty() {
                true => &deltas_made_from[..deltas_made_from.len().min(chunked::MAX_HISTORY)],
                false => &named[..],
            };
            Some(write_chunked(area, input, layout, history, size, progress)?)
        }
        None => None,
    };
    Ok(Image {
        name: input.name.clone(),
        kind: input.kind,
        size,
        sha256,
        blake3: Some(blake3),
        verity: input.verity.clone(),
        pcr11: input.pcr11.map(hex::encode),
        pcr4: input.pcr4.map(hex::encode),
        pcr7: input.pcr7.map(hex::encode),
        full,
        deltas,
        chunked,
    })
}

/// Appends an image's chunk frames, then its index. With a windowed layout and earlier
/// versions of the image (the sources of its deltas), the chunks are grouped by which of
/// those hold each block ([`chunked::encode_grouped`]); else cut by `layout`.
fn write_chunked(
    area: &mut File,
    input: &ImageInput,
    layout: chunked::Layout,
    history: &[&Path],
    size: u64,
    progress: &mut dyn FnMut(BuildEvent),
) -> Result<Chunked> {
    let grouped = layout.window > 0 && !history.is_empty();
    progress(BuildEvent::Stage(&format!(
        "image {}: chunks{}",
        input.name,
        if grouped {
            ", grouped by the delta sources"
        } else {
            ""
        }
    )));
    let image = map(&input.path)?;
    let history = match grouped {
        true => history.iter().map(|p| map(p)).collect::<Result<Vec<_>>>()?,
        false => Vec::new(),
    };
    let mut index = None;
    let method = match (grouped, layout.window) {
        (true, _) => chunked::METHOD_GROUPED,
        (false, 0) => chunked::METHOD,
        (false, _) => chunked::METHOD_WINDOWED,
    };
    let data = write_payload(area, method, None, |out| {
        index = Some(match grouped {
            true => {
                let history: Vec<&[u8]> = history.iter().map(|m| &m[..]).collect();
                let mut encoded = |done| {
                    progress(BuildEvent::Encoding {
                        image: &input.name,
                        label: "chunks",
                        done,
                        total: size,
                    })
                };
                encoded(0);
                chunked::encode_grouped(
                    &image,
                    &history,
                    chunked::GROUP_LEVEL,
                    None,
                    &mut encoded,
                    out,
                )?
            }
            false => chunked::encode(&image, layout, out)?,
        });
        Ok(())
    })?;
    let index = index.expect("set by the encoder").encode();
    let index = write_payload(area, chunked::INDEX_METHOD, None, |out| {
        out.write_all(&index)
    })?;
    progress(BuildEvent::Payload {
        image: &input.name,
        label: "chunked",
        input: size,
        output: data.size + index.size,
    });
    Ok(Chunked { index, data })
}

/// Appends one payload at the next aligned offset of the payload area.
fn write_payload(
    area: &mut File,
    method: &str,
    source: Option<Source>,
    encode: impl FnOnce(&mut BufWriter<&mut File>) -> io::Result<()>,
) -> Result<Payload> {
    let ctx = || format!("writing {method} payload");
    let end = area.seek(SeekFrom::End(0)).map_err(Error::io(ctx()))?;
    let offset = align_up(end);
    area.set_len(offset).map_err(Error::io(ctx()))?;
    area.seek(SeekFrom::Start(offset))
        .map_err(Error::io(ctx()))?;
    {
        let mut out = BufWriter::with_capacity(COPY_BUF, &mut *area);
        encode(&mut out).map_err(Error::io(ctx()))?;
        out.flush().map_err(Error::io(ctx()))?;
    }
    let size = area.stream_position().map_err(Error::io(ctx()))? - offset;
    area.seek(SeekFrom::Start(offset))
        .map_err(Error::io(ctx()))?;
    let (sha256, blake3, _) =
        both_digests(&mut (&mut *area).take(size)).map_err(Error::io(ctx()))?;
    area.seek(SeekFrom::End(0)).map_err(Error::io(ctx()))?;
    Ok(Payload {
        method: method.to_string(),
        offset,
        size,
        sha256,
        blake3: Some(blake3),
        source,
    })
}

fn open(path: &Path) -> Result<File> {
    File::open(path).map_err(Error::io(format!("opening {}", path.display())))
}

/// SHA-256, BLAKE3 and size of a file.
fn hash_file(path: &Path) -> Result<(String, String, u64)> {
    both_digests(&mut BufReader::new(open(path)?))
        .map_err(Error::io(format!("reading {}", path.display())))
}

fn map(path: &Path) -> Result<memmap2::Mmap> {
    let file = open(path)?;
    // SAFETY: build inputs are not modified while a bundle is being made from them; if
    // one were, the image hash computed before would no longer match and the bundle would
    // fail verification rather than carry silently wrong data.
    unsafe { memmap2::Mmap::map(&file) }.map_err(Error::io(format!("mapping {}", path.display())))
}
