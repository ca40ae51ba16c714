//! Backing up and restoring a server's state, and checking at start-up that the blob
//! directory holds every bundle the database names.
//!
//! - `cairn-server backup FILE` on SQLite is `VACUUM INTO` a staging file next to `FILE`:
//!   one read transaction, so the copy is consistent while the server keeps serving; it is
//!   fsynced and renamed onto `FILE` (a reader never sees half a backup). PostgreSQL has its
//!   own tools (`pg_dump -Fc`, `pg_restore --clean`); [`backup`] says so instead of
//!   inventing another.
//! - `cairn-server restore FILE` checks the file (a SQLite database, intact, made by a
//!   cairn-server whose migrations this one knows), takes the database's serve lock
//!   exclusively (refused while a server holds it shared, [`ServeLock`]), and replaces the
//!   database file with a rename, so a crash leaves either the old database or the restored
//!   one.
//! - Blobs are content-addressed and never change once written, so copying the blob
//!   directory after the database backup captures every blob the backup names; restore
//!   the blobs first, then the database. [`check_blobs`] refuses to start a server whose
//!   database names a blob that is missing.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use sqlx::{AnyConnection, Connection as _, Row as _};

use crate::db::{random_id, Backend, Db};

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error(
        "{0} is a PostgreSQL database: back it up with its own tool, e.g. \
         `pg_dump -Fc -f cairn.dump <url>`, and restore with \
         `pg_restore --clean --if-exists -d <url> cairn.dump` (see README, Backup and restore)"
    )]
    Postgres(String),
    #[error("{0}: not a SQLite database URL")]
    NotSqlite(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: {source}")]
    Sqlite {
        path: PathBuf,
        #[source]
        source: sqlx::Error,
    },
    #[error("{0} is not a SQLite database, so not a cairn-server backup")]
    NotSqliteFile(PathBuf),
    #[error("{path} is damaged: SQLite's integrity check says: {detail}")]
    Corrupt { path: PathBuf, detail: String },
    #[error(
        "{0} is a SQLite database but not a cairn-server one (no cairn-server migrations in it)"
    )]
    Foreign(PathBuf),
    #[error(
        "{path} was made by a newer cairn-server (migration {version} is unknown to this one); \
         restore it with that version"
    )]
    Newer { path: PathBuf, version: i64 },
    #[error("{path}: migration {version} differs from this cairn-server's; not restored")]
    MigrationMismatch { path: PathBuf, version: i64 },
    #[error(
        "a cairn-server is serving {db} (it holds {lock}); stop every server on this \
         database before restoring"
    )]
    ServerRunning { db: PathBuf, lock: PathBuf },
    #[error("a restore of {db} is under way (it holds {lock}); the server does not start")]
    RestoreRunning { db: PathBuf, lock: PathBuf },
    #[error(
        "the blob directory {dir} lacks bundles the database names: {missing}. Restore the \
         blob directory from the backup taken with the database (README, Backup and restore)"
    )]
    MissingBlobs { dir: PathBuf, missing: String },
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> BackupError + '_ {
    move |source| BackupError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn sqlite_at(path: &Path) -> impl FnOnce(sqlx::Error) -> BackupError + '_ {
    move |source| BackupError::Sqlite {
        path: path.to_path_buf(),
        source,
    }
}

/// The file behind a `sqlite:` URL (`sqlite://cairn.db?mode=rwc` → `cairn.db`).
pub fn sqlite_file(url: &str) -> Option<PathBuf> {
    let rest = url.strip_prefix("sqlite:")?;
    let rest = rest.strip_prefix("//").unwrap_or(rest);
    let path = rest.split('?').next().unwrap_or_default();
    (!path.is_empty() && path != ":memory:").then(|| PathBuf::from(path))
}

fn lock_path(db_file: &Path) -> PathBuf {
    let mut name = db_file.as_os_str().to_owned();
    name.push(".serve-lock");
    PathBuf::from(name)
}

/// Held shared by every server serving a SQLite database, exclusively by a restore: a
/// restore never replaces the file under a running server, and a server never starts on
/// a database being restored. PostgreSQL needs none (pg_restore is the operator's tool).
pub struct ServeLock {
    _file: Option<File>,
}

impl ServeLock {
    /// Taken by `http::serve` for as long as it serves.
    pub fn serving(db: &Db) -> Result<ServeLock, BackupError> {
        match &db.sqlite_file {
            Some(db_file) => ServeLock::take(db_file, false),
            None => Ok(ServeLock { _file: None }),
        }
    }

    fn restoring(db_file: &Path) -> Result<ServeLock, BackupError> {
        ServeLock::take(db_file, true)
    }

