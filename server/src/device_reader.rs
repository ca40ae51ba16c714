//! Reading what a check-in needs: the device row and all its deployments. Under load the
//! reads of many concurrent check-ins are merged into one query (`WHERE id IN (...)`), so
//! the cost of a database round trip is shared instead of paid per request; each caller
//! still sees data read after it asked.

use std::collections::HashMap;
use std::sync::Arc;

use cairn_server_api::DeploymentState;
use sqlx::Row as _;
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::db::{Db, Row};
use crate::devices::split_tags;
use crate::error::{ApiError, ApiResult};

#[derive(Clone)]
pub struct DeploymentRow {
    pub id: String,
    pub campaign_id: String,
    pub state: DeploymentState,
    pub live: bool,
    pub campaign_state: String,
    pub release_id: String,
    /// Set while the deployment waits for the device's TPM quote.
    pub attestation_nonce: Option<String>,
}

/// What a check-in needs of the device row.
#[derive(Clone)]
pub struct DeviceRow {
    pub approval: String,
    pub compatible: String,
    pub tags: Vec<String>,
    pub version: Option<String>,
}

pub type DeviceView = (DeviceRow, Vec<DeploymentRow>);

const SELECT: &str = "SELECT v.id AS device_id, v.approval, v.compatible, v.tags, v.version, \
     d.id, d.campaign_id, d.state, d.live, d.attestation_nonce, c.state AS campaign_state, c.release_id FROM devices v \
     LEFT JOIN deployments d ON d.device_id = v.id \
     LEFT JOIN campaigns c ON c.id = d.campaign_id WHERE v.id ";

/// Reads one device now, without batching.
pub async fn load(db: &Db, device_id: &str) -> ApiResult<Option<DeviceView>> {
    let rows = sqlx::query(&format!("{SELECT}= $1"))
        .bind(device_id)
        .fetch_all(&db.pool)
        .await?;
    Ok(group(&rows)?.remove(device_id))
}

/// Rows of the join, grouped per device.
fn group(rows: &[Row]) -> ApiResult<HashMap<String, DeviceView>> {
    let mut out: HashMap<String, DeviceView> = HashMap::new();
    for r in rows {
        let device_id: String = r.try_get("device_id")?;
        let view = match out.entry(device_id) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                let device = DeviceRow {
                    approval: r.try_get("approval")?,
                    compatible: r.try_get("compatible")?,
                    tags: split_tags(&r.try_get::<String, _>("tags")?),
                    version: r.try_get("version")?,
                };
                e.insert((device, Vec::new()))
            }
        };
        let Some(id) = r.try_get::<Option<String>, _>("id")? else {
            continue;
        };
        let state: String = r.try_get("state")?;
        view.1.push(DeploymentRow {
            id,
            campaign_id: r.try_get("campaign_id")?,
            state: DeploymentState::parse(&state)
                .ok_or_else(|| anyhow::anyhow!("stored deployment state '{state}'"))?,
            live: r.try_get::<Option<i64>, _>("live")?.is_some(),
            campaign_state: r.try_get("campaign_state")?,
            release_id: r.try_get("release_id")?,
            attestation_nonce: r.try_get("attestation_nonce")?,
        });
    }
    Ok(out)
}

type Reply = oneshot::Sender<Result<Option<DeviceView>, String>>;

/// Merges concurrent reads. At most `in_flight` merged queries run at once; requests that
/// arrive meanwhile wait in the queue and go together in the next query.
#[derive(Clone)]
pub struct DeviceReader {
    tx: mpsc::Sender<(String, Reply)>,
}

/// Devices per merged query (SQLite's by-name parameter lookup grows with the square of
/// the number of parameters, so it stays modest).
const BATCH: usize = 64;

impl DeviceReader {
    pub fn start(db: Db, in_flight: usize) -> DeviceReader {
        let (tx, mut rx) = mpsc::channel::<(String, Reply)>(16_384);
        let permits = Arc::new(Semaphore::new(in_flight.max(1)));
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(BATCH);
            loop {
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    return;
                };
                if rx.recv_many(&mut batch, BATCH).await == 0 {
                    return;
                }
                let db = db.clone();
                let taken = std::mem::take(&mut batch);
                tokio::spawn(async move {
                    read_batch(&db, taken).await;
                    drop(permit);
                });
            }
        });
        DeviceReader { tx }
    }

    pub async fn read(&self, device_id: &str) -> ApiResult<Option<DeviceView>> {
        let (reply, answer) = oneshot::channel();
        let gone = || ApiError::Internal(anyhow::anyhow!("the device reader stopped"));
        self.tx
            .send((device_id.to_string(), reply))
            .await
            .map_err(|_| gone())?;
        answer
            .await
            .map_err(|_| gone())?
            .map_err(|e| ApiError::Internal(anyhow::anyhow!("reading devices: {e}")))
    }
}

async fn read_batch(db: &Db, batch: Vec<(String, Reply)>) {
    let placeholders: Vec<String> = (1..=batch.len()).map(|i| format!("${i}")).collect();
    let sql = format!("{SELECT}IN ({})", placeholders.join(", "));
    let mut query = sqlx::query(&sql);
    for (id, _) in &batch {
        query = query.bind(id);
    }
    let result = match query.fetch_all(&db.pool).await {
        Ok(rows) => group(&rows).map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    match result {
        Ok(views) => {
            // The same device may be in a batch more than once (retries, two requests
            // at the same moment): each caller gets its own copy.
            for (id, reply) in batch {
                let _ = reply.send(Ok(views.get(&id).cloned()));
            }
        }
        Err(e) => {
            for (_, reply) in batch {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
}
