//! In-memory views shared by the request handlers of one server: the campaigns that
//! assign (kept for a second) and the releases (kept for good; they never change).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn_bundle::Manifest;

use crate::campaigns::{self, Campaign};
use crate::db::Db;
use crate::error::ApiResult;
use crate::releases::{self, Release};

/// How long a server trusts its copy of the assigning campaigns. Staleness cannot cause
/// a wrong assignment: the insert re-checks the campaign row.
const CAMPAIGN_CACHE_TTL: Duration = Duration::from_secs(1);

pub struct ActiveCampaign {
    pub campaign: Campaign,
    pub release: Arc<(Release, Manifest)>,
    pub bounds: Vec<f64>,
}

/// In-memory views shared by the request handlers of one server.
#[derive(Default)]
pub struct Caches {
    campaigns: Mutex<Option<(Instant, Arc<Vec<ActiveCampaign>>)>>,
    /// Releases never change once added, so they are cached for good.
    releases: Mutex<HashMap<String, Arc<(Release, Manifest)>>>,
}

impl Caches {
    pub async fn release(&self, db: &Db, id: &str) -> ApiResult<Arc<(Release, Manifest)>> {
        if let Some(r) = lock(&self.releases).get(id) {
            return Ok(r.clone());
        }
        let loaded = Arc::new(releases::get_with_manifest(db, id).await?);
        lock(&self.releases).insert(id.to_string(), loaded.clone());
        Ok(loaded)
    }

    pub async fn assigning(&self, db: &Db) -> ApiResult<Arc<Vec<ActiveCampaign>>> {
        if let Some((at, list)) = lock(&self.campaigns).as_ref() {
            if at.elapsed() < CAMPAIGN_CACHE_TTL {
                return Ok(list.clone());
            }
        }
        let mut active = Vec::new();
        for campaign in campaigns::list_assigning(db).await? {
            let release = self.release(db, &campaign.release_id).await?;
            let bounds = campaign.wave_bounds.clone().unwrap_or_else(|| vec![1.0]);
            active.push(ActiveCampaign {
                campaign,
                release,
                bounds,
            });
        }
        let list = Arc::new(active);
        *lock(&self.campaigns) = Some((Instant::now(), list.clone()));
        Ok(list)
    }

    /// Forget the campaigns after this server changed one.
    pub fn invalidate_campaigns(&self) {
        *lock(&self.campaigns) = None;
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding these locks leaves plain data behind; keep serving.
    m.lock().unwrap_or_else(|e| e.into_inner())
}
