//! The per-slot `slot.env` the U-Boot script imports (boot/BOOT-STATE.md): the kernel
//! arguments that bind the slot's kernel to its root filesystem's verity root hash.

use std::path::Path;

use cairn_bundle::Manifest;

use crate::install::TargetError;

/// The `slot_args` value for a manifest: verity parameters of its `rootfs` image, if it
/// has them, and the version.
pub fn slot_args(manifest: &Manifest) -> String {
    let mut args = Vec::new();
    if let Some(v) = manifest.image("rootfs").and_then(|i| i.verity.as_ref()) {
        args.push(format!("cairn.verity.root_hash={}", v.root_hash));
        args.push(format!("cairn.verity.salt={}", v.salt));
        args.push(format!(
            "cairn.verity.data_blocks={}",
            v.data_size / v.data_block_size.max(1) as u64
        ));
        args.push(format!("cairn.verity.hash_offset={}", v.data_size));
    }
    args.push(format!("cairn.version={}", manifest.version));
    args.join(" ")
}

/// Writes `slot.env` atomically.
pub fn write(path: &Path, manifest: &Manifest) -> Result<(), TargetError> {
    let text = format!("slot_args={}\n", slot_args(manifest));
    cairn_atomic::write(path, text.as_bytes()).map_err(|source| TargetError::Io {
        path: path.display().to_string(),
        source,
    })
}
