//! A campaign's dry run: who is in which wave, what each device would download (a delta
//! from which version, or the full payload), and the bytes in total. Reads only.

use std::collections::HashMap;

use serde::Serialize;

use crate::campaigns::{get, targets};
use crate::db::Db;
use crate::error::ApiResult;
use crate::plan::{plan, PayloadPlan};
use crate::policy::{position, wave_bounds, wave_of};
use crate::releases;

/// Who is in which wave and what each device would download.
#[derive(Debug, Clone, Serialize)]
pub struct DryRun {
    pub campaign: String,
    pub release: String,
    pub waves: Vec<DryRunWave>,
    pub devices: usize,
    pub total_bytes: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct DryRunWave {
    pub index: usize,
    pub devices: Vec<DryRunDevice>,
    pub bytes: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct DryRunDevice {
    pub device_id: String,
    pub current_version: Option<String>,
    /// `full`, or `delta from <version>` per image, for people.
    pub summary: String,
    pub plan: PayloadPlan,
}

pub async fn dry_run(db: &Db, id: &str) -> ApiResult<DryRun> {
    let campaign = get(db, id).await?;
    let (release, manifest) = releases::get_with_manifest(db, &campaign.release_id).await?;
    let targets = targets(db, &campaign.policy, &release).await?;
    let bounds = (campaign.wave_bounds.clone())
        .unwrap_or_else(|| wave_bounds(&campaign.policy.waves, targets.len() as u64));
    let versions = image_versions(db, &release.compatible).await?;
    let mut waves: Vec<DryRunWave> = (0..bounds.len())
        .map(|index| DryRunWave {
            index,
            devices: Vec::new(),
            bytes: 0,
        })
        .collect();
    let mut ordered = targets;
    ordered.sort_by(|a, b| {
        position(&campaign.salt, &a.id).total_cmp(&position(&campaign.salt, &b.id))
    });
    for d in ordered {
        let plan = plan(&manifest, &d.images);
        let summary = describe(&plan, &versions, d.version.as_deref());
        let wave = &mut waves[wave_of(&bounds, &campaign.salt, &d.id)];
        wave.bytes += plan.total_bytes;
        wave.devices.push(DryRunDevice {
            device_id: d.id,
            current_version: d.version,
            summary,
            plan,
        });
    }
    Ok(DryRun {
        campaign: campaign.id,
        release: release.id,
        devices: waves.iter().map(|w| w.devices.len()).sum(),
        total_bytes: waves.iter().map(|w| w.bytes).sum(),
        waves,
    })
}

/// sha256 of each image of each known release of a device type → that release's version,
/// to name the version a delta starts from.
async fn image_versions(db: &Db, compatible: &str) -> ApiResult<HashMap<String, String>> {
    let mut out = HashMap::new();
    for r in releases::list(db)
        .await?
        .into_iter()
        .filter(|r| r.compatible == compatible)
    {
        for image in r.images {
            out.insert(image.sha256, r.version.clone());
        }
    }
    Ok(out)
}

fn describe(
    plan: &PayloadPlan,
    versions: &HashMap<String, String>,
    current: Option<&str>,
) -> String {
    (plan.images.iter())
        .map(|i| match &i.from_sha256 {
            None => format!("{}: full", i.image),
            Some(sha) => {
                let from = versions
                    .get(sha)
                    .map(String::as_str)
                    .or(current)
                    .unwrap_or("?");
                format!("{}: delta from {from}", i.image)
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}
