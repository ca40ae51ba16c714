//! `cairn-image rootfs`: the device's root tree, its kernel and its initramfs.
//!
//! Debian packages (cached tree) → trimmed → busybox applet links → the profile's overlay
//! (init, services, passwd/group, containerd and CNI config) → /etc/cairn → kernel module
//! subset → the workspace's cross-compiled binaries. Also writes `vmlinuz` and
//! `initrd.img` next to the tree.

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result};
use cairn_boot::{layout, EfiEntryStore, SlotId};

use super::arch::Arch;
use super::cross;
use super::debian::{self, copy_tree};
use super::initramfs;
use super::kernel::KernelTree;
use super::layout::Layout;
use super::profile::Profile;
use super::progress::{mib, Stage};
use super::run::stdout;

/// `server_ca`: the CA certificate cairnd pins for the fleet server, if any.
pub fn build(
    profile: &Profile,
    layout: &Layout,
    trust_root: &Path,
    server_ca: Option<&Path>,
) -> Result<()> {
    fs::create_dir_all(&layout.out)?;
    let base = debian::tree(
        &profile.debian,
        &profile.rootfs.packages,
        "rootfs",
        &layout.cache,
    )?;
    let kernel_tree = debian::tree(
        &profile.debian,
        std::slice::from_ref(&profile.kernel.package),
        "kernel",
        &layout.cache,
    )?;
    let kernel = KernelTree {
        root: kernel_tree.dir.clone(),
        release: profile.kernel.release.clone(),
    };

    let stage = Stage::start("rootfs: assembling the tree");
    let tree = layout.tree();
    let arch = profile.arch()?;
    copy_tree(&base.dir, &tree)?;
    trim(profile, arch, &tree)?;
    let applets = busybox_applets(&tree, arch)?;
    let linked = link_applets(&tree, &applets)?;
    for dir in [
        "boot", "data", "dev", "proc", "root", "run", "sys", "tmp", "mnt",
    ] {
        fs::create_dir_all(tree.join(dir))?;
    }
    copy_overlay(&layout.workspace.join(&profile.rootfs.overlay), &tree)?;
    console_shell(profile, &tree)?;
    write_cairn_config(profile, &tree, trust_root, server_ca)?;
    fs::write(
        tree.join("etc/modules"),
        profile.kernel.modules.join("\n") + "\n",
    )?;
    let module_count = kernel.install_modules(&profile.kernel.modules, &tree)?;

    let cross_dir = layout.workspace.join("target/cairn/cross");
    for built in cross::build(&layout.workspace, &cross_dir, arch, &profile.binaries)? {
        let dest = tree.join(&built.dest);
        fs::create_dir_all(dest.parent().context("binary destination has a parent")?)?;
        fs::copy(&built.path, &dest)
            .with_context(|| format!("installing {}", built.path.display()))?;
        fs::set_permissions(&dest, fs::Permissions::from_mode(0o755))?;
    }
    fs::create_dir_all(tree.join("usr/share/cairn"))?;
    fs::write(tree.join("usr/share/cairn/packages.txt"), &base.packages)?;
    fs::write(layout.packages(), &base.packages)?;
    stage.done(format!(
        "{} packages, {linked} busybox links, {module_count} modules, {}",
        base.packages.lines().count(),
        mib(tree_size(&tree)?)
    ));

    let stage = Stage::start("rootfs: kernel and initramfs");
    fs::copy(kernel.image(), layout.kernel())
        .with_context(|| format!("copying {}", kernel.image().display()))?;
    let modules_root = layout.out.join("initramfs-modules");
    if modules_root.exists() {
        fs::remove_dir_all(&modules_root)?;
    }
    kernel.install_modules(&profile.kernel.initramfs_modules, &modules_root)?;
    let initrd = initramfs::build(&initramfs::Inputs {
        tree: &tree,
        busybox_applets: &applets,
        modules_root: &modules_root,
        modules: &profile.kernel.initramfs_modules,
        data_exec: &profile.disk.data_exec,
        init: &layout.workspace.join(&profile.initramfs.init),
        binaries: &profile.initramfs.binaries,
        arch,
        mtime: u32::try_from(profile.slot.epoch).context("slot.epoch beyond 2106")?,
    })?;
    fs::write(layout.initrd(), &initrd)?;
    stage.done(format!(
        "vmlinuz {}, initrd.img {}",
        mib(fs::metadata(layout.kernel())?.len()),
        mib(initrd.len() as u64)
    ));
    Ok(())
}