    /// The lock beside `db_file`, exclusively (a restore) or shared (a server); the
    /// error names who holds it the other way.
    fn take(db_file: &Path, exclusive: bool) -> Result<ServeLock, BackupError> {
        let lock = lock_path(db_file);
        let file = open_lock(&lock)?;
        let taken = if exclusive {
            file.try_lock()
        } else {
            file.try_lock_shared()
        };
        match taken {
            Ok(()) => Ok(ServeLock { _file: Some(file) }),
            Err(fs::TryLockError::WouldBlock) => {
                let db = db_file.to_path_buf();
                Err(if exclusive {
                    BackupError::ServerRunning { db, lock }
                } else {
                    BackupError::RestoreRunning { db, lock }
                })
            }
            Err(fs::TryLockError::Error(e)) => Err(io_at(&lock)(e)),
        }
    }
}

fn open_lock(path: &Path) -> Result<File, BackupError> {
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(io_at(path))
}

/// A staging name next to `target` (same directory, so the final rename is atomic).
fn staging(target: &Path, what: &str) -> PathBuf {
    let mut name = target.as_os_str().to_owned();
    name.push(format!(".{what}-{}", random_id("")));
    PathBuf::from(name)
}

fn remove_sidecars(db_file: &Path) {
    for suffix in ["-wal", "-shm", "-journal"] {
        let mut name = db_file.as_os_str().to_owned();
        name.push(suffix);
        let _ = fs::remove_file(PathBuf::from(name));
    }
}

/// fsyncs `staged`, renames it onto `target` and fsyncs the directory.
fn install(staged: &Path, target: &Path) -> Result<(), BackupError> {
    File::open(staged)
        .and_then(|f| f.sync_all())
        .map_err(io_at(staged))?;
    fs::rename(staged, target).map_err(io_at(target))?;
    cairn_atomic::sync_parent(target).map_err(io_at(target))
}

/// `cairn-server backup FILE`: a consistent copy of a live SQLite database, written
/// atomically to `target`.
pub async fn backup(db: &Db, url: &str, target: &Path) -> Result<(), BackupError> {
    if db.backend == Backend::Postgres {
        return Err(BackupError::Postgres(crate::db::redact(url)));
    }
    let staged = staging(target, "partial");
    let copied = sqlx::query("VACUUM INTO $1")
        .bind(staged.to_string_lossy().into_owned())
        .execute(&db.pool)
        .await
        .map_err(sqlite_at(target));
    if let Err(e) = copied.map(drop).and_then(|()| install(&staged, target)) {
        let _ = fs::remove_file(&staged);
        return Err(e);
    }
    Ok(())
}

/// What a restore put in place.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Restored {
    pub database: PathBuf,
    pub devices: i64,
    pub releases: i64,
    pub campaigns: i64,
}

/// `cairn-server restore FILE`: replaces the SQLite database at `url` with the backup
/// `source`, after checking it, while no server serves the database. The caller opens
/// the database afterwards (`Db::connect`), which brings an older backup's schema up to
/// date.
pub async fn restore(url: &str, source: &Path) -> Result<Restored, BackupError> {
    if url.starts_with("postgres") {
        return Err(BackupError::Postgres(crate::db::redact(url)));
    }
    let target = sqlite_file(url).ok_or_else(|| BackupError::NotSqlite(url.to_string()))?;
    let mut header = [0u8; 16];
    let read = {
        use std::io::Read as _;
        File::open(source)
            .and_then(|mut f| f.read(&mut header))
            .map_err(io_at(source))?
    };
    if read < 16 || &header != b"SQLite format 3\0" {
        return Err(BackupError::NotSqliteFile(source.to_path_buf()));
    }
    let _lock = ServeLock::restoring(&target)?;
    // Check a private copy: opening the backup itself could write to it (a WAL), and the
    // copy is what gets renamed into place.
    let staged = staging(&target, "restoring");
    let result = async {
        fs::copy(source, &staged).map_err(io_at(source))?;
        let counts = check_copy(&staged, source).await?;
        if target.exists() {
            // The old database's WAL must not be replayed onto the restored file.
            checkpoint(&target).await?;
        }
        remove_sidecars(&target);
        install(&staged, &target)?;
        Ok(Restored {
            database: target.clone(),
            ..counts
        })
    }
    .await;
    if result.is_err() {
        let _ = fs::remove_file(&staged);
        remove_sidecars(&staged);
    }
    result
}

fn url_of(path: &Path, mode: &str) -> String {
    format!("sqlite://{}?mode={mode}", path.display())
}

