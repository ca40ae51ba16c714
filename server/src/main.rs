//! `cairn-server`: run the server, or act on its database as an operator.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use cairn_bundle::TrustRoot;
use cairn_server::config::Config;
use cairn_server::db::Db;
use cairn_server::http;
use cairn_server::policy::{
    CampaignPolicy, RebootBudget, Selector, WaveSize, DEFAULT_REBOOT_LEASE_SECS,
};
use cairn_server::users::{self, Role};
use cairn_server::{attestation, audit, campaigns, devices, dry_run, releases};
use clap::{Parser, Subcommand};
use serde::Serialize;

/// Check-ins allocate many small, short-lived buffers across threads; mimalloc does that
/// with less contention than glibc's malloc (measured: about +35 % check-ins/s).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "cairn-server", about = "Cairn fleet update server", version)]
struct Cli {
    /// sqlite://FILE or postgres://USER@HOST:PORT/DB
    #[arg(
        long,
        global = true,
        env = "CAIRN_DB",
        default_value = "sqlite://cairn.db"
    )]
    db: String,
    /// Directory bundles are kept in.
    #[arg(long, global = true, env = "CAIRN_BLOBS", default_value = "./blobs")]
    blobs: PathBuf,
    /// Logs on stderr as text for people or as one JSON object per line for a log
    /// collector.
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Serve(ServeArgs),
    /// Print the admin token (created on first use).
    AdminToken,
    #[command(subcommand)]
    Release(ReleaseCommand),
    #[command(subcommand)]
    Device(DeviceCommand),
    #[command(subcommand)]
    Campaign(CampaignCommand),
    /// Dashboard users (the first admin is made here).
    #[command(subcommand)]
    User(UserCommand),
    /// Write a consistent copy of the (SQLite) database to FILE while the server runs.
    /// PostgreSQL: use pg_dump -Fc. Copy the blob directory after it (README).
    Backup { file: PathBuf },
    /// Replace the (SQLite) database with the backup FILE; refused while a server serves
    /// it, or when FILE is damaged or not a cairn-server database. Restore blobs first.
    Restore { file: PathBuf },
}

