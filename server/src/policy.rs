//! What an operator decides when creating a campaign: who, in which waves, and when to
//! stop. Pure data and pure functions; the database only stores it as JSON.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Which devices a campaign targets: same `compatible`, every listed tag, and (when any
/// are listed) only the named ids.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Selector {
    pub compatible: String,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub device_ids: Vec<String>,
}

impl Selector {
    pub fn matches(&self, device_id: &str, compatible: &str, tags: &[String]) -> bool {
        compatible == self.compatible
            && self.tags.iter().all(|t| tags.contains(t))
            && (self.device_ids.is_empty() || self.device_ids.iter().any(|d| d == device_id))
    }
}

/// What the eligibility rule needs to know of a device: who it is and what it runs.
#[derive(Debug, Clone, Copy)]
pub struct Candidate<'a> {
    pub id: &'a str,
    pub compatible: &'a str,
    pub tags: &'a [String],
    /// The version it runs; `None` when it never said.
    pub version: Option<&'a str>,
    /// The lowest security version it still accepts.
    pub security_floor: u64,
}

/// Whether a campaign installing the release `version` (with `security_version`) is for
/// this device: the selector picks it, it does not already run that version, and it would
/// accept the release (its security floor is not above the release's). Campaign targeting
/// (wave sizes, dry run) and check-in (assignment) both decide with this.
pub fn eligible(
    selector: &Selector,
    device: &Candidate<'_>,
    version: &str,
    security_version: u64,
) -> bool {
    selector.matches(device.id, device.compatible, device.tags)
        && device.version != Some(version)
        && device.security_floor <= security_version
}

/// The size of one wave: a number of devices or a percentage of the targeted fleet.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum WaveSize {
    Count(u64),
    Percent(f64),
}

impl std::str::FromStr for WaveSize {
    type Err = String;
    /// `25%` or `10`.
    fn from_str(s: &str) -> Result<WaveSize, String> {
        let bad = || format!("wave size '{s}' is neither a count (10) nor a percentage (25%)");
        match s.trim().strip_suffix('%') {
            Some(p) => {
                let p: f64 = p.trim().parse().map_err(|_| bad())?;
                if !(p > 0.0 && p <= 100.0) {
                    return Err(format!("wave percentage {p} is outside (0, 100]"));
                }
                Ok(WaveSize::Percent(p))
            }
            None => s.trim().parse().map(WaveSize::Count).map_err(|_| bad()),
        }
    }
}

/// Everything about a campaign besides its release and state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CampaignPolicy {
    pub selector: Selector,
    /// Sizes of the waves in order; the last wave always reaches every remaining device.
    pub waves: Vec<WaveSize>,
    /// A wave's gate: this share of its devices must have succeeded ...
    pub min_success_ratio: f64,
    /// ... and stayed so for this long, before the next wave opens.
    pub bake_secs: u64,
    /// The campaign pauses itself once failures exceed this share of the devices in the
    /// open waves.
    pub failure_threshold: f64,
    /// Success needs, after the commit, a TPM quote proving the release's image booted
    /// (`attestation.rs`); a device that cannot give one ends `attestation-failed`.
    #[serde(default)]
    pub attestation_required: bool,
    /// Offer the release also to devices that declined it because its trial failed there
    /// before: the operator's way to re-offer a release after fixing what made it fail.
    #[serde(default)]
    pub retry_declined: bool,
    /// How many devices may reboot into the release at once (`reboot_leases.rs`); none:
    /// no limit, devices reboot when their own policy says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reboot_budget: Option<RebootBudget>,
}

/// At most `max_rebooting` devices of a group hold a reboot lease at once: from asking
/// to reboot until they commit or roll back, or `lease_secs` pass.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RebootBudget {
    pub max_rebooting: u32,
    /// The tag key that groups devices: with `cluster`, devices tagged `cluster=line-3`
    /// share one budget and `cluster=line-4` another (devices without the tag form one
    /// group of their own). None: the whole campaign is one group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_by: Option<String>,
    /// A lease neither ended by a commit nor by a rollback is freed after this: the
    /// device died mid-reboot, or its reports are lost.
    pub lease_secs: u64,
}

/// A leased reboot that has not ended in 15 minutes is taken for a dead device.
pub const DEFAULT_REBOOT_LEASE_SECS: u64 = 900;

