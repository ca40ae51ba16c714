//! The whole build for a profile, and the reuse rule for callers that want an image
//! without rebuilding one whose inputs did not change (the QEMU tests).

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use cairn_bundle::{SignedRoot, SigningKey, TrustRoot, Verity};
use sha2::{Digest, Sha256};

use super::disk::{self, SlotB};
use super::layout::Layout;
use super::profile::{workspace_root, Profile, DEV_SERVER_CA};
use super::progress::mib;
use super::{esp, rootfs, slot};
use crate::tls::DevTls;

pub struct Build {
    pub profile: Profile,
    pub layout: Layout,
}

impl Build {
    pub fn new(profile_path: &Path) -> Result<Build> {
        let profile = Profile::load(profile_path)?;
        let dir = profile_path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let workspace = workspace_root(dir)?;
        let layout = Layout::new(&workspace, &profile.name);
        Ok(Build { profile, layout })
    }

    /// The root tree, kernel and initramfs. Without `trust_root`, a development key and
    /// root are made once under `target/cairn/dev-keys` and used.
    pub fn rootfs(&self, trust_root: Option<&Path>) -> Result<()> {
        let root = match trust_root {
            Some(path) => path.to_path_buf(),
            None => self.dev_trust_root()?,
        };
        let server_ca = self.server_ca()?;
        rootfs::build(&self.profile, &self.layout, &root, server_ca.as_deref())
    }

    /// The CA certificate the image pins for its fleet server, if the profile names one.
    fn server_ca(&self) -> Result<Option<PathBuf>> {
        let Some(server) = &self.profile.server else {
            return Ok(None);
        };
        Ok(match server.ca.as_deref() {
            None => None,
            Some(DEV_SERVER_CA) => self.dev_tls()?.map(|tls| tls.ca),
            Some(path) => Some(self.layout.workspace.join(path)),
        })
    }

    /// The development CA and a server certificate for the profile's server URL host (and
    /// the build machine's loopback, where the tests and the demo run the server), made
    /// once under `target/cairn/dev-keys`. `None` when the profile has no server.
    pub fn dev_tls(&self) -> Result<Option<DevTls>> {
        let Some(server) = &self.profile.server else {
            return Ok(None);
        };
        let host = server
            .url
            .split("://")
            .nth(1)
            .and_then(|rest| rest.split(['/', ':']).next())
            .filter(|h| !h.is_empty())
            .with_context(|| format!("no host in the server URL {}", server.url))?;
        let mut names = vec![host.to_string()];
        for local in ["127.0.0.1", "localhost"] {
            if !names.iter().any(|n| n == local) {
                names.push(local.to_string());
            }
        }
        DevTls::ensure(&self.layout.dev_keys(), &names).map(Some)
    }

    pub fn slot(&self) -> Result<slot::SlotImage> {
        let tree = self.layout.tree();
        let image = slot::build(
            &self.profile.slot,
            &tree,
            &self.layout.slot_image(),
            &self.layout.verity_json(),
        )?;
        eprintln!(
            "==> slot: content {} uncompressed -> erofs {} + hash tree = {}",
            mib(rootfs::content_size(&tree)?),
            mib(image.verity.data_size),
            mib(image.total_size)
        );
        Ok(image)
    }

    /// The slot's verity parameters, from `verity.json`.
    pub fn verity(&self) -> Result<Verity> {
        let bytes = fs::read(self.layout.verity_json())
            .context("reading verity.json (run `slot` first)")?;
        Ok(serde_json::from_slice(&bytes)?)
    }