/// The overlay's inittab runs a shell on the serial console (the line with
/// `:respawn:-/bin/sh`): on the profile's console device, or nowhere without
/// `console_shell`.
fn console_shell(profile: &Profile, tree: &Path) -> Result<()> {
    let inittab = tree.join("etc/inittab");
    let text = fs::read_to_string(&inittab).unwrap_or_default();
    let lines: Vec<String> = text
        .lines()
        .filter_map(|line| match line.split_once(":respawn:-/bin/sh") {
            None => Some(line.to_string()),
            Some(_) if !profile.rootfs.console_shell => None,
            Some((_, rest)) => Some(format!(
                "{}::respawn:-/bin/sh{rest}",
                profile.rootfs.serial_console
            )),
        })
        .collect();
    fs::write(&inittab, lines.join("\n") + "\n")?;
    Ok(())
}

fn trim(profile: &Profile, arch: Arch, tree: &Path) -> Result<()> {
    for rel in &profile.rootfs.trim {
        let path = tree.join(rel.replace("{triplet}", arch.triplet()));
        match fs::symlink_metadata(&path) {
            Ok(meta) if meta.is_dir() => fs::remove_dir_all(&path)?,
            Ok(_) => fs::remove_file(&path)?,
            Err(_) => {}
        }
    }
    let cni = tree.join("usr/lib/cni");
    if !profile.rootfs.cni_plugins.is_empty() && cni.is_dir() {
        for entry in fs::read_dir(&cni)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !profile.rootfs.cni_plugins.contains(&name) {
                fs::remove_file(entry.path())?;
            }
        }
    }
    Ok(())
}

/// `bin/sh`, `usr/bin/awk`, ...: the applets of the tree's busybox, from the binary itself
/// (run once, under qemu-user for a foreign architecture; it is static, so it needs
/// nothing else).
pub fn busybox_applets(tree: &Path, arch: Arch) -> Result<Vec<String>> {
    let busybox = tree.join("bin/busybox");
    let mut command = match arch.user_emulator() {
        Some(emulator) => {
            let mut command = Command::new(emulator);
            command.arg(&busybox);
            command
        }
        None => Command::new(&busybox),
    };
    let list = stdout(command.arg("--list-full"))?;
    Ok(list
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect())
}

/// Links each applet to busybox unless a real program of that name is in the tree.
fn link_applets(tree: &Path, applets: &[String]) -> Result<usize> {
    let mut linked = 0;
    for applet in applets {
        let name = applet.rsplit('/').next().unwrap_or(applet);
        let exists = ["bin", "sbin", "usr/bin", "usr/sbin"]
            .iter()
            .any(|dir| fs::symlink_metadata(tree.join(dir).join(name)).is_ok());
        if exists {
            continue;
        }
        let path = tree.join(applet);
        fs::create_dir_all(path.parent().context("applet path has a parent")?)?;
        symlink("/bin/busybox", &path)?;
        linked += 1;
    }
    Ok(linked)
}

/// Copies `overlay` over `tree`: files 0755 when executable in the source, else 0644.
fn copy_overlay(overlay: &Path, tree: &Path) -> Result<()> {
    for entry in fs::read_dir(overlay).with_context(|| format!("reading {}", overlay.display()))? {
        let entry = entry?;
        let dest = tree.join(entry.file_name());
        let kind = entry.file_type()?;
        if kind.is_dir() {
            fs::create_dir_all(&dest)?;
            copy_overlay(&entry.path(), &dest)?;
        } else {
            if fs::symlink_metadata(&dest).is_ok() {
                fs::remove_file(&dest)?;
            }
            fs::copy(entry.path(), &dest)?;
            let executable = entry.metadata()?.permissions().mode() & 0o111 != 0;
            let mode = if executable { 0o755 } else { 0o644 };
            fs::set_permissions(&dest, fs::Permissions::from_mode(mode))?;
        }
    }
    Ok(())
}

/// The pinned fleet-server CA, in `/etc/cairn`.
const SERVER_CA_FILE: &str = "server-ca.pem";