#[derive(Parser)]
struct ServeArgs {
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: String,
    /// Trust root bundles must verify against (needed to add releases).
    #[arg(long)]
    root: Option<PathBuf>,
    #[arg(long, env = "CAIRN_ADMIN_TOKEN")]
    admin_token: Option<String>,
    /// Base URL devices reach this server at; bundle URLs start with it.
    #[arg(long)]
    public_url: Option<String>,
    #[arg(long, default_value_t = 300)]
    poll_interval_secs: u64,
    #[arg(long, default_value_t = 5)]
    evaluate_every_secs: u64,
    /// The hawkBit tenant DDI clients use in their URLs (`-t` of SWUpdate's suricatta).
    #[arg(long, default_value = "DEFAULT")]
    ddi_tenant: String,
    /// CA certificate (PEM or DER) that must have issued devices' TPM EK certificates,
    /// e.g. the TPM vendor's (swtpm-localca's issuercert.pem in tests).
    #[arg(long)]
    ek_ca: Option<PathBuf>,
    /// Serve HTTPS with this certificate chain (PEM, leaf first); reloaded on SIGHUP and
    /// when the file changes. Without it the server speaks plain HTTP.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

#[derive(Subcommand)]
enum ReleaseCommand {
    /// Verify a bundle against the trust root and record it.
    Add {
        bundle: PathBuf,
        #[arg(long)]
        root: PathBuf,
        /// Devices download from this URL instead of this server.
        #[arg(long)]
        external_url: Option<String>,
    },
    List,
}

#[derive(Subcommand)]
enum DeviceCommand {
    List,
    Show {
        id: String,
    },
    Approve {
        id: String,
    },
    /// Authorize keys (and bind TPMs) from factory manifests: CSV with header
    /// device_id,public_key,compatible,tags, a JSON array of provisioning records, or one
    /// record per file as devices write them (provisioning/<id>.json).
    Import {
        #[arg(required = true)]
        manifests: Vec<PathBuf>,
    },
    /// Register a device that speaks hawkBit DDI (SWUpdate's suricatta,
    /// rauc-hawkbit-updater): approved at once; prints its target token, shown only here.
    AddDdi {
        id: String,
        #[arg(long)]
        compatible: String,
        #[arg(long = "tag")]
        tags: Vec<String>,
        /// The release it runs now; unknown (0.0.0) when not given.
        #[arg(long)]
        version: Option<String>,
    },
    /// Replace a device's tags.
    Tag {
        id: String,
        tags: Vec<String>,
    },
    /// Refuse a pending enrollment; the id cannot enroll again until approved (audited).
    Reject {
        id: String,
    },
    /// Withdraw a device's trust for good: 403 on every device endpoint (audit-logged).
    Revoke {
        id: String,
    },
    /// Unbind the device's TPM (EK, AK), so it may enroll another one (audit-logged).
    ResetTpm {
        id: String,
    },
    /// The audit log of operator actions on devices, newest first.
    Audit,
}

#[derive(Subcommand)]
enum UserCommand {
    /// Add a user; the password is read from the first line of stdin (at least 12
    /// characters), so it never appears in the process list or shell history.
    Add {
        name: String,
        #[arg(long, default_value = "viewer")]
        role: Role,
    },
    /// Change a user's role.
    SetRole {
        name: String,
        role: Role,
    },
    /// Disable an account: its sessions end at their next request.
    Disable {
        name: String,
    },
    Enable {
        name: String,
    },
    List,
}

#[derive(Subcommand)]
enum CampaignCommand {
    Create(CreateCampaign),
    List,
    DryRun { id: String },
    Start { id: String },
    Pause { id: String },
    Resume { id: String },
    Abort { id: String },
    Status { id: String },
}

#[derive(Parser)]
struct CreateCampaign {
    id: String,
    /// Release id, `<compatible>@<version>`.
    #[arg(long)]
    release: String,
    /// Only devices with all of these tags.
    #[arg(long = "tag")]
    tags: Vec<String>,
    /// Only these devices.
    #[arg(long = "device")]
    devices: Vec<String>,
    /// Wave sizes, counts or percentages: `5,10%,100%`. The last wave takes the rest.
    #[arg(long, default_value = "100%", value_delimiter = ',')]
    waves: Vec<WaveSize>,
    #[arg(long, default_value_t = 0.9)]
    min_success: f64,
    #[arg(long, default_value_t = 3600)]
    bake_secs: u64,
    #[arg(long, default_value_t = 0.1)]
    failure_threshold: f64,
    /// Offer the release again to devices where its trial failed before (they decline it
    /// otherwise).
    #[arg(long)]
    retry_declined: bool,
    /// At most this many devices (of a group, see --reboot-group-by) reboot into the
    /// release at once: each holds a reboot lease until it commits or rolls back.
    #[arg(long)]
    reboot_budget: Option<u32>,
    /// The tag key that groups devices for --reboot-budget: `cluster` gives devices
    /// tagged `cluster=line-3` one budget and `cluster=line-4` another.
    #[arg(long, requires = "reboot_budget")]
    reboot_group_by: Option<String>,
    /// A reboot lease not ended by a commit or rollback is freed after this many seconds.
    #[arg(long, requires = "reboot_budget", default_value_t = DEFAULT_REBOOT_LEASE_SECS)]
    reboot_lease_secs: u64,
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,sqlx=warn".into()),
        )
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().flatten_event(true).init(),
    }
    if let Command::Restore { file } = &cli.command {
        // Before connecting: connecting would migrate (write) the database being replaced.
        let restored = cairn_server::backup::restore(&cli.db, file).await?;
        // Brings an older backup's schema up to date, and says what blobs it needs.
        let db = Db::connect(&cli.db).await?;
        if let Err(e) = cairn_server::backup::check_blobs(&db, &cli.blobs).await {
            tracing::warn!("{e}");
        }
        return print(&restored);
    }
    let db = Db::connect(&cli.db).await?;
    match cli.command {
        Command::Serve(args) => serve(db, cli.blobs, args).await,
        Command::AdminToken => {
            println!("{}", cairn_server::auth::admin_token(&db, None).await?);
            Ok(())
        }
        Command::Release(c) => release(&db, cli.blobs, c).await,
        Command::Device(c) => device(&db, c).await,
        Command::Campaign(c) => campaign(&db, c).await,
        Command::User(c) => user(&db, c).await,
        Command::Backup { file } => {
            cairn_server::backup::backup(&db, &cli.db, &file).await?;
            tracing::info!(
                "database backed up to {}; now copy the blob directory {} beside it",
                file.display(),
                cli.blobs.display()
            );
            Ok(())
        }
        Command::Restore { .. } => unreachable!("handled before connecting"),
    }
}

fn print(value: &impl Serialize) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

fn load_root(path: &PathBuf) -> Result<TrustRoot> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    TrustRoot::from_json(&bytes).with_context(|| format!("trust root {}", path.display()))
}

async fn serve(db: Db, blobs: PathBuf, args: ServeArgs) -> Result<()> {
    let mut config = Config::new(blobs);
    config.root = args.root.as_ref().map(load_root).transpose()?;
    config.admin_token = args.admin_token;
    config.public_url = args.public_url;
    config.poll_interval_secs = args.poll_interval_secs;
    config.ddi_tenant = args.ddi_tenant;
    config.evaluate_every = Duration::from_secs(args.evaluate_every_secs.max(1));
    config.tls = args
        .tls_cert
        .zip(args.tls_key)
        .map(|(cert, key)| cairn_server::config::TlsFiles { cert, key });
    config.ek_ca = match &args.ek_ca {
        Some(p) => Some(std::fs::read(p).with_context(|| format!("reading {}", p.display()))?),
        None => None,
    };
    if config.root.is_none() {
        tracing::warn!(
            "no --root given: releases cannot be added until the server has a trust root"
        );
    }
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    http::serve(db, config, listener, shutdown).await
}

