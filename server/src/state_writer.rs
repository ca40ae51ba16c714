//! Device state from check-ins, written in batches.

use std::collections::HashMap;

use cairn_server_api::CheckIn;
use tokio::sync::{mpsc, oneshot};

use crate::db::{now_ms, Db};

/// Writes what devices report at check-in in batches: one transaction for everything that
/// arrived while the previous batch was being written, and only the newest state of each
/// device. A crash loses at most that last batch, which the next check-in repeats.
#[derive(Clone)]
pub struct StateWriter {
    tx: mpsc::Sender<WriterMessage>,
}

enum WriterMessage {
    State(String, CheckIn, i64),
    /// Answered once everything queued before it is committed.
    Flush(oneshot::Sender<()>),
}

impl StateWriter {
    pub fn start(db: Db) -> StateWriter {
        let (tx, mut rx) = mpsc::channel::<WriterMessage>(65_536);
        tokio::spawn(async move {
            let mut buf = Vec::with_capacity(8192);
            while rx.recv_many(&mut buf, 8192).await > 0 {
                let mut newest: HashMap<String, (CheckIn, i64)> = HashMap::with_capacity(buf.len());
                let mut waiting = Vec::new();
                for message in buf.drain(..) {
                    match message {
                        WriterMessage::State(id, state, at) => {
                            newest.insert(id, (state, at));
                        }
                        WriterMessage::Flush(done) => waiting.push(done),
                    }
                }
                if let Err(e) = write_batch(&db, newest).await {
                    tracing::error!("writing device check-in states: {e:#}");
                }
                for done in waiting {
                    let _ = done.send(());
                }
            }
        });
        StateWriter { tx }
    }

    pub async fn queue(&self, device_id: &str, state: CheckIn) {
        // Only fails when the writer task is gone, i.e. the server is shutting down.
        let message = WriterMessage::State(device_id.to_string(), state, now_ms());
        let _ = self.tx.send(message).await;
    }

    /// Resolves once everything queued before the call is written.
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(WriterMessage::Flush(done)).await.is_ok() {
            let _ = wait.await;
        }
    }
}

/// Rows per UPDATE statement. SQLite looks bound parameters up by name, which grows with
/// the square of their number, so statements stay small.
const ROWS_PER_STATEMENT: usize = 50;

/// One multi-row `UPDATE ... FROM (VALUES ...)` per chunk (both engines name the columns
/// of a VALUES list column1, column2, ...): one round trip for many devices.
///
/// The version is not written here: check-in writes a changed version at once, and a
/// batch still in flight must not put an older one back. Batches from several servers
/// may land out of order, so a state older than the stored one is skipped.
async fn write_batch(db: &Db, batch: HashMap<String, (CheckIn, i64)>) -> anyhow::Result<()> {
    let rows: Vec<(String, CheckIn, i64)> =
        batch.into_iter().map(|(id, (s, at))| (id, s, at)).collect();
    let mut tx = db.pool.begin().await?;
    for chunk in rows.chunks(ROWS_PER_STATEMENT) {
        let mut sql = String::from(
            "UPDATE devices SET booted_slot = v.column2, committed_slot = v.column3, \
             security_floor = v.column4, images = v.column5, last_checkin = v.column6, \
             waiting = v.column7 FROM (VALUES ",
        );
        for i in 0..chunk.len() {
            let p = i * 7;
            let row: Vec<String> = (1..=7).map(|n| format!("${}", p + n)).collect();
            if i > 0 {
                sql.push(',');
            }
            sql.push_str(&format!("({})", row.join(", ")));
        }
        sql.push_str(
            ") AS v WHERE devices.id = v.column1 \
             AND (devices.last_checkin IS NULL OR devices.last_checkin <= v.column6)",
        );
        let mut query = sqlx::query(&sql);
        for (id, s, at) in chunk {
            query = query
                .bind(id)
                .bind(slot(s.booted_slot))
                .bind(slot(s.committed_slot))
                .bind(s.security_floor as i64)
                .bind(serde_json::to_string(&s.images)?)
                .bind(*at)
                .bind(s.waiting.as_deref());
        }
        query.execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(())
}

fn slot(s: cairn_server_api::Slot) -> &'static str {
    match s {
        cairn_server_api::Slot::A => "A",
        cairn_server_api::Slot::B => "B",
    }
}