/// `/etc/cairn`: what cairnd needs to know about this device type and image.
fn write_cairn_config(
    profile: &Profile,
    tree: &Path,
    trust_root: &Path,
    server_ca: Option<&Path>,
) -> Result<()> {
    let dir = tree.join("etc/cairn");
    fs::create_dir_all(dir.join("health.d"))?;
    fs::copy(trust_root, dir.join("root.json"))
        .with_context(|| format!("installing trust root {}", trust_root.display()))?;
    if let Some(ca) = server_ca {
        fs::copy(ca, dir.join(SERVER_CA_FILE))
            .with_context(|| format!("installing the server CA {}", ca.display()))?;
    }
    fs::write(dir.join("version"), format!("{}\n", profile.version))?;
    fs::write(
        dir.join("release"),
        format!(
            "CAIRN_VERSION={}\nCAIRN_COMPATIBLE={}\nCAIRN_PROFILE={}\n",
            profile.version, profile.compatible, profile.name
        ),
    )?;
    fs::write(dir.join("system.toml"), system_toml(profile))?;
    for (name, check) in &profile.health_checks {
        fs::write(dir.join("health.d").join(format!("{name}.toml")), check)?;
    }
    Ok(())
}

/// cairnd's configuration (updater/src/config.rs): slots, boot state, paths.
fn system_toml(profile: &Profile) -> String {
    let mut text = format!(
        "# Written by cairn-image from profile {name}.\n\
         compatible = \"{compatible}\"\n\
         trust_root = \"/etc/cairn/root.json\"\n\
         data_dir = \"/data/cairn\"\n\
         health_dir = \"/etc/cairn/health.d\"\n\n",
        name = profile.name,
        compatible = profile.compatible,
    );
    // rcS mounts the boot partition (the ESP on the UEFI path) at /boot.
    if profile.efi.is_some() {
        text.push_str("[bootloader]\nbackend = \"efi\"\nesp = \"/boot\"\n");
        let esp = EfiEntryStore::new("/boot");
        for slot in [SlotId::A, SlotId::B] {
            let dir = layout::slot_dir(slot);
            text.push_str(&format!(
                "\n[slots.{slot}]\n\
                 [slots.{slot}.images]\n\
                 rootfs = {{ device = \"PARTLABEL=rootfs-{dir}\" }}\n\
                 uki = {{ file = \"{}\" }}\n",
                esp.staged_path(slot).display()
            ));
        }
    } else {
        text.push_str("[bootloader]\nbackend = \"uboot-env\"\ndir = \"/boot\"\n");
        for (slot, dir) in [("A", "a"), ("B", "b")] {
            text.push_str(&format!(
                "\n[slots.{slot}]\n\
                 slot_env = \"/boot/{dir}/slot.env\"\n\
                 [slots.{slot}.images]\n\
                 rootfs = {{ device = \"PARTLABEL=rootfs-{dir}\" }}\n\
                 kernel = {{ file = \"/boot/{dir}/vmlinuz\" }}\n\
                 initrd = {{ file = \"/boot/{dir}/initrd.img\" }}\n"
            ));
        }
    }
    if let Some(health) = &profile.health {
        text.push_str(&format!(
            "\n[health]\ndeadline_secs = {}\ninterval_secs = {}\n",
            health.deadline_secs, health.interval_secs
        ));
    }
    let reboot = profile.reboot.as_ref();
    text.push_str(&format!(
        "\n[reboot]\nforce_after_secs = {}\n",
        reboot.map_or(super::profile::DEFAULT_REBOOT_FORCE_AFTER_SECS, |r| r
            .force_after_secs)
    ));
    if let Some(command) = reboot.and_then(|r| r.command.as_ref()) {
        text.push_str(&format!(
            "command = {}\n",
            toml::Value::from(command.clone())
        ));
    }
    // The slot epoch stands for the build time: a reproducible image has no other.
    text.push_str(&format!(
        "\n[clock]\nfloor = {}\nset_system_clock = true\nntp_servers = {}\n",
        profile.slot.epoch,
        toml::Value::from(
            profile
                .clock
                .as_ref()
                .map(|c| c.ntp_servers.clone())
                .unwrap_or_default()
        )
    ));
    if let Some(watchdog) = &profile.watchdog {
        text.push_str(&format!(
            "\n[watchdog]\ndevice = \"/dev/watchdog\"\ntimeout_secs = {}\n",
            watchdog.timeout_secs
        ));
    }
    if let Some(server) = &profile.server {
        text.push_str(&format!(
            "\n[server]\nurl = \"{}\"\npoll_secs = {}\n",
            server.url, server.poll_secs
        ));
        if server.ca.is_some() {
            text.push_str(&format!("ca = \"/etc/cairn/{SERVER_CA_FILE}\"\n"));
        }
    }
    if let Some(tpm) = &profile.tpm {
        text.push_str(&format!("\n[tpm]\ntcti = \"{}\"\n", tpm.tcti));
    }
    if let Some(containers) = &profile.containers {
        text.push_str(&format!(
            "\n[containers]\nsocket = \"{}\"\ndir = \"/data/cairn/containers\"\n",
            containers.socket
        ));
    }
    text
}

