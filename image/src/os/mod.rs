//! Building the device OS: a Debian arm64 root tree ([`rootfs`]), a dm-verity protected
//! erofs slot image ([`slot`]) and a bootable GPT disk ([`disk`]). Every stage calls the
//! Debian tools (mmdebstrap, mkfs.erofs, veritysetup, mkfs.vfat, mtools, sfdisk, mkfs.ext4),
//! never loop devices or mounts, so it runs unprivileged-style on any build machine.

pub mod arch;
pub mod bmap;
pub mod cpio;
pub mod cross;
pub mod debian;
pub mod disk;
pub mod elf;
pub mod esp;
pub mod initramfs;
pub mod kernel;
pub mod layout;
pub mod pcr7;
pub mod pe;
pub mod pinned_pcrs;
pub mod pipeline;
pub mod profile;
pub mod progress;
pub mod rootfs;
pub mod run;
pub mod secureboot;
pub mod slot;
pub mod uboot;
pub mod uki;
