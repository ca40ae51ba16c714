//! Leave to reboot: before cairnd reboots into an update a server assigned, it asks the
//! server for a reboot lease (the campaign's reboot budget, server/src/reboot_leases.rs),
//! so that at most N nodes of a cluster are away at once. Asked before the drain hook:
//! a node drains only once it may go.
//!
//! - An update installed without a server deployment (`cairn install`), or a device with
//!   no server, needs no lease.
//! - A lease held is renewed by asking again at half its life, until the reboot.
//! - The server refusing the request for good (the deployment was cancelled or decided,
//!   the device revoked) leaves nothing to budget: the device reboots.
//! - The server unreachable: the device waits and asks again, since it cannot know
//!   whether its group's budget is spent.
//!
//! Why the device waits is kept in `<data_dir>/reboot-lease.json` (written atomically,
//! only when it changes) for `cairn status` and the next check-in, both in other
//! processes or modules than the one that asked.

use std::path::Path;
use std::time::{Duration, Instant};

use cairn_server_api::RebootLease;
use serde::{Deserialize, Serialize};

use super::ServerClient;
use crate::context::Context;
use crate::state::json_file::JsonFile;
use crate::state::Phase;

const WAIT_FILE: &str = "reboot-lease.json";
/// How long to wait before asking again when the server could not be asked.
const UNREACHABLE_RETRY: Duration = Duration::from_secs(30);
/// A lease without an expiry (the campaign has no budget) is asked for again after this
/// only if the device is still not rebooted (its reboot policy waits for a window).
const UNBUDGETED_RECHECK: Duration = Duration::from_secs(600);

/// What the device waits for, on disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseWait {
    pub deployment: String,
    /// The installed update waiting for the reboot.
    pub version: String,
    /// `waiting for a reboot lease: 1 of 1 in cluster=line-3 rebooting`.
    pub reason: String,
}

/// cairnd's memory of its lease between loop ticks: for which deployment, until when it
/// holds one, when to ask again.
#[derive(Debug, Default)]
pub struct LeaseKeeper {
    deployment: Option<String>,
    held_until: Option<Instant>,
    next_ask: Option<Instant>,
}

impl LeaseKeeper {
    /// Whether the device may reboot into its installed update now, asking the server
    /// when it has to (`client`: `None` when no connection could be made).
    pub fn may_reboot(&mut self, ctx: &Context, client: Option<&mut ServerClient>) -> bool {
        let Phase::InstalledPending { version, .. } = &ctx.state.phase else {
            return true;
        };
        let (Some(deployment), Some(_)) = (&ctx.state.deployment, &ctx.config.server) else {
            return true;
        };
        if self.deployment.as_ref() != Some(deployment) {
            *self = LeaseKeeper {
                deployment: Some(deployment.clone()),
                ..LeaseKeeper::default()
            };
        }
        let now = Instant::now();
        if self.held_until.is_some_and(|t| now < t) {
            return true;
        }
        if self.next_ask.is_some_and(|t| now < t) {
            return false;
        }
        let store = WaitStore::new(&ctx.config.data_dir);
        let wait = |reason: String, retry: Duration, keeper: &mut LeaseKeeper| {
            keeper.held_until = None;
            keeper.next_ask = Some(now + retry);
            let wait = LeaseWait {
                deployment: deployment.clone(),
                version: version.clone(),
                reason,
            };
            if store.load().as_ref() != Some(&wait) {
                tracing::info!("{}", wait.reason);
                store.save(&wait);
            }
            false
        };
        let Some(client) = client else {
            return wait(
                "waiting for a reboot lease: the server is not reachable".into(),
                UNREACHABLE_RETRY,
                self,
            );
        };
        match client.reboot_lease(deployment) {
            Ok(RebootLease::Granted { expires_in_secs }) => {
                let hold =
                    expires_in_secs.map_or(UNBUDGETED_RECHECK, |s| Duration::from_secs(s / 2));
                self.held_until = Some(now + hold);
                if expires_in_secs.is_some() {
                    tracing::info!(%deployment, "reboot lease granted");
                }
                store.clear();
                true
            }
            Ok(RebootLease::Wait {
                group,
                in_use,
                budget,
                retry_after_secs,
            }) => wait(
                format!("waiting for a reboot lease: {in_use} of {budget} in {group} rebooting"),
                Duration::from_secs(retry_after_secs.clamp(1, 300)),
                self,
            ),
            Err(e) if e.is_refusal() => {
                tracing::warn!(%deployment, "no reboot lease to ask for, rebooting: {e}");
                store.clear();
                true
            }
            Err(e) => wait(
                format!("waiting for a reboot lease: {e}"),
                UNREACHABLE_RETRY,
                self,
            ),
        }
    }
}

/// Why the device waits for its reboot lease, if it does: the line for `cairn status`
/// and check-ins. Stale records (another update by now) are ignored.
pub fn waiting_reason(ctx: &Context) -> Option<String> {
    let Phase::InstalledPending { version, .. } = &ctx.state.phase else {
        return None;
    };
    let wait = WaitStore::new(&ctx.config.data_dir).load()?;
    (wait.version == *version && ctx.state.deployment.as_ref() == Some(&wait.deployment))
        .then_some(wait.reason)
}

/// `<data_dir>/reboot-lease.json`. Losing it loses only a status line, so failures to
/// write it are logged, not raised.
struct WaitStore(JsonFile<LeaseWait>);

impl WaitStore {
    fn new(data_dir: &Path) -> WaitStore {
        WaitStore(JsonFile::new(data_dir.join(WAIT_FILE)))
    }

    fn load(&self) -> Option<LeaseWait> {
        self.0.load()
    }

    fn save(&self, wait: &LeaseWait) {
        if let Err(e) = self.0.save(wait) {
            tracing::warn!(path = %self.0.path().display(), "not saved: {e}");
        }
    }

    fn clear(&self) {
        if let Err(e) = self.0.clear() {
            tracing::warn!(path = %self.0.path().display(), "not removed: {e}");
        }
    }
}
