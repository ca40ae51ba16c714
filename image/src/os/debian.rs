//! Debian arm64 trees from mmdebstrap (`--variant=extract`: packages are unpacked, no
//! maintainer scripts run, so no binfmt/qemu is needed). Trees are cached under
//! `cache/trees/<label>-<key>/` keyed by everything that selects them; the .debs are kept
//! under `cache/debs/`. A second build with the same package list reuses the tree.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

use super::profile::Debian;
use super::progress::Stage;
use super::run::run;

/// Bump when the way trees are made changes, to invalidate old cache entries.
const TREE_FORMAT: &str = "cairn-tree-v1";

pub struct Tree {
    /// The unpacked tree (read-only by convention: copy it before changing it).
    pub dir: PathBuf,
    /// `name version` per line, sorted: the .debs that made the tree.
    pub packages: String,
}

/// The tree with `packages` (and their dependencies) unpacked, from the cache or fetched.
pub fn tree(debian: &Debian, packages: &[String], label: &str, cache: &Path) -> Result<Tree> {
    let key = cache_key(debian, packages);
    let name = format!("{label}-{}", &key[..16]);
    let entry = cache.join("trees").join(&name);
    let dir = entry.join("tree");
    // Two builds wanting the same tree (the tests build several profiles at once, a demo
    // may run beside them) take turns: the second finds it cached.
    fs::create_dir_all(cache.join("trees"))?;
    let lock_path = cache.join("trees").join(format!("{name}.lock"));
    let lock = fs::File::create(&lock_path)
        .with_context(|| format!("creating {}", lock_path.display()))?;
    lock.lock()
        .with_context(|| format!("locking {}", lock_path.display()))?;
    // packages.txt is written last: its presence marks a complete entry.
    let list = entry.join("packages.txt");
    if let Ok(packages) = fs::read_to_string(&list) {
        eprintln!("==> {label} tree: cached ({})", entry.display());
        return Ok(Tree { dir, packages });
    }

    let stage = Stage::start(format!("{label} tree: mmdebstrap {}", packages.join(" ")));
    if entry.exists() {
        fs::remove_dir_all(&entry).with_context(|| format!("clearing {}", entry.display()))?;
    }
    fs::create_dir_all(&entry)?;
    run(Command::new("mmdebstrap")
        .arg("--variant=extract")
        .arg(format!("--architectures={}", debian.architecture))
        .arg(format!("--include={}", packages.join(",")))
        // Keep the downloaded .debs: they name the exact versions, and are cached.
        .arg("--skip=cleanup/apt/cache")
        .arg("--quiet")
        .arg(&debian.suite)
        .arg(&dir)
        .args(&debian.sources))?;

    let archives = dir.join("var/cache/apt/archives");
    let debs_cache = cache.join("debs");
    fs::create_dir_all(&debs_cache)?;
    let mut versions = Vec::new();
    for entry in
        fs::read_dir(&archives).with_context(|| format!("reading {}", archives.display()))?
    {
        let path = entry?.path();
        let Some(file_name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let Some(stem) = file_name.strip_suffix(".deb") else {
            continue;
        };
        // name_version_arch.deb, with ':' in versions escaped as %3a.
        let mut parts = stem.splitn(3, '_');
        if let (Some(name), Some(version)) = (parts.next(), parts.next()) {
            versions.push(format!("{name} {}", version.replace("%3a", ":")));
        }
        let cached = debs_cache.join(file_name);
        if !cached.exists() {
            fs::rename(&path, &cached).or_else(|_| fs::copy(&path, &cached).map(|_| ()))?;
        }
    }
    fs::remove_dir_all(dir.join("var/cache/apt"))?;
    versions.sort();
    let packages = versions.join("\n") + "\n";
    fs::write(&list, &packages)?;
    stage.done(format!("{} packages", versions.len()));
    Ok(Tree { dir, packages })
}

fn cache_key(debian: &Debian, packages: &[String]) -> String {
    let mut sorted = packages.to_vec();
    sorted.sort();
    let mut hasher = Sha256::new();
    for part in [
        TREE_FORMAT,
        &debian.suite,
        &debian.sources.join("\n"),
        &debian.architecture,
        &sorted.join(","),
    ] {
        hasher.update(part.as_bytes());
        hasher.update([0]);
    }
    hex::encode(hasher.finalize())
}

/// Copies a tree with `cp -a` (keeps modes, symlinks, hard links) into a fresh `dest`.
pub fn copy_tree(src: &Path, dest: &Path) -> Result<()> {
    if dest.exists() {
        fs::remove_dir_all(dest).with_context(|| format!("clearing {}", dest.display()))?;
    }
    if let Some(parent) = dest.parent() {
        fs::create_dir_all(parent)?;
    }
    run(Command::new("cp").arg("-a").arg(src).arg(dest))?;
    Ok(())
}
