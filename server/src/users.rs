//! Dashboard users: named accounts with a role, passwords kept as Argon2id hashes (PHC
//! strings). The bootstrap admin comes from the CLI (`cairn-server user add`); admins
//! manage the others. Every change is in the audit log, in the same transaction.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use serde::Serialize;
use sqlx::Row as _;

use crate::audit;
use crate::db::{now_ms, Db};
use crate::devices::check_name;
use crate::error::{ApiError, ApiResult};

/// What a user may do. Ordered: each role may do what the ones before it may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads every page; acts on nothing.
    Viewer,
    /// Approves, rejects and revokes devices, runs campaigns, adds releases.
    Operator,
    /// Everything, users included.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        [Role::Viewer, Role::Operator, Role::Admin]
            .into_iter()
            .find(|r| r.as_str() == s)
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Role, String> {
        Role::parse(s).ok_or_else(|| format!("role '{s}' is not viewer, operator or admin"))
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct User {
    pub name: String,
    pub role: Role,
    pub disabled: bool,
    pub created_at: i64,
}

/// Passwords shorter than this are refused.
pub const MIN_PASSWORD: usize = 12;

fn hash(password: &str) -> ApiResult<String> {
    let mut salt = [0u8; 16];
    getrandom::getrandom(&mut salt).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| anyhow::anyhow!("salt: {e}"))?;
    Ok(Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map_err(|e| anyhow::anyhow!("hashing a password: {e}"))?
        .to_string())
}

fn check_password(password: &str) -> ApiResult<()> {
    if password.chars().count() < MIN_PASSWORD {
        return Err(ApiError::bad_request(
            "weak-password",
            format!("a password needs at least {MIN_PASSWORD} characters"),
        ));
    }
    Ok(())
}

/// A new user; `actor` made it.
pub async fn add(db: &Db, name: &str, password: &str, role: Role, actor: &str) -> ApiResult<User> {
    check_name("user name", name)?;
    check_password(password)?;
    let hashed = hash(password)?;
    let mut tx = db.pool.begin().await?;
    let inserted = sqlx::query(
        "INSERT INTO users (name, password_hash, role, disabled, created_at) \
         VALUES ($1, $2, $3, 0, $4) ON CONFLICT DO NOTHING",
    )
    .bind(name)
    .bind(&hashed)
    .bind(role.as_str())
    .bind(now_ms())
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if inserted == 0 {
        return Err(ApiError::conflict(
            "user-exists",
            format!("user {name} already exists"),
        ));
    }
    let detail = format!("added with role {}", role.as_str());
    audit::record_action(&mut tx, actor, "user-add", &format!("user:{name}"), &detail).await?;
    tx.commit().await?;
    get(db, name).await
}

/// Changes a user's role, or disables the account (its sessions end at their next
/// request: every request reads the user).
pub async fn update(
    db: &Db,
    name: &str,
    role: Option<Role>,
    disabled: Option<bool>,
    actor: &str,
) -> ApiResult<User> {
    let mut tx = db.pool.begin().await?;
    let changed = sqlx::query(
        "UPDATE users SET role = COALESCE($1, role), disabled = COALESCE($2, disabled) \
         WHERE name = $3",
    )
    .bind(role.map(Role::as_str))
    .bind(disabled.map(i64::from))
    .bind(name)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if changed == 0 {
        return Err(unknown(name));
    }
    let mut what = Vec::new();
    if let Some(r) = role {
        what.push(format!("role {}", r.as_str()));
    }
    if let Some(d) = disabled {
        what.push(if d { "disabled" } else { "enabled" }.to_string());
    }
    let detail = what.join(", ");
    audit::record_action(
        &mut tx,
        actor,
        "user-change",
        &format!("user:{name}"),
        &detail,
    )
    .await?;
    tx.commit().await?;
    get(db, name).await
}

pub async fn get(db: &Db, name: &str) -> ApiResult<User> {
    let row = sqlx::query("SELECT name, role, disabled, created_at FROM users WHERE name = $1")
        .bind(name)
        .fetch_optional(&db.pool)
        .await?
        .ok_or_else(|| unknown(name))?;
    from_row(&row)
}

pub async fn list(db: &Db) -> ApiResult<Vec<User>> {
    let rows = sqlx::query("SELECT name, role, disabled, created_at FROM users ORDER BY name")
        .fetch_all(&db.pool)
        .await?;
    rows.iter().map(from_row).collect()
}

/// The user, when `password` is theirs and the account is enabled. A name that does not
/// exist costs a hash all the same, so timing does not tell which names do.
pub async fn verify(db: &Db, name: &str, password: &str) -> ApiResult<Option<User>> {
    let row = sqlx::query("SELECT password_hash FROM users WHERE name = $1 AND disabled = 0")
        .bind(name)
        .fetch_optional(&db.pool)
        .await?;
    let Some(row) = row else {
        let _ = hash(password);
        return Ok(None);
    };
    let stored: String = row.try_get("password_hash")?;
    let parsed =
        PasswordHash::new(&stored).map_err(|e| anyhow::anyhow!("stored hash of {name}: {e}"))?;
    if Argon2::default()
        .verify_password(password.as_bytes(), &parsed)
        .is_err()
    {
        return Ok(None);
    }
    Ok(Some(get(db, name).await?))
}

/// The enabled user `name`, for a request whose session names them.
pub async fn active(db: &Db, name: &str) -> ApiResult<Option<User>> {
    Ok(match get(db, name).await {
        Ok(u) if !u.disabled => Some(u),
        Ok(_) => None,
        Err(e) if e.status() == axum::http::StatusCode::NOT_FOUND => None,
        Err(e) => return Err(e),
    })
}

fn from_row(row: &crate::db::Row) -> ApiResult<User> {
    let role: String = row.try_get("role")?;
    Ok(User {
        name: row.try_get("name")?,
        role: Role::parse(&role).ok_or_else(|| anyhow::anyhow!("stored role '{role}'"))?,
        disabled: row.try_get::<i64, _>("disabled")? != 0,
        created_at: row.try_get("created_at")?,
    })
}

fn unknown(name: &str) -> ApiError {
    ApiError::not_found("unknown-user", format!("no user {name}"))
}
