//! Copying dynamically linked binaries out of a root tree together with the shared
//! libraries they need (for the initramfs, which has no package manager).

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use super::arch::Arch;
use super::run::stdout;

/// Where glibc looks without an ld.so.cache, and where the libraries are put.
fn lib_dirs(arch: Arch) -> [String; 4] {
    [
        format!("lib/{}", arch.triplet()),
        format!("usr/lib/{}", arch.triplet()),
        "lib".into(),
        "usr/lib".into(),
    ]
}

/// The libraries `binary` needs, transitively: (soname, path in `tree`).
pub fn needed_libraries(tree: &Path, binary: &Path, arch: Arch) -> Result<Vec<(String, PathBuf)>> {
    let mut found = BTreeSet::new();
    let mut queue = vec![binary.to_path_buf()];
    let mut result = Vec::new();
    while let Some(file) = queue.pop() {
        for soname in dt_needed(&file)? {
            if !found.insert(soname.clone()) {
                continue;
            }
            let path = find_library(tree, &soname, arch)?;
            queue.push(path.clone());
            result.push((soname, path));
        }
    }
    Ok(result)
}

/// DT_NEEDED entries, from `readelf -d` (binutils reads any ELF machine).
fn dt_needed(file: &Path) -> Result<Vec<String>> {
    let text = stdout(Command::new("readelf").arg("-d").arg(file))?;
    Ok(text
        .lines()
        .filter(|l| l.contains("(NEEDED)"))
        .filter_map(|l| {
            let start = l.find('[')? + 1;
            let end = l.rfind(']')?;
            Some(l[start..end].to_string())
        })
        .collect())
}

fn find_library(tree: &Path, soname: &str, arch: Arch) -> Result<PathBuf> {
    for dir in lib_dirs(arch) {
        let candidate = tree.join(dir).join(soname);
        if let Some(real) = resolve_in_tree(tree, &candidate)? {
            return Ok(real);
        }
    }
    bail!("library {soname} not found in {}", tree.display())
}

/// Follows symlinks inside `tree` (absolute targets are relative to the tree's root).
fn resolve_in_tree(tree: &Path, path: &Path) -> Result<Option<PathBuf>> {
    let mut current = path.to_path_buf();
    for _ in 0..16 {
        let Ok(meta) = fs::symlink_metadata(&current) else {
            return Ok(None);
        };
        if !meta.file_type().is_symlink() {
            return Ok(Some(current));
        }
        let target = fs::read_link(&current)?;
        current = if target.is_absolute() {
            tree.join(target.strip_prefix("/").context("absolute link")?)
        } else {
            current
                .parent()
                .context("a link has a parent directory")?
                .join(target)
        };
    }
    bail!("symlink loop at {}", path.display())
}