    pub fn disk(&self, slot_b: SlotB) -> Result<disk::DiskSummary> {
        let verity = self.verity()?;
        let boot_files = match &self.profile.efi {
            Some(efi) => Some(esp::build(&self.profile, efi, &self.layout, &verity)?),
            None => None,
        };
        let summary = disk::build(&disk::Inputs {
            profile: &self.profile,
            workspace: &self.layout.workspace,
            kernel: &self.layout.kernel(),
            initrd: &self.layout.initrd(),
            slot_image: &self.layout.slot_image(),
            verity: &verity,
            slot_b,
            efi: boot_files.as_ref(),
            out: &self.layout.disk(),
        })?;
        eprintln!(
            "==> summary for {} {}:",
            self.profile.name, self.profile.version
        );
        for p in &summary.partitions {
            eprintln!(
                "    {:<9} at {:>5} MiB, {}",
                p.label,
                p.start / (1024 * 1024),
                mib(p.size)
            );
        }
        eprintln!(
            "    slot B: {slot_b:?}; rootfs root hash {}",
            verity.root_hash
        );
        if let Some(files) = &boot_files {
            eprintln!(
                "    UEFI: signed UKI {}, firmware variables (Secure Boot keys enrolled) {}",
                files.uki.display(),
                files.vars.display()
            );
        }
        eprintln!(
            "    disk {} ({}), bmap {}",
            self.layout.disk().display(),
            mib(summary.disk_size),
            summary.bmap.display()
        );
        Ok(summary)
    }

    /// rootfs + slot + disk.
    pub fn all(&self, trust_root: Option<&Path>, slot_b: SlotB) -> Result<()> {
        self.rootfs(trust_root)?;
        self.slot()?;
        self.disk(slot_b)?;
        Ok(())
    }

    /// Builds everything unless the last complete build had the same inputs (profile,
    /// builder sources, boot files, workspace sources). Returns the disk image.
    pub fn ensure(&self, slot_b: SlotB) -> Result<PathBuf> {
        let fingerprint = self.input_fingerprint(slot_b)?;
        let stamp = self.layout.out.join("inputs.sha256");
        if fs::read_to_string(&stamp).is_ok_and(|s| s == fingerprint) && self.layout.disk().exists()
        {
            eprintln!(
                "==> image inputs unchanged: reusing {}",
                self.layout.disk().display()
            );
            return Ok(self.layout.disk());
        }
        let _ = fs::remove_file(&stamp);
        self.all(None, slot_b)?;
        fs::write(&stamp, fingerprint)?;
        Ok(self.layout.disk())
    }

    fn input_fingerprint(&self, slot_b: SlotB) -> Result<String> {
        let mut hasher = Sha256::new();
        hasher.update(format!("{slot_b:?}\0"));
        let mut files = Vec::new();
        collect_sources(&self.layout.workspace, &mut files)?;
        files.sort();
        for file in files {
            hasher.update(file.to_string_lossy().as_bytes());
            hasher.update([0]);
            hasher.update(fs::read(&file)?);
        }
        Ok(hex::encode(hasher.finalize()))
    }

    fn dev_trust_root(&self) -> Result<PathBuf> {
        let dir = self.layout.dev_keys();
        let root_path = dir.join("root.json");
        if root_path.exists() {
            return Ok(root_path);
        }
        fs::create_dir_all(&dir)?;
        let key = SigningKey::generate()?;
        let expires = time::OffsetDateTime::now_utc() + time::Duration::days(365);
        let mut root = SignedRoot::new(1, expires, 1, vec![key.public()]);
        root.sign(&key)?;
        TrustRoot::anchor(root.clone()).context("the development root does not verify")?;
        cairn_atomic::write_private(dir.join("release.key.json"), &key.to_json())?;
        cairn_atomic::write(
            dir.join("release.pub.json"),
            &serde_json::to_vec_pretty(&key.public())?,
        )?;
        cairn_atomic::write(&root_path, &root.to_json())?;
        eprintln!(
            "==> made a development signing key and trust root in {}",
            dir.display()
        );
        Ok(root_path)
    }
}

/// Every file that can change the image: sources and manifests of the workspace (not
/// target/, not the QEMU tests themselves, not VCS data).
fn collect_sources(dir: &Path, files: &mut Vec<PathBuf>) -> Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') || name == "target" || path.ends_with("tests/qemu") {
            continue;
        }
        let kind = entry.file_type()?;
        if kind.is_dir() {
            collect_sources(&path, files)?;
        } else if kind.is_file() {
            files.push(path);
        }
    }
    Ok(())
}