/// Budgets above this would only be "no limit" spelled differently, and each one is a
/// slot the grant scans.
pub const MAX_REBOOT_BUDGET: u32 = 1000;

impl RebootBudget {
    /// The group a device with `tags` falls in: `key=value` of its grouping tag, or
    /// `campaign` when the budget is campaign-wide.
    pub fn group_of(&self, tags: &[String]) -> String {
        let Some(key) = &self.group_by else {
            return "campaign".into();
        };
        let prefix = format!("{key}=");
        tags.iter()
            .find(|t| t.starts_with(&prefix))
            .cloned()
            .unwrap_or_else(|| format!("{key} unset"))
    }
}

impl CampaignPolicy {
    pub fn validate(&self) -> Result<(), String> {
        if self.waves.is_empty() {
            return Err("a campaign needs at least one wave".into());
        }
        if self.waves.len() > 64 {
            return Err("at most 64 waves".into());
        }
        for (name, v) in [
            ("min_success_ratio", self.min_success_ratio),
            ("failure_threshold", self.failure_threshold),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return Err(format!("{name} {v} is outside [0, 1]"));
            }
        }
        if let Some(b) = &self.reboot_budget {
            if !(1..=MAX_REBOOT_BUDGET).contains(&b.max_rebooting) {
                return Err(format!(
                    "reboot budget {} is outside 1..={MAX_REBOOT_BUDGET}",
                    b.max_rebooting
                ));
            }
            if b.lease_secs == 0 || b.lease_secs > 7 * 86_400 {
                return Err(format!(
                    "reboot lease of {} s is outside 1 s ..= 7 days",
                    b.lease_secs
                ));
            }
            if let Some(key) = &b.group_by {
                if !cairn_server_api::is_valid_name(key) {
                    return Err(format!(
                        "reboot group key '{key}' is not a name: {}",
                        cairn_server_api::NAME_RULE
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Upper bounds of the waves on the unit interval, cumulative, the last one 1.0. Counts
/// are turned into shares of `targeted` (the fleet size when the campaign starts), so a
/// device's wave never needs a per-device row.
pub fn wave_bounds(waves: &[WaveSize], targeted: u64) -> Vec<f64> {
    let mut sum = 0.0;
    let mut bounds: Vec<f64> = waves
        .iter()
        .map(|w| {
            sum += match *w {
                WaveSize::Count(n) if targeted == 0 => n.min(1) as f64,
                WaveSize::Count(n) => n as f64 / targeted as f64,
                WaveSize::Percent(p) => p / 100.0,
            };
            sum.min(1.0)
        })
        .collect();
    if let Some(last) = bounds.last_mut() {
        *last = 1.0;
    }
    bounds
}

/// Where a device falls on the unit interval for this campaign: a hash of the salt and
/// the id, so the order differs between campaigns and cannot be chosen by the device.
pub fn position(salt: &str, device_id: &str) -> f64 {
    let digest = Sha256::new()
        .chain_update(salt.as_bytes())
        .chain_update([0u8])
        .chain_update(device_id.as_bytes())
        .finalize();
    let mut top = [0u8; 8];
    top.copy_from_slice(&digest[..8]);
    // 53 bits keep the value exactly representable and strictly below 1.0.
    (u64::from_be_bytes(top) >> 11) as f64 / (1u64 << 53) as f64
}

/// The wave (0-based) a device belongs to.
pub fn wave_of(bounds: &[f64], salt: &str, device_id: &str) -> usize {
    let p = position(salt, device_id);
    bounds
        .iter()
        .position(|&b| p < b)
        .unwrap_or(bounds.len().saturating_sub(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_become_shares_of_the_fleet_and_the_last_wave_takes_the_rest() {
        let waves = [
            WaveSize::Count(10),
            WaveSize::Percent(40.0),
            WaveSize::Percent(10.0),
        ];
        assert_eq!(wave_bounds(&waves, 100), vec![0.1, 0.5, 1.0]);
        assert_eq!(wave_bounds(&[WaveSize::Count(500)], 100), vec![1.0]);
    }

    #[test]
    fn wave_sizes_follow_the_bounds_and_the_salt_reshuffles() {
        let bounds = wave_bounds(&[WaveSize::Percent(10.0), WaveSize::Percent(40.0)], 10_000);
        let mut sizes = [0usize; 2];
        for i in 0..10_000 {
            sizes[wave_of(&bounds, "salt-a", &format!("dev-{i}"))] += 1;
        }
        assert!((900..1100).contains(&sizes[0]), "{sizes:?}");
        let moved = (0..1000)
            .filter(|i| {
                let id = format!("dev-{i}");
                wave_of(&bounds, "salt-a", &id) != wave_of(&bounds, "salt-b", &id)
            })
            .count();
        assert!(
            moved > 50,
            "another salt must give another order, moved {moved}"
        );
    }

    #[test]
    fn selector_needs_compatible_all_tags_and_listed_ids() {
        let s = Selector {
            compatible: "c".into(),
            tags: vec!["eu".into()],
            device_ids: vec![],
        };
        let eu = vec!["eu".to_string(), "shop".to_string()];
        assert!(s.matches("d1", "c", &eu));
        assert!(!s.matches("d1", "other", &eu));
        assert!(!s.matches("d1", "c", &["us".to_string()]));
        let ids = Selector {
            device_ids: vec!["d2".into()],
            ..s
        };
        assert!(!ids.matches("d1", "c", &eu));
        assert!(ids.matches("d2", "c", &eu));
    }

    #[test]
    fn eligible_needs_the_selector_another_version_and_an_acceptable_security_version() {
        let s = Selector {
            compatible: "c".into(),
            tags: vec!["eu".into()],
            device_ids: vec![],
        };
        let eu = vec!["eu".to_string()];
        let device = Candidate {
            id: "d1",
            compatible: "c",
            tags: &eu,
            version: Some("1.0"),
            security_floor: 3,
        };
        assert!(eligible(&s, &device, "2.0", 3));
        assert!(!eligible(&s, &device, "1.0", 3), "already runs it");
        assert!(!eligible(&s, &device, "2.0", 2), "below its security floor");
        let other = Candidate {
            compatible: "other",
            ..device
        };
        assert!(!eligible(&s, &other, "2.0", 3), "not selected");
        let silent = Candidate {
            version: None,
            ..device
        };
        assert!(eligible(&s, &silent, "1.0", 3), "no version reported yet");
    }

    #[test]
    fn wave_sizes_parse_from_operator_text() {
        assert_eq!("25%".parse::<WaveSize>(), Ok(WaveSize::Percent(25.0)));
        assert_eq!("10".parse::<WaveSize>(), Ok(WaveSize::Count(10)));
        assert!("0%".parse::<WaveSize>().is_err());
        assert!("ten".parse::<WaveSize>().is_err());
    }

    #[test]
    fn a_reboot_budget_groups_by_its_tag_key_and_refuses_nonsense() {
        let budget = RebootBudget {
            max_rebooting: 1,
            group_by: Some("cluster".into()),
            lease_secs: 900,
        };
        let tags = |t: &[&str]| t.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            budget.group_of(&tags(&["eu", "cluster=line-3"])),
            "cluster=line-3"
        );
        assert_eq!(
            budget.group_of(&tags(&["eu", "clusterx=9"])),
            "cluster unset"
        );
        let campaign_wide = RebootBudget {
            group_by: None,
            ..budget.clone()
        };
        assert_eq!(
            campaign_wide.group_of(&tags(&["cluster=line-3"])),
            "campaign"
        );

        let policy = |b: RebootBudget| CampaignPolicy {
            selector: Selector::default(),
            waves: vec![WaveSize::Percent(100.0)],
            min_success_ratio: 1.0,
            bake_secs: 0,
            failure_threshold: 0.0,
            attestation_required: false,
            retry_declined: false,
            reboot_budget: Some(b),
        };
        assert_eq!(policy(budget.clone()).validate(), Ok(()));
        for (bad, named) in [
            (
                RebootBudget {
                    max_rebooting: 0,
                    ..budget.clone()
                },
                "reboot budget 0",
            ),
            (
                RebootBudget {
                    lease_secs: 0,
                    ..budget.clone()
                },
                "reboot lease of 0 s",
            ),
            (
                RebootBudget {
                    group_by: Some("a=b".into()),
                    ..budget.clone()
                },
                "reboot group key 'a=b'",
            ),
        ] {
            let err = policy(bad).validate().unwrap_err();
            assert!(err.contains(named), "{err}");
        }
    }
}
