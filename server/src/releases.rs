//! Releases: bundles verified against the server's trust root, kept as files in the blob
//! directory (named by their sha256) or served from an external URL.

use std::path::{Path, PathBuf};

use anyhow::Context;
use cairn_bundle::{BundleFile, Manifest, Policy, TrustRoot};
use serde::Serialize;
use sqlx::Row as _;

use crate::db::{now_ms, Db, Row};
use crate::error::{ApiError, ApiResult};

#[derive(Debug, Clone, Serialize)]
pub struct Release {
    pub id: String,
    pub compatible: String,
    pub version: String,
    pub security_version: u64,
    pub bundle_sha256: String,
    pub bundle_size: u64,
    /// Where devices fetch the bundle: a path under `/blobs/` or an external URL.
    pub blob_name: Option<String>,
    pub external_url: Option<String>,
    pub images: Vec<ReleaseImage>,
    pub created_at: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReleaseImage {
    pub name: String,
    pub size: u64,
    pub sha256: String,
    pub full_bytes: u64,
    /// sha256 of each image a delta can start from.
    pub delta_sources: Vec<String>,
}

impl Release {
    /// The absolute URL a device downloads from.
    pub fn bundle_url(&self, public_url: &str) -> String {
        match (&self.external_url, &self.blob_name) {
            (Some(url), _) => url.clone(),
            (None, Some(name)) => format!("{}/blobs/{name}", public_url.trim_end_matches('/')),
            (None, None) => String::new(),
        }
    }
}

pub fn release_id(compatible: &str, version: &str) -> String {
    format!("{compatible}@{version}")
}

/// An uploaded bundle (`body`), streamed to a staging file in `blobs`, then [`add`]ed.
/// The staging file is gone afterwards: moved into place, or removed on any failure.
pub async fn add_upload(
    db: &Db,
    blobs: &Path,
    root: Option<&TrustRoot>,
    body: axum::body::Body,
    external_url: Option<String>,
) -> ApiResult<Release> {
    let staged = blobs.join(format!(".upload-{}", crate::db::random_id("")));
    let result = match stream_to(&staged, body).await {
        Ok(()) => add(db, blobs, root, staged.clone(), external_url).await,
        Err(e) => Err(e),
    };
    // A no-op when it was moved.
    let _ = tokio::fs::remove_file(&staged).await;
    result
}

async fn stream_to(path: &Path, mut body: axum::body::Body) -> ApiResult<()> {
    use http_body_util::BodyExt;
    use tokio::io::AsyncWriteExt;
    let mut file = tokio::fs::File::create(path)
        .await
        .map_err(anyhow::Error::from)?;
    while let Some(frame) = body.frame().await {
        let frame =
            frame.map_err(|e| ApiError::bad_request("upload", format!("reading upload: {e}")))?;
        if let Ok(data) = frame.into_data() {
            file.write_all(&data).await.map_err(anyhow::Error::from)?;
        }
    }
    file.flush().await.map_err(anyhow::Error::from)?;
    Ok(())
}

/// Verifies the bundle at `staged` (metadata, signatures against `root`, every payload),
/// moves it into `blobs` unless it is served from `external_url`, and records it.
pub async fn add(
    db: &Db,
    blobs: &Path,
    root: Option<&TrustRoot>,
    staged: PathBuf,
    external_url: Option<String>,
) -> ApiResult<Release> {
    let root = root.cloned().ok_or_else(|| {
        ApiError::conflict(
            "no-trust-root",
            "the server has no trust root configured (start it with --root root.json)",
        )
    })?;
    let artifact_dir = blobs.to_path_buf();
    let checked = tokio::task::spawn_blocking(move || {
        let checked = check_bundle(&staged, &root)?;
        // Artifacts for hawkBit clients are served as they are: decoded once, here.
        let artifacts = crate::ddi::artifacts::extract(&staged, &checked.0, &artifact_dir)
            .context("decoding the bundle's artifacts")?;
        ApiResult::Ok((staged, checked, artifacts))
    })
    .await
    .map_err(|e| anyhow::anyhow!("bundle check task: {e}"))?;
    let (staged, (manifest, sha256, size), artifacts) = checked?;
    crate::ddi::artifacts::record(db, &artifacts).await?;
    let blob_name = match external_url {
        Some(_) => None,
        None => {
            let name = format!("{sha256}.cairn");
            tokio::fs::rename(&staged, blobs.join(&name))
                .await
                .with_context(|| format!("moving bundle into {}", blobs.display()))?;
            Some(name)
        }
    };
    let version = manifest.version.to_string();
    let id = release_id(&manifest.compatible, &version);
    let manifest_json = serde_json::to_string(&manifest).context("encoding manifest")?;
    let inserted = sqlx::query(
        "INSERT INTO releases (id, compatible, version, security_version, bundle_sha256, \
         bundle_size, blob_name, external_url, manifest, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT DO NOTHING",
    )
    .bind(&id)
    .bind(&manifest.compatible)
    .bind(&version)
    .bind(manifest.security_version as i64)
    .bind(&sha256)
    .bind(size as i64)
    .bind(&blob_name)
    .bind(&external_url)
    .bind(&manifest_json)
    .bind(now_ms())
    .execute(&db.pool)
    .await?;
    if inserted.rows_affected() == 0 {
        if let Some(name) = &blob_name {
            remove_if_unreferenced(db, blobs, name).await?;
        }
        return Err(ApiError::conflict(
            "release-exists",
            format!("release {id} already exists"),
        ));
    }
    tracing::info!(release = %id, %sha256, "release added");
    get(db, &id).await
}

/// Removes a blob that no release names (it was moved in for a release that turned out
/// to exist already with other bytes).
async fn remove_if_unreferenced(db: &Db, blobs: &Path, name: &str) -> ApiResult<()> {
    let used: i64 = sqlx::query("SELECT COUNT(*) AS n FROM releases WHERE blob_name = $1")
        .bind(name)
        .fetch_one(&db.pool)
        .await?
        .try_get("n")?;
    if used == 0 {
        let _ = tokio::fs::remove_file(blobs.join(name)).await;
    }
    Ok(())
}

/// The checks a release must pass; returns the manifest, the file's sha256 and size.
fn check_bundle(path: &Path, root: &TrustRoot) -> ApiResult<(Manifest, String, u64)> {
    let invalid = |e: cairn_bundle::Error| {
        ApiError::new(
            axum::http::StatusCode::UNPROCESSABLE_ENTITY,
            "bundle-invalid",
            format!("bundle failed verification: {e}"),
        )
    };
    let file = BundleFile::open(path).map_err(invalid)?;
    let verified = file.verify(root, &Policy::any_device()).map_err(invalid)?;
    file.check_payloads(|_| {}).map_err(invalid)?;
    let mut reader = std::fs::File::open(path).context("reopening bundle")?;
    let (sha256, size) = cairn_bundle::sha256_reader(&mut reader).context("hashing bundle")?;
    Ok((verified.manifest, sha256, size))
}

const COLUMNS: &str = "id, compatible, version, security_version, bundle_sha256, bundle_size, \
                       blob_name, external_url, manifest, created_at";

pub async fn get(db: &Db, id: &str) -> ApiResult<Release> {
    let row = sqlx::query(&format!("SELECT {COLUMNS} FROM releases WHERE id = $1"))
        .bind(id)
        .fetch_optional(&db.pool)
        .await?
        .ok_or_else(|| ApiError::not_found("unknown-release", format!("no release {id}")))?;
    Ok(from_row(&row)?.0)
}

/// The release and its parsed manifest.
pub async fn get_with_manifest(db: &Db, id: &str) -> ApiResult<(Release, Manifest)> {
    let row = sqlx::query(&format!("SELECT {COLUMNS} FROM releases WHERE id = $1"))
        .bind(id)
        .fetch_optional(&db.pool)
        .await?
        .ok_or_else(|| ApiError::not_found("unknown-release", format!("no release {id}")))?;
    from_row(&row)
}

pub async fn list(db: &Db) -> ApiResult<Vec<Release>> {
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM releases ORDER BY compatible, created_at"
    ))
    .fetch_all(&db.pool)
    .await?;
    rows.iter().map(|r| Ok(from_row(r)?.0)).collect()
}

fn from_row(row: &Row) -> ApiResult<(Release, Manifest)> {
    let manifest: Manifest = serde_json::from_str(&row.try_get::<String, _>("manifest")?)
        .context("stored manifest does not parse")?;
    let images = manifest
        .images
        .iter()
        .map(|i| ReleaseImage {
            name: i.name.clone(),
            size: i.size,
            sha256: i.sha256.clone(),
            full_bytes: i.full.size,
            delta_sources: (i.deltas.iter())
                .filter_map(|d| d.source.as_ref().map(|s| s.sha256.clone()))
                .collect(),
        })
        .collect();
    let release = Release {
        id: row.try_get("id")?,
        compatible: row.try_get("compatible")?,
        version: row.try_get("version")?,
        security_version: row.try_get::<i64, _>("security_version")? as u64,
        bundle_sha256: row.try_get("bundle_sha256")?,
        bundle_size: row.try_get::<i64, _>("bundle_size")? as u64,
        blob_name: row.try_get("blob_name")?,
        external_url: row.try_get("external_url")?,
        images,
        created_at: row.try_get("created_at")?,
    };
    Ok((release, manifest))
}
