//! Artifacts: a release's images of kind `artifact`, decoded out of the verified bundle
//! into the blob directory as `<sha256>.artifact` when the release is added, so a hawkBit
//! client can download them as they are (with Range requests) and check the digests it
//! knows (SWUpdate checks SHA-1; hawkBit also gives MD5 and SHA-256).

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use cairn_bundle::{BundleFile, Image, ImageKind, Manifest};
use md5::Md5;
use sha1::Sha1;
use sha2::{Digest, Sha256};
use sqlx::Row as _;

use crate::db::{random_id, Db};
use crate::error::ApiResult;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Artifact {
    /// The image's name in the bundle: the file name the client sees.
    pub filename: String,
    pub sha256: String,
    pub sha1: String,
    pub md5: String,
    pub size: u64,
}

pub fn blob_name(sha256: &str) -> String {
    format!("{sha256}.artifact")
}

pub fn is_artifact(image: &Image) -> bool {
    image.kind == ImageKind::Artifact
}

/// Decodes every artifact of the bundle at `bundle` into `blobs` (written aside, flushed
/// and renamed into place, so a crash never leaves a partial artifact under its name).
/// Blocking: run it off the async threads.
pub fn extract(bundle: &Path, manifest: &Manifest, blobs: &Path) -> anyhow::Result<Vec<Artifact>> {
    let mut out = Vec::new();
    let file = BundleFile::open(bundle)?;
    for image in manifest.images.iter().filter(|i| is_artifact(i)) {
        let staged = blobs.join(format!(".artifact-{}", random_id("")));
        let written = (|| -> anyhow::Result<Artifact> {
            let writer = Digesting::new(std::fs::File::create(&staged)?);
            let writer = file.extract_full(image, writer)?;
            let (file, sha256, sha1, md5, size) = writer.finish();
            file.sync_all()?;
            anyhow::ensure!(
                sha256 == image.sha256,
                "artifact {} decodes to other bytes",
                image.name
            );
            Ok(Artifact {
                filename: image.name.clone(),
                sha256,
                sha1,
                md5,
                size,
            })
        })();
        match written {
            Ok(artifact) => {
                std::fs::rename(&staged, blobs.join(blob_name(&artifact.sha256)))?;
                out.push(artifact);
            }
            Err(e) => {
                let _ = std::fs::remove_file(&staged);
                return Err(e);
            }
        }
    }
    if !out.is_empty() {
        std::fs::File::open(blobs)?.sync_all()?;
    }
    Ok(out)
}

/// Records the digests of `artifacts` (the same bytes in two releases are one row).
pub async fn record(db: &Db, artifacts: &[Artifact]) -> ApiResult<()> {
    for a in artifacts {
        sqlx::query(
            "INSERT INTO ddi_artifacts (sha256, sha1, md5, size) VALUES ($1, $2, $3, $4) \
             ON CONFLICT DO NOTHING",
        )
        .bind(&a.sha256)
        .bind(&a.sha1)
        .bind(&a.md5)
        .bind(a.size as i64)
        .execute(&db.pool)
        .await?;
    }
    Ok(())
}

/// The artifacts of a release's manifest, with their digests.
pub async fn of_release(db: &Db, manifest: &Manifest) -> ApiResult<Vec<Artifact>> {
    let mut out = Vec::new();
    for image in manifest.images.iter().filter(|i| is_artifact(i)) {
        let row = sqlx::query("SELECT sha1, md5, size FROM ddi_artifacts WHERE sha256 = $1")
            .bind(&image.sha256)
            .fetch_optional(&db.pool)
            .await?
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "artifact {} ({}) has no digests recorded",
                    image.name,
                    image.sha256
                )
            })?;
        out.push(Artifact {
            filename: image.name.clone(),
            sha256: image.sha256.clone(),
            sha1: row.try_get("sha1")?,
            md5: row.try_get("md5")?,
            size: row.try_get::<i64, _>("size")? as u64,
        });
    }
    Ok(out)
}

/// Where an artifact's bytes are.
pub fn path(blobs: &Path, sha256: &str) -> PathBuf {
    blobs.join(blob_name(sha256))
}

/// A writer that hashes what passes through it three ways.
struct Digesting<W> {
    inner: W,
    sha256: Sha256,
    sha1: Sha1,
    md5: Md5,
    size: u64,
}

impl<W: Write> Digesting<W> {
    fn new(inner: W) -> Self {
        Digesting {
            inner,
            sha256: Sha256::new(),
            sha1: Sha1::new(),
            md5: Md5::new(),
            size: 0,
        }
    }

    fn finish(self) -> (W, String, String, String, u64) {
        (
            self.inner,
            hex::encode(self.sha256.finalize()),
            hex::encode(self.sha1.finalize()),
            hex::encode(self.md5.finalize()),
            self.size,
        )
    }
}

impl<W: Write> Write for Digesting<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.sha256.update(&buf[..n]);
        self.sha1.update(&buf[..n]);
        self.md5.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}
