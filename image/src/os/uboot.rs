//! A copy of Debian's qemu_arm64 U-Boot for tests: the built-in default environment is
//! patched in place (same lengths) to `bootdelay=0` and `boot_targets=virtio0`, which saves
//! the 2 s autoboot countdown and the USB/SCSI scans on every boot. The boot flow itself
//! (distro boot → /boot.scr) is unchanged.

use std::path::Path;

use anyhow::{bail, Context, Result};

pub const DEBIAN_UBOOT: &str = "/usr/lib/u-boot/qemu_arm64/u-boot.bin";

pub fn patched(original: &[u8]) -> Result<Vec<u8>> {
    let mut image = original.to_vec();
    replace_same_length(&mut image, b"bootdelay=2\0", b"bootdelay=0\0")?;
    let targets = b"boot_targets=qfw usb0 scsi0 virtio0 nvme0 dhcp \0";
    let mut wanted = b"boot_targets=virtio0".to_vec();
    wanted.resize(targets.len() - 1, b' ');
    wanted.push(0);
    replace_same_length(&mut image, targets, &wanted)?;
    Ok(image)
}

pub fn write_patched(dest: &Path) -> Result<()> {
    let original =
        std::fs::read(DEBIAN_UBOOT).with_context(|| format!("reading {DEBIAN_UBOOT}"))?;
    std::fs::write(dest, patched(&original)?)?;
    Ok(())
}

fn replace_same_length(image: &mut [u8], from: &[u8], to: &[u8]) -> Result<()> {
    let Some(at) = image.windows(from.len()).position(|w| w == from) else {
        bail!(
            "u-boot.bin has no {:?}: another U-Boot build?",
            String::from_utf8_lossy(from)
        );
    };
    image[at..at + to.len()].copy_from_slice(to);
    Ok(())
}
