//! Reading what a check-in needs: the device row and all its deployments. Under load the
//! reads of many concurrent check-ins are merged into one query (`WHERE id IN (...)`), so
//! the cost of a database round trip is shared instead of paid per request; each caller
//! still sees data read after it asked. The query itself is [`deployments::device_views`].

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::db::Db;
use crate::deployments::{self, DeviceView};
use crate::error::{ApiError, ApiResult};

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
    let ids: Vec<String> = batch.iter().map(|(id, _)| id.clone()).collect();
    let result = deployments::device_views(db, &ids)
        .await
        .map_err(|e| e.to_string());
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
