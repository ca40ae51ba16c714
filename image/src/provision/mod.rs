//! Offline provisioning (`cairn-image provision`): identities made at the bench, for lines
//! without a network, each written into its own copy of a disk image's data partition (or
//! into a card already flashed), with the manifest `cairn-server device import` takes.
//!
//! The identity file format is `cairn_server_api::DeviceIdentity`'s; where it goes on the
//! data partition follows the image's `data_dir` ([`IDENTITY_ON_DATA`]). With `--config`,
//! each device also gets its own settings ([`settings`]: hostname, network, a signed
//! server override). Files are put in place with debugfs at the partition's offset: no
//! mount, no loop device.

pub mod settings;

use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use cairn_server_api::{DeviceIdentity, ProvisioningRecord};

use settings::{DataFile, DeviceSettings};

/// The identity's path inside the data partition: cairnd's `data_dir` is `/data/cairn`
/// (`cairn_boot::device_settings::DIR`) in every image cairn-image builds (`os::rootfs`),
/// and `[server] identity` is unset.
pub const IDENTITY_ON_DATA: &str = "cairn/identity.json";

/// What every device of a batch shares.
pub struct Batch<'a> {
    pub compatible: &'a str,
    pub tags: &'a [String],
    pub image_version: Option<&'a str>,
    /// Settings each device gets with its identity (`--config`).
    pub settings: Option<&'a DeviceSettings>,
}

/// Makes `count` identities; for each, a copy of `image`'s data partition holding it
/// (`out/<device_id>.data.img`), and `out/manifest.json` with every record.
pub fn batch(
    image: &Path,
    count: usize,
    out: &Path,
    batch: &Batch,
) -> Result<Vec<ProvisioningRecord>> {
    let (offset, len) = partition(image, "data")?;
    fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let mut records = Vec::with_capacity(count);
    for _ in 0..count {
        let identity = new_identity()?;
        let copy = out.join(format!("{}.data.img", identity.device_id));
        copy_range_sparse(image, offset, len, &copy)?;
        put_device_files(&copy.display().to_string(), &identity, batch, out)?;
        records.push(record(&identity, batch));
    }
    let manifest = out.join("manifest.json");
    cairn_atomic::write(&manifest, &serde_json::to_vec_pretty(&records)?)
        .with_context(|| format!("writing {}", manifest.display()))?;
    Ok(records)
}

/// One identity, written straight into the data partition of `target` (a card or disk
/// image already flashed with a Cairn image).
pub fn into_target(target: &Path, scratch: &Path, batch: &Batch) -> Result<ProvisioningRecord> {
    let (offset, _) = partition(target, "data")?;
    let identity = new_identity()?;
    put_device_files(
        &format!("{}?offset={offset}", target.display()),
        &identity,
        batch,
        scratch,
    )?;
    Ok(record(&identity, batch))
}

fn new_identity() -> Result<DeviceIdentity> {
    let mut secret = [0u8; 32];
    getrandom::getrandom(&mut secret)
        .map_err(|e| anyhow::anyhow!("no randomness for a device key: {e}"))?;
    Ok(DeviceIdentity::from_secret(secret, None))
}

fn record(identity: &DeviceIdentity, batch: &Batch) -> ProvisioningRecord {
    ProvisioningRecord {
        device_id: identity.device_id.clone(),
        public_key: identity.public_key_hex(),
        compatible: batch.compatible.to_string(),
        tags: batch
            .tags
            .iter()
            .chain(batch.settings.iter().flat_map(|s| &s.tags))
            .cloned()
            .collect(),
        image_version: batch.image_version.map(str::to_string),
        ..ProvisioningRecord::default()
    }
}

