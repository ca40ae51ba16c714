//! hawkBit DDI, the Direct Device Integration API: the subset SWUpdate's suricatta and
//! rauc-hawkbit-updater use, so a device that installs with its own client is a device of
//! this server like any other (campaigns, waves, gates, history, dashboard).
//!
//! - A target is a registry device an operator registers with a target token
//!   ([`targets`]); every request carries `Authorization: TargetToken <token>`.
//! - A root poll is a check-in ([`crate::checkin::check_in`]) for the version the device
//!   last confirmed: it records the device as seen and hands out deployments as for any
//!   device. A deployment is a hawkBit action, numbered by [`action_id`].
//! - The action's one chunk lists the release's artifacts ([`artifacts`]), downloaded
//!   from this server with Range support.
//! - Feedback becomes the device API's reports ([`feedback`]): the same state machine,
//!   so a failure counts against the campaign's gate like any other.
//! - A live deployment of an aborted campaign, or one cancelled before it started, is
//!   offered as a `cancelAction` until the client acknowledges it.
//!
//! Where this departs from hawkBit is written in `server/API.md` (hawkBit DDI).

pub mod artifacts;
pub mod feedback;
mod handlers;
pub mod targets;

pub use handlers::routes;

use sha2::{Digest, Sha256};

/// The number a deployment is known by to a DDI client: hawkBit action ids are numbers
/// and SWUpdate reads them as a 32-bit int. Derived from the deployment id, so nothing
/// is stored; a device's deployments are found by computing theirs.
pub fn action_id(deployment_id: &str) -> u32 {
    let digest = Sha256::digest(format!("cairn-ddi-action\0{deployment_id}").as_bytes());
    let n = u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]) & 0x7fff_ffff;
    n.max(1)
}

/// hawkBit's polling interval format, `HH:MM:SS`.
pub fn sleep(secs: u64) -> String {
    let secs = secs.min(99 * 3600 + 59 * 60 + 59);
    format!("{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn action_ids_are_positive_31_bit_and_stable() {
        let ids: std::collections::BTreeSet<u32> = (0..10_000)
            .map(|i| action_id(&format!("dep-{i:016x}")))
            .collect();
        assert_eq!(ids.len(), 10_000);
        assert!(ids.iter().all(|&id| id >= 1 && id <= i32::MAX as u32));
        assert_eq!(action_id("dep-1"), action_id("dep-1"));
    }

    #[test]
    fn polling_intervals_in_hawkbits_format() {
        assert_eq!(sleep(3), "00:00:03");
        assert_eq!(sleep(3725), "01:02:05");
        assert_eq!(sleep(u64::MAX), "99:59:59");
    }
}
