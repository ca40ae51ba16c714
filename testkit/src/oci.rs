//! Container images for tests, built offline: an OCI image layout archive (what `ctr
//! images import` and `cairn-image bundle create --oci` take) whose one layer holds a
//! static busybox and its applet links. No registry, no Docker.
//!
//! The layout (OCI image-spec, "image layout"): `oci-layout`, `index.json` naming one
//! manifest, and `blobs/sha256/<hex>` for the manifest, the config and the layer. The
//! index entry carries the full image name in `io.containerd.image.name`, which
//! containerd's importer uses as the image's name, and the tag in
//! `org.opencontainers.image.ref.name`.

use std::path::Path;

use serde_json::json;
use sha2::{Digest, Sha256};

/// Where Debian's busybox-static puts its binary (`cargo xtask setup` installs it).
pub const HOST_BUSYBOX: &str = "/bin/busybox";

/// Applets linked in the layer's `/bin`.
const APPLETS: &[&str] = &["sh", "sleep", "true", "false", "echo", "cat", "ls", "touch"];

/// What was built.
#[derive(Debug, Clone)]
pub struct OciImage {
    /// Fully qualified, as the CRI wants it: `docker.io/local/<name>:<tag>`.
    pub name: String,
    /// `sha256:<hex>` of the manifest.
    pub manifest_digest: String,
}

/// Writes an OCI archive of one image `docker.io/local/<name>:<tag>` to `out`: busybox
/// (`busybox`, a static binary for `architecture`, e.g. "amd64" or "arm64") at
/// `/bin/busybox` with applet links, and `cmd` as the image's command. Deterministic:
/// the same inputs give the same bytes.
pub fn busybox_image(
    busybox: &Path,
    architecture: &str,
    name: &str,
    tag: &str,
    cmd: &[&str],
    out: &Path,
) -> OciImage {
    let full_name = format!("docker.io/local/{name}:{tag}");
    busybox_image_named(busybox, architecture, &full_name, cmd, out)
}

/// [`busybox_image`] under any fully qualified name (`registry.k8s.io/pause:3.6`: a
/// stand-in a runtime finds locally instead of pulling).
pub fn busybox_image_named(
    busybox: &Path,
    architecture: &str,
    full_name: &str,
    cmd: &[&str],
    out: &Path,
) -> OciImage {
    let tag = full_name.rsplit_once(':').map_or("latest", |(_, t)| t);
    let binary = std::fs::read(busybox)
        .unwrap_or_else(|e| panic!("{}: {e} (busybox-static installed?)", busybox.display()));
    let layer = layer_tar(&binary);
    let layer_digest = digest(&layer);
    let config = serde_json::to_vec(&json!({
        "architecture": architecture,
        "os": "linux",
        "config": { "Cmd": cmd, "Env": ["PATH=/bin"], "WorkingDir": "/" },
        "rootfs": { "type": "layers", "diff_ids": [layer_digest] },
    }))
    .unwrap();
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": digest(&config),
            "size": config.len(),
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": layer_digest,
            "size": layer.len(),
        }],
    }))
    .unwrap();
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": digest(&manifest),
            "size": manifest.len(),
            "annotations": {
                "io.containerd.image.name": full_name,
                "org.opencontainers.image.ref.name": tag,
            },
        }],
    }))
    .unwrap();
    let mut archive = tar::Builder::new(Vec::new());
    append_file(
        &mut archive,
        "oci-layout",
        br#"{"imageLayoutVersion":"1.0.0"}"#,
        0o644,
    );
    append_file(&mut archive, "index.json", &index, 0o644);
    append_dir(&mut archive, "blobs/");
    append_dir(&mut archive, "blobs/sha256/");
    for blob in [&manifest, &config, &layer] {
        let path = format!("blobs/sha256/{}", &digest(blob)["sha256:".len()..]);
        append_file(&mut archive, &path, blob, 0o644);
    }
    std::fs::write(out, archive.into_inner().unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", out.display()));
    OciImage {
        name: full_name.to_string(),
        manifest_digest: digest(&manifest),
    }
}

/// The one layer: `/bin/busybox`, applet links, an empty `/tmp`.
fn layer_tar(busybox: &[u8]) -> Vec<u8> {
    let mut layer = tar::Builder::new(Vec::new());
    append_dir(&mut layer, "bin/");
    append_dir(&mut layer, "tmp/");
    append_file(&mut layer, "bin/busybox", busybox, 0o755);
    for applet in APPLETS {
        let mut header = header(tar::EntryType::Symlink, 0o777, 0);
        layer
            .append_link(&mut header, format!("bin/{applet}"), "busybox")
            .unwrap();
    }
    layer.into_inner().unwrap()
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut header = tar::Header::new_ustar();
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_size(size);
    header.set_mtime(0);
    header.set_uid(0);
    header.set_gid(0);
    header
}

fn append_file(archive: &mut tar::Builder<Vec<u8>>, path: &str, bytes: &[u8], mode: u32) {
    let mut header = header(tar::EntryType::Regular, mode, bytes.len() as u64);
    archive.append_data(&mut header, path, bytes).unwrap();
}

fn append_dir(archive: &mut tar::Builder<Vec<u8>>, path: &str) {
    let mut header = header(tar::EntryType::Directory, 0o755, 0);
    archive.append_data(&mut header, path, &[][..]).unwrap();
}

fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_archive_is_an_oci_layout_whose_blobs_match_their_digests() {
        let dir = tempfile::tempdir().unwrap();
        let fake_busybox = dir.path().join("busybox");
        std::fs::write(&fake_busybox, b"\x7fELF not really").unwrap();
        let out = dir.path().join("image.tar");
        let image = busybox_image(
            &fake_busybox,
            "amd64",
            "sleeper",
            "1",
            &["sleep", "1"],
            &out,
        );
        assert_eq!(image.name, "docker.io/local/sleeper:1");
        let bytes = std::fs::read(&out).unwrap();
        let mut files = std::collections::BTreeMap::new();
        for entry in tar::Archive::new(&bytes[..]).entries().unwrap() {
            let mut entry = entry.unwrap();
            let path = entry.path().unwrap().display().to_string();
            let mut content = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut content).unwrap();
            files.insert(path, content);
        }
        let index: serde_json::Value = serde_json::from_slice(&files["index.json"]).unwrap();
        assert_eq!(index["manifests"][0]["digest"], image.manifest_digest);
        let blobs: Vec<_> = files
            .keys()
            .filter(|p| p.starts_with("blobs/sha256/") && p.len() > 13)
            .collect();
        assert_eq!(blobs.len(), 3);
        for path in blobs {
            assert_eq!(
                &digest(&files[path])["sha256:".len()..],
                &path["blobs/sha256/".len()..]
            );
        }
        let again = dir.path().join("again.tar");
        busybox_image(
            &fake_busybox,
            "amd64",
            "sleeper",
            "1",
            &["sleep", "1"],
            &again,
        );
        assert_eq!(std::fs::read(&again).unwrap(), bytes, "deterministic");
    }
}