/// `(offset, length)` in bytes of the GPT partition named `name` (sfdisk's view).
pub fn partition(disk: &Path, name: &str) -> Result<(u64, u64)> {
    let out = Command::new("sfdisk")
        .arg("-J")
        .arg(disk)
        .output()
        .context("running sfdisk")?;
    if !out.status.success() {
        bail!(
            "{} has no readable partition table: {}",
            disk.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let table: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let sector = table["partitiontable"]["sectorsize"]
        .as_u64()
        .unwrap_or(512);
    let part = table["partitiontable"]["partitions"]
        .as_array()
        .and_then(|parts| parts.iter().find(|p| p["name"] == name))
        .with_context(|| format!("{} has no partition named {name}", disk.display()))?;
    let (Some(start), Some(size)) = (part["start"].as_u64(), part["size"].as_u64()) else {
        bail!(
            "sfdisk gave no start or size for {name} on {}",
            disk.display()
        );
    };
    Ok((start * sector, size * sector))
}

/// Copies `len` bytes at `offset` of `from` into a new file, leaving holes where the
/// source is zero (a mostly empty 256 MiB partition stays small on disk).
fn copy_range_sparse(from: &Path, offset: u64, len: u64, to: &Path) -> Result<()> {
    let mut input = File::open(from).with_context(|| format!("opening {}", from.display()))?;
    input.seek(SeekFrom::Start(offset))?;
    let mut output = File::create(to).with_context(|| format!("creating {}", to.display()))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        input.read_exact(&mut buf[..n])?;
        if crate::os::bmap::is_zero(&buf[..n]) {
            output.seek(SeekFrom::Current(n as i64))?;
        } else {
            output.write_all(&buf[..n])?;
        }
        left -= n as u64;
    }
    output.set_len(len)?;
    output.sync_all()?;
    Ok(())
}

/// Writes the identity file (root-owned, mode 0600) and the batch's settings files
/// (0644) into the ext4 file system `fs` (a path, `path?offset=N` for one inside a disk)
/// with debugfs, then reads each one back.
fn put_device_files(
    fs_spec: &str,
    identity: &DeviceIdentity,
    batch: &Batch,
    scratch: &Path,
) -> Result<()> {
    let mut files = vec![DataFile {
        path: IDENTITY_ON_DATA.to_string(),
        contents: identity.to_json(),
        mode: 0o600,
    }];
    if let Some(settings) = batch.settings {
        files.extend(settings.files_for(&identity.device_id)?);
    }
    let mut requests = Vec::new();
    let mut locals = Vec::new();
    let mut dirs: Vec<&str> = files
        .iter()
        .filter_map(|f| f.path.rsplit_once('/').map(|(dir, _)| dir))
        .collect();
    dirs.dedup();
    requests.extend(dirs.iter().map(|dir| format!("mkdir {dir}")));
    for (n, file) in files.iter().enumerate() {
        let local: PathBuf = scratch.join(format!(".{}.{n}", identity.device_id));
        cairn_atomic::write_private(&local, &file.contents)?;
        let path = &file.path;
        requests.extend([
            format!("rm {path}"),
            format!("write {} {path}", local.display()),
            format!("sif {path} mode 0{:o}", 0o100000 | file.mode),
            format!("sif {path} uid 0"),
            format!("sif {path} gid 0"),
        ]);
        locals.push(local);
    }
    let script = scratch.join(format!(".{}.debugfs", identity.device_id));
    fs::write(&script, requests.join("\n") + "\n")?;
    let out = Command::new("debugfs")
        .arg("-w")
        .arg("-f")
        .arg(&script)
        .arg(fs_spec)
        .output()
        .context("running debugfs (e2fsprogs)");
    let _ = fs::remove_file(&script);
    for local in &locals {
        let _ = fs::remove_file(local);
    }
    let out = out?;
    if !out.status.success() {
        bail!(
            "debugfs on {fs_spec}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for file in &files {
        let back = Command::new("debugfs")
            .arg("-R")
            .arg(format!("cat {}", file.path))
            .arg(fs_spec)
            .output()?;
        if back.stdout != file.contents {
            bail!("{} did not land in {fs_spec} as written", file.path);
        }
    }
    Ok(())
}