async fn release(db: &Db, blobs: PathBuf, command: ReleaseCommand) -> Result<()> {
    match command {
        ReleaseCommand::Add {
            bundle,
            root,
            external_url,
        } => {
            let root = load_root(&root)?;
            tokio::fs::create_dir_all(&blobs).await?;
            let staged = blobs.join(format!(".upload-{}", cairn_server::db::random_id("")));
            tokio::fs::copy(&bundle, &staged)
                .await
                .with_context(|| format!("copying {}", bundle.display()))?;
            let added = releases::add(db, &blobs, Some(&root), staged.clone(), external_url).await;
            let _ = tokio::fs::remove_file(&staged).await;
            print(&added?)
        }
        ReleaseCommand::List => print(&releases::list(db).await?),
    }
}

async fn device(db: &Db, command: DeviceCommand) -> Result<()> {
    match command {
        DeviceCommand::List => print(&devices::list(db, i64::MAX).await?),
        DeviceCommand::Show { id } => {
            print(&devices::get(db, &id).await?)?;
            print(&devices::history(db, &id, 50).await?)
        }
        DeviceCommand::Approve { id } => {
            print(&devices::approve(db, &id, &audit::cli_actor()).await?)
        }
        DeviceCommand::Import { manifests } => {
            let mut entries = Vec::new();
            for manifest in &manifests {
                let text = std::fs::read_to_string(manifest)
                    .with_context(|| format!("reading {}", manifest.display()))?;
                entries.extend(
                    devices::parse_factory_manifest(&text)
                        .with_context(|| format!("{}", manifest.display()))?,
                );
            }
            print(&devices::import(db, &entries, &audit::cli_actor()).await?)
        }
        DeviceCommand::AddDdi {
            id,
            compatible,
            tags,
            version,
        } => print(
            &cairn_server::ddi::targets::register(
                db,
                &id,
                &compatible,
                &tags,
                version.as_deref(),
                &audit::cli_actor(),
            )
            .await?,
        ),
        DeviceCommand::Tag { id, tags } => print(&devices::set_tags(db, &id, &tags).await?),
        DeviceCommand::Reject { id } => {
            print(&devices::reject(db, &id, &audit::cli_actor()).await?)
        }
        DeviceCommand::Revoke { id } => {
            print(&devices::revoke(db, &id, &audit::cli_actor()).await?)
        }
        DeviceCommand::ResetTpm { id } => {
            attestation::reset(db, &id, &audit::cli_actor()).await?;
            print(&devices::get(db, &id).await?)
        }
        DeviceCommand::Audit => print(&audit::list(db, i64::MAX).await?),
    }
}

async fn user(db: &Db, command: UserCommand) -> Result<()> {
    let actor = audit::cli_actor();
    match command {
        UserCommand::Add { name, role } => {
            let mut password = String::new();
            std::io::stdin()
                .read_line(&mut password)
                .context("reading the password from stdin")?;
            let password = password.trim_end_matches(['\r', '\n']);
            print(&users::add(db, &name, password, role, &actor).await?)
        }
        UserCommand::SetRole { name, role } => {
            print(&users::update(db, &name, Some(role), None, &actor).await?)
        }
        UserCommand::Disable { name } => {
            print(&users::update(db, &name, None, Some(true), &actor).await?)
        }
        UserCommand::Enable { name } => {
            print(&users::update(db, &name, None, Some(false), &actor).await?)
        }
        UserCommand::List => print(&users::list(db).await?),
    }
}

async fn campaign(db: &Db, command: CampaignCommand) -> Result<()> {
    match command {
        CampaignCommand::Create(c) => {
            let release = releases::get(db, &c.release).await?;
            let policy = CampaignPolicy {
                selector: Selector {
                    compatible: release.compatible,
                    tags: c.tags,
                    device_ids: c.devices,
                },
                waves: c.waves,
                min_success_ratio: c.min_success,
                bake_secs: c.bake_secs,
                failure_threshold: c.failure_threshold,
                attestation_required: false,
                retry_declined: c.retry_declined,
                reboot_budget: c.reboot_budget.map(|max_rebooting| RebootBudget {
                    max_rebooting,
                    group_by: c.reboot_group_by,
                    lease_secs: c.reboot_lease_secs,
                }),
            };
            print(&campaigns::create(db, &c.id, &c.release, policy).await?)
        }
        CampaignCommand::List => print(&campaigns::list(db).await?),
        CampaignCommand::DryRun { id } => print(&dry_run::dry_run(db, &id).await?),
        CampaignCommand::Start { id } => print(&campaigns::start(db, &id).await?),
        CampaignCommand::Pause { id } => {
            print(&campaigns::pause(db, &id, "paused by operator").await?)
        }
        CampaignCommand::Resume { id } => print(&campaigns::resume(db, &id).await?),
        CampaignCommand::Abort { id } => print(&campaigns::abort(db, &id).await?),
        CampaignCommand::Status { id } => print(&campaigns::status(db, &id).await?),
    }
}
