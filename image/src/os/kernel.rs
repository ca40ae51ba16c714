//! The kernel and the subset of its modules an image needs.

use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use super::run::run;

/// The unpacked kernel package.
pub struct KernelTree {
    pub root: PathBuf,
    pub release: String,
}

impl KernelTree {
    pub fn image(&self) -> PathBuf {
        self.root
            .join("boot")
            .join(format!("vmlinuz-{}", self.release))
    }

    fn modules_dir(&self) -> PathBuf {
        self.root.join("lib/modules").join(&self.release)
    }

    /// Copies `names` and everything they depend on into `dest_root/lib/modules/<release>`
    /// and runs `depmod -b` there (the .debs ship no modules.dep for the subset).
    /// Returns the number of module files.
    pub fn install_modules(&self, names: &[String], dest_root: &Path) -> Result<usize> {
        let src = self.modules_dir();
        if !src.join("modules.dep").exists() {
            // The package ships none: compute it once for the whole (cached) kernel tree.
            run(Command::new("depmod")
                .arg("-b")
                .arg(&self.root)
                .arg(&self.release))?;
        }
        let deps = parse_modules_dep(&src.join("modules.dep"))?;
        let by_name: HashMap<String, &String> =
            deps.keys().map(|path| (module_name(path), path)).collect();
        let mut wanted = BTreeSet::new();
        let mut queue: Vec<String> = Vec::new();
        // An entry may carry module parameters after the name (`softdog soft_margin=30`).
        for name in names
            .iter()
            .filter_map(|entry| entry.split_whitespace().next())
        {
            let Some(path) = by_name.get(&name.replace('-', "_")) else {
                bail!("kernel {} has no module {name}", self.release);
            };
            queue.push((*path).clone());
        }
        while let Some(path) = queue.pop() {
            if wanted.insert(path.clone()) {
                queue.extend(deps.get(&path).into_iter().flatten().cloned());
            }
        }
        let dest = dest_root.join("lib/modules").join(&self.release);
        if dest.exists() {
            fs::remove_dir_all(&dest)?;
        }
        for path in &wanted {
            let target = dest.join(path);
            fs::create_dir_all(target.parent().context("module path has a parent")?)?;
            fs::copy(src.join(path), &target).with_context(|| format!("copying {path}"))?;
        }
        for file in [
            "modules.order",
            "modules.builtin",
            "modules.builtin.modinfo",
        ] {
            fs::copy(src.join(file), dest.join(file)).with_context(|| format!("copying {file}"))?;
        }
        run(Command::new("depmod")
            .arg("-b")
            .arg(dest_root)
            .arg(&self.release))?;
        Ok(wanted.len())
    }
}

/// `kernel/fs/erofs/erofs.ko: kernel/lib/lz4/lz4_decompress.ko` → path → dependencies.
fn parse_modules_dep(path: &Path) -> Result<HashMap<String, Vec<String>>> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut deps = HashMap::new();
    for line in text.lines() {
        let Some((module, rest)) = line.split_once(':') else {
            continue;
        };
        deps.insert(
            module.trim().to_string(),
            rest.split_whitespace().map(str::to_string).collect(),
        );
    }
    Ok(deps)
}

/// `kernel/drivers/md/dm-verity.ko` → `dm_verity` (modprobe treats - and _ alike).
fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split(".ko").next().unwrap_or(file);
    stem.replace('-', "_")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_names_normalise_dashes_and_compression() {
        assert_eq!(module_name("kernel/drivers/md/dm-verity.ko"), "dm_verity");
        assert_eq!(module_name("kernel/fs/erofs/erofs.ko.xz"), "erofs");
    }
}
