//! Key generation, trust roots and signing.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use cairn_bundle::header::MAGIC;
use cairn_bundle::{writer, PublicKey, SignedRoot, SigningKey, TrustRoot};
use clap::{Args, Subcommand};
use time::{Duration, OffsetDateTime};

#[derive(Args)]
pub struct KeygenArgs {
    /// Output path prefix: writes PREFIX.key.json and PREFIX.pub.json.
    #[arg(long)]
    out: PathBuf,
}

#[derive(Subcommand)]
pub enum RootCommand {
    /// Create a root from public keys; sign it with --sign keys (a threshold of them).
    Init(RootInitArgs),
    /// Create root N+1 from root N: must then be signed by a threshold of both.
    Rotate(RootRotateArgs),
}

#[derive(Args)]
pub struct RootInitArgs {
    /// Public key files (NAME.pub.json) of the keys that may sign.
    #[arg(long = "key", required = true)]
    keys: Vec<PathBuf>,
    #[arg(long, default_value_t = 1)]
    threshold: usize,
    #[arg(long, default_value_t = 365)]
    expires_days: i64,
    /// Secret keys to sign the new root with.
    #[arg(long = "sign")]
    sign: Vec<PathBuf>,
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args)]
pub struct RootRotateArgs {
    /// The current root.
    #[arg(long)]
    from: PathBuf,
    #[arg(long = "key", required = true)]
    keys: Vec<PathBuf>,
    #[arg(long, default_value_t = 1)]
    threshold: usize,
    #[arg(long, default_value_t = 365)]
    expires_days: i64,
    /// Secret keys of the old root and of the new one.
    #[arg(long = "sign")]
    sign: Vec<PathBuf>,
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args)]
pub struct SignArgs {
    /// Secret key file(s) to sign with.
    #[arg(long = "key", required = true)]
    keys: Vec<PathBuf>,
    /// A bundle (*.cairn) or a trust root (root.json).
    file: PathBuf,
}

pub fn keygen(args: KeygenArgs) -> Result<()> {
    let key = SigningKey::generate()?;
    let secret = with_suffix(&args.out, ".key.json");
    let public = with_suffix(&args.out, ".pub.json");
    if secret.exists() {
        bail!(
            "{} exists; refusing to overwrite a secret key",
            secret.display()
        );
    }
    // 0600 from the first byte: never a moment when another user could read it.
    cairn_atomic::write_private(&secret, &key.to_json())
        .with_context(|| format!("writing {}", secret.display()))?;
    cairn_atomic::write(&public, &serde_json::to_vec_pretty(&key.public())?)?;
    println!(
        "key {}\n  secret: {}\n  public: {}",
        key.id().0,
        secret.display(),
        public.display()
    );
    Ok(())
}

pub fn root(cmd: RootCommand) -> Result<()> {
    let (out, root) = match cmd {
        RootCommand::Init(a) => {
            let root = new_root(1, &a.keys, a.threshold, a.expires_days, &a.sign)?;
            TrustRoot::anchor(root.clone())
                .context("the new root is not signed by a threshold of its keys")?;
            (a.out, root)
        }
        RootCommand::Rotate(a) => {
            let current = TrustRoot::from_json(&read(&a.from)?).context("current root")?;
            let next = new_root(
                current.version() + 1,
                &a.keys,
                a.threshold,
                a.expires_days,
                &a.sign,
            )?;
            current.rotate(next.clone())?;
            (a.out, next)
        }
    };
    cairn_atomic::write(&out, &root.to_json())?;
    println!(
        "trust root v{} ({} of {} keys) expires {} -> {}",
        root.signed.version,
        root.signed.threshold,
        root.signed.keys.len(),
        root.signed.expires.date(),
        out.display()
    );
    Ok(())
}

fn new_root(
    version: u64,
    keys: &[PathBuf],
    threshold: usize,
    days: i64,
    sign: &[PathBuf],
) -> Result<SignedRoot> {
    let keys = keys
        .iter()
        .map(|p| load_public(p))
        .collect::<Result<Vec<_>>>()?;
    let expires = OffsetDateTime::now_utc().replace_nanosecond(0)? + Duration::days(days);
    let mut root = SignedRoot::new(version, expires, threshold, keys);
    for path in sign {
        root.sign(&load_secret(path)?)?;
    }
    Ok(root)
}

pub fn sign(args: SignArgs) -> Result<()> {
    let keys = args
        .keys
        .iter()
        .map(|p| load_secret(p))
        .collect::<Result<Vec<_>>>()?;
    let bytes = read(&args.file)?;
    if bytes.starts_with(&MAGIC) {
        let n = writer::add_signatures(&args.file, &keys)?;
        println!(
            "{}: bundle now carries {n} signature(s)",
            args.file.display()
        );
    } else {
        let mut root = SignedRoot::parse(&bytes).context("neither a bundle nor a trust root")?;
        for key in &keys {
            root.sign(key)?;
        }
        cairn_atomic::write(&args.file, &root.to_json())?;
        println!(
            "{}: root v{} now carries {} signature(s)",
            args.file.display(),
            root.signed.version,
            root.signatures.len()
        );
    }
    Ok(())
}

pub fn load_secret(path: &Path) -> Result<SigningKey> {
    SigningKey::from_json(&read(path)?).with_context(|| format!("secret key {}", path.display()))
}

fn load_public(path: &Path) -> Result<PublicKey> {
    let key: PublicKey = serde_json::from_slice(&read(path)?)
        .with_context(|| format!("public key {}", path.display()))?;
    key.verifying_key()?;
    Ok(key)
}

pub fn read(path: &Path) -> Result<Vec<u8>> {
    fs::read(path).with_context(|| format!("reading {}", path.display()))
}

fn with_suffix(prefix: &Path, suffix: &str) -> PathBuf {
    let mut s = prefix.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}