fn tree_size(tree: &Path) -> Result<u64> {
    let mut total = 0;
    for entry in fs::read_dir(tree)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            total += tree_size(&entry.path())?;
        } else if kind.is_file() {
            total += entry.metadata()?.len();
        }
    }
    Ok(total)
}

/// Bytes of regular files in the tree (the uncompressed size of a slot's content).
pub fn content_size(tree: &Path) -> Result<u64> {
    tree_size(tree)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_toml_describes_both_slots_for_cairnd() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("profiles/qemu-arm64.toml");
        let profile = Profile::load(&path).unwrap();
        let config: toml::Value = toml::from_str(&system_toml(&profile)).unwrap();
        assert_eq!(config["compatible"].as_str(), Some("cairn-qemu-arm64"));
        assert_eq!(config["bootloader"]["backend"].as_str(), Some("uboot-env"));
        assert_eq!(config["bootloader"]["dir"].as_str(), Some("/boot"));
        assert_eq!(
            config["containers"]["socket"].as_str(),
            Some("/run/containerd/containerd.sock"),
            "the image's containerd (boot/rootfs/etc/containerd/config.toml)"
        );
        for (slot, dir) in [("A", "a"), ("B", "b")] {
            let images = &config["slots"][slot]["images"];
            assert_eq!(
                images["rootfs"]["device"].as_str(),
                Some(format!("PARTLABEL=rootfs-{dir}").as_str())
            );
            assert_eq!(
                images["kernel"]["file"].as_str(),
                Some(format!("/boot/{dir}/vmlinuz").as_str())
            );
            assert_eq!(
                config["slots"][slot]["slot_env"].as_str(),
                Some(format!("/boot/{dir}/slot.env").as_str())
            );
        }
    }

    #[test]
    fn system_toml_on_the_uefi_path_names_the_esp_and_each_slots_staged_uki() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("profiles/qemu-x86_64-efi.toml");
        let profile = Profile::load(&path).unwrap();
        let config: toml::Value = toml::from_str(&system_toml(&profile)).unwrap();
        assert_eq!(config["compatible"].as_str(), Some("cairn-qemu-x86_64-efi"));
        assert_eq!(config["bootloader"]["backend"].as_str(), Some("efi"));
        assert_eq!(config["bootloader"]["esp"].as_str(), Some("/boot"));
        for (slot, dir) in [("A", "a"), ("B", "b")] {
            let images = config["slots"][slot]["images"].as_table().unwrap();
            let names: Vec<&String> = images.keys().collect();
            assert_eq!(
                names,
                ["rootfs", "uki"],
                "no kernel or initrd files on this path"
            );
            assert_eq!(
                images["uki"]["file"].as_str(),
                Some(format!("/boot/EFI/Linux/cairn-{dir}.staged").as_str())
            );
            assert!(config["slots"][slot].get("slot_env").is_none());
        }
    }

    #[test]
    fn the_console_shell_runs_on_the_profiles_serial_console() {
        let dir = tempfile::tempdir().unwrap();
        let overlay = Path::new(env!("CARGO_MANIFEST_DIR")).join("../boot/rootfs/etc/inittab");
        fs::create_dir_all(dir.path().join("etc")).unwrap();
        fs::copy(overlay, dir.path().join("etc/inittab")).unwrap();
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("profiles/qemu-x86_64-efi.toml");
        let mut profile = Profile::load(&path).unwrap();
        console_shell(&profile, dir.path()).unwrap();
        let inittab = fs::read_to_string(dir.path().join("etc/inittab")).unwrap();
        assert!(inittab.contains("\nttyS0::respawn:-/bin/sh\n"), "{inittab}");
        assert!(!inittab.contains("ttyAMA0"), "{inittab}");
        profile.rootfs.console_shell = false;
        console_shell(&profile, dir.path()).unwrap();
        let inittab = fs::read_to_string(dir.path().join("etc/inittab")).unwrap();
        assert!(!inittab.contains("/bin/sh"), "{inittab}");
        assert!(inittab.contains("cairnd"), "{inittab}");
    }
}