/// Integrity, provenance and schema of the staged copy of `source`; leaves it in rollback
/// journal mode with no side files, ready to be renamed.
async fn check_copy(staged: &Path, source: &Path) -> Result<Restored, BackupError> {
    sqlx::any::install_default_drivers();
    let mut conn = AnyConnection::connect(&url_of(staged, "rw"))
        .await
        .map_err(sqlite_at(source))?;
    let checked = async {
        let verdict: String = match sqlx::query("PRAGMA integrity_check")
            .fetch_one(&mut conn)
            .await
        {
            Ok(row) => row.try_get(0)?,
            // "file is not a database" and friends: damaged beyond the header.
            Err(e) => e.to_string(),
        };
        if verdict != "ok" {
            return Err(BackupError::Corrupt {
                path: source.to_path_buf(),
                detail: verdict,
            });
        }
        let has_migrations: i64 = sqlx::query(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'",
        )
        .fetch_one(&mut conn)
        .await?
        .try_get(0)?;
        if has_migrations == 0 {
            return Err(BackupError::Foreign(source.to_path_buf()));
        }
        let known = sqlx::migrate!("./migrations");
        let applied = sqlx::query("SELECT version, checksum FROM _sqlx_migrations WHERE success")
            .fetch_all(&mut conn)
            .await?;
        if applied.is_empty() {
            return Err(BackupError::Foreign(source.to_path_buf()));
        }
        for row in &applied {
            let version: i64 = row.try_get(0)?;
            let checksum: Vec<u8> = row.try_get(1)?;
            match known.iter().find(|m| m.version == version) {
                None => {
                    return Err(BackupError::Newer {
                        path: source.to_path_buf(),
                        version,
                    })
                }
                Some(m) if *m.checksum != *checksum => {
                    return Err(BackupError::MigrationMismatch {
                        path: source.to_path_buf(),
                        version,
                    })
                }
                Some(_) => {}
            }
        }
        let mut counts = [0i64; 3];
        for (n, table) in counts.iter_mut().zip(["devices", "releases", "campaigns"]) {
            let sql = format!("SELECT COUNT(*) FROM {table}");
            *n = sqlx::query(&sql).fetch_one(&mut conn).await?.try_get(0)?;
        }
        let [devices, releases, campaigns] = counts;
        sqlx::query("PRAGMA journal_mode = DELETE")
            .execute(&mut conn)
            .await?;
        Ok(Restored {
            database: PathBuf::new(),
            devices,
            releases,
            campaigns,
        })
    }
    .await;
    conn.close().await.map_err(sqlite_at(staged))?;
    checked
}

/// Folds a database's WAL into its main file, so nothing of it is left to replay.
async fn checkpoint(db_file: &Path) -> Result<(), BackupError> {
    let mut conn = AnyConnection::connect(&url_of(db_file, "rw"))
        .await
        .map_err(sqlite_at(db_file))?;
    sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
        .execute(&mut conn)
        .await
        .map_err(sqlite_at(db_file))?;
    conn.close().await.map_err(sqlite_at(db_file))
}

/// Every release kept in the blob directory must have its blob there, at its size: a
/// server restored without its blobs would hand devices URLs that 404. Checked when a
/// server starts; names each missing release and blob.
pub async fn check_blobs(db: &Db, blobs: &Path) -> Result<(), BackupError> {
    let rows = sqlx::query(
        "SELECT id, blob_name, bundle_size FROM releases WHERE blob_name IS NOT NULL ORDER BY id",
    )
    .fetch_all(&db.pool)
    .await?;
    let mut missing = Vec::new();
    for row in rows {
        let id: String = row.try_get("id")?;
        let name: String = row.try_get("blob_name")?;
        let size: i64 = row.try_get("bundle_size")?;
        let path = blobs.join(&name);
        match fs::metadata(&path) {
            Ok(m) if m.len() == size as u64 => {}
            Ok(m) => missing.push(format!(
                "release {id}: {name} has {} bytes, not {size}",
                m.len()
            )),
            Err(_) => missing.push(format!("release {id}: {name}")),
        }
    }
    // Artifacts decoded for hawkBit clients (ddi/artifacts.rs) live beside the bundles.
    let artifacts = sqlx::query("SELECT sha256, size FROM ddi_artifacts ORDER BY sha256")
        .fetch_all(&db.pool)
        .await?;
    for row in artifacts {
        let sha256: String = row.try_get("sha256")?;
        let size: i64 = row.try_get("size")?;
        let name = crate::ddi::artifacts::blob_name(&sha256);
        match fs::metadata(blobs.join(&name)) {
            Ok(m) if m.len() == size as u64 => {}
            _ => missing.push(format!("artifact {name}")),
        }
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(BackupError::MissingBlobs {
            dir: blobs.to_path_buf(),
            missing: missing.join("; "),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::sqlite_file;
    use std::path::PathBuf;

    #[test]
    fn the_file_behind_a_sqlite_url() {
        assert_eq!(
            sqlite_file("sqlite://cairn.db"),
            Some(PathBuf::from("cairn.db"))
        );
        assert_eq!(
            sqlite_file("sqlite:///var/lib/cairn/cairn.db?mode=rwc"),
            Some(PathBuf::from("/var/lib/cairn/cairn.db"))
        );
        assert_eq!(
            sqlite_file("sqlite:cairn.db"),
            Some(PathBuf::from("cairn.db"))
        );
        assert_eq!(sqlite_file("sqlite::memory:"), None);
        assert_eq!(sqlite_file("postgres://u@h/db"), None);
    }
}
