//! `cairn-image provision`: device identities made offline ([`cairn_image::provision`]).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use cairn_bundle::TrustRoot;
use cairn_image::provision::settings::DeviceSettings;
use cairn_image::provision::{self, Batch};

use crate::keys_cmd::{load_secret, read};

#[derive(clap::Args)]
pub struct ProvisionArgs {
    /// A disk image: each identity goes into its own copy of its data partition,
    /// OUT/<device_id>.data.img, to be written over the data partition after flashing.
    #[arg(long, conflicts_with = "target", required_unless_present = "target")]
    image: Option<PathBuf>,
    /// Or a card (or disk image) already flashed: one identity, written into its data
    /// partition in place.
    #[arg(long)]
    target: Option<PathBuf>,
    /// How many identities (with --image).
    #[arg(long, default_value_t = 1)]
    count: usize,
    /// Where the copies and manifest.json (for `cairn-server device import`) go.
    #[arg(long)]
    out: PathBuf,
    /// The devices' `compatible`, as their image says it.
    #[arg(long)]
    compatible: String,
    #[arg(long = "tag")]
    tags: Vec<String>,
    /// The image's version, recorded for the operator.
    #[arg(long)]
    image_version: Option<String>,
    /// Per-device settings (hostname, network, server override), checked before any
    /// device is written; the format is in `cairn_image::provision::settings`.
    #[arg(long)]
    config: Option<PathBuf>,
    /// A release signing key (`cairn-image keygen`) to sign the config's server override
    /// with; repeat it to reach the trust root's threshold.
    #[arg(long = "key", requires = "config")]
    keys: Vec<PathBuf>,
    /// The image's trust root (root.json): the keys must sign a server override its
    /// devices will take.
    #[arg(long, requires = "config")]
    root: Option<PathBuf>,
}

pub fn provision(args: ProvisionArgs) -> Result<()> {
    cairn_image::provision::settings::check_tags(&args.tags).map_err(anyhow::Error::msg)?;
    let keys = args
        .keys
        .iter()
        .map(|path| load_secret(path))
        .collect::<Result<Vec<_>>>()?;
    let root = match &args.root {
        Some(path) => Some(
            TrustRoot::from_json(&read(path)?)
                .with_context(|| format!("trust root {}", path.display()))?,
        ),
        None => None,
    };
    let settings = match &args.config {
        Some(path) => Some(DeviceSettings::load(path, keys, root.as_ref())?),
        None => None,
    };
    let batch = Batch {
        compatible: &args.compatible,
        tags: &args.tags,
        image_version: args.image_version.as_deref(),
        settings: settings.as_ref(),
    };
    let records = match (&args.image, &args.target) {
        (Some(image), None) => {
            if args.count == 0 || args.count > 100_000 {
                bail!("--count {} is not 1 to 100000", args.count);
            }
            provision::batch(image, args.count, &args.out, &batch)?
        }
        (None, Some(target)) => {
            if args.count != 1 {
                bail!(
                    "--target takes one identity; --count {} was given",
                    args.count
                );
            }
            std::fs::create_dir_all(&args.out)?;
            let record = provision::into_target(target, &args.out, &batch)?;
            let manifest = args.out.join(format!("{}.json", record.device_id));
            cairn_atomic::write(&manifest, &serde_json::to_vec_pretty(&record)?)?;
            vec![record]
        }
        _ => bail!("give --image or --target"),
    };
    for record in &records {
        eprintln!("    {} {}", record.device_id, record.public_key);
    }
    eprintln!(
        "==> {} identities; import them with: cairn-server device import {}",
        records.len(),
        if args.target.is_some() {
            format!("{}/<id>.json", args.out.display())
        } else {
            format!("{}/manifest.json", args.out.display())
        }
    );
    Ok(())
}
