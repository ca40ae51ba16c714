//! Container image archives a bundle carries (`bundle create --oci NAME=ARCHIVE`), checked
//! before they are bundled: an OCI image layout in a tar archive (the OCI image-spec's
//! "image layout": `oci-layout`, `index.json`, `blobs/<alg>/<hex>`), whose index names
//! the images devices will import into containerd. A device runs containerd's own
//! importer on it; this check only makes sure a release engineer bundles what they meant
//! to, with a clear error otherwise.

use std::collections::BTreeSet;
use std::io::Read;
use std::path::Path;

/// At most this much of `index.json` is read.
const MAX_INDEX: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum OciError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not an OCI image layout archive: {why}")]
    NotOci { path: String, why: String },
}

/// The names of the images in the archive at `path` (`io.containerd.image.name`, else
/// `org.opencontainers.image.ref.name`, else the manifest digest), after checking it is
/// an OCI image layout whose index names at least one manifest that the archive holds.
pub fn image_names(path: &Path) -> Result<Vec<String>, OciError> {
    let shown = path.display().to_string();
    let io = |source| OciError::Io {
        path: shown.clone(),
        source,
    };
    let not_oci = |why: String| OciError::NotOci {
        path: shown.clone(),
        why,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let mut archive = tar::Archive::new(std::io::BufReader::new(file));
    let mut layout = false;
    let mut index = None;
    let mut blobs = BTreeSet::new();
    for entry in archive.entries().map_err(io)? {
        let mut entry = entry.map_err(io)?;
        let name = entry.path().map_err(io)?.to_string_lossy().into_owned();
        let name = name.trim_start_matches("./");
        match name {
            "oci-layout" => layout = true,
            "index.json" => {
                let mut text = Vec::new();
                (&mut entry)
                    .take(MAX_INDEX)
                    .read_to_end(&mut text)
                    .map_err(io)?;
                index = Some(text);
            }
            _ => {
                if let Some(rest) = name.strip_prefix("blobs/") {
                    if let Some((alg, hex)) = rest.split_once('/') {
                        if !hex.is_empty() {
                            blobs.insert(format!("{alg}:{hex}"));
                        }
                    }
                }
            }
        }
    }
    if !layout {
        return Err(not_oci("no oci-layout file".into()));
    }
    let index = index.ok_or_else(|| not_oci("no index.json".into()))?;
    let index: serde_json::Value =
        serde_json::from_slice(&index).map_err(|e| not_oci(format!("index.json: {e}")))?;
    let manifests = index["manifests"]
        .as_array()
        .filter(|m| !m.is_empty())
        .ok_or_else(|| not_oci("index.json names no manifests".into()))?;
    let mut names = Vec::new();
    for m in manifests {
        let digest = m["digest"]
            .as_str()
            .ok_or_else(|| not_oci("a manifest in index.json has no digest".into()))?;
        if !blobs.contains(digest) {
            return Err(not_oci(format!(
                "index.json names {digest}, which is not in blobs/"
            )));
        }
        let annotation = |key: &str| m["annotations"][key].as_str().map(str::to_string);
        names.push(
            annotation("io.containerd.image.name")
                .or_else(|| annotation("org.opencontainers.image.ref.name"))
                .unwrap_or_else(|| digest.to_string()),
        );
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archive(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (path, bytes) in files {
            let mut header = tar::Header::new_ustar();
            header.set_size(bytes.len() as u64);
            header.set_mode(0o644);
            builder.append_data(&mut header, path, *bytes).unwrap();
        }
        builder.into_inner().unwrap()
    }

    #[test]
    fn an_oci_archive_names_its_images_and_anything_else_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let index = br#"{"schemaVersion":2,"manifests":[{"digest":"sha256:ab12","size":2,
            "annotations":{"io.containerd.image.name":"docker.io/local/pause:3.9"}}]}"#;
        let good = dir.path().join("images.tar");
        std::fs::write(
            &good,
            archive(&[
                ("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#),
                ("index.json", index),
                ("blobs/sha256/ab12", b"{}"),
            ]),
        )
        .unwrap();
        assert_eq!(image_names(&good).unwrap(), ["docker.io/local/pause:3.9"]);

        let cases: [(&str, Vec<u8>, &str); 3] = [
            (
                "plain.tar",
                archive(&[("index.json", index)]),
                "no oci-layout",
            ),
            (
                "missing-blob.tar",
                archive(&[("oci-layout", b"{}"), ("index.json", index)]),
                "index.json names sha256:ab12, which is not in blobs/",
            ),
            (
                "empty-index.tar",
                archive(&[
                    ("oci-layout", b"{}"),
                    ("index.json", br#"{"manifests":[]}"#),
                ]),
                "index.json names no manifests",
            ),
        ];
        for (name, bytes, why) in cases {
            let path = dir.path().join(name);
            std::fs::write(&path, bytes).unwrap();
            let err = image_names(&path).unwrap_err().to_string();
            assert!(
                err.contains(&format!("{name} is not an OCI image layout archive: {why}")),
                "{err}"
            );
        }
        let text = dir.path().join("notes.txt");
        std::fs::write(&text, vec![b'x'; 2000]).unwrap();
        assert!(image_names(&text).is_err());
    }
}
