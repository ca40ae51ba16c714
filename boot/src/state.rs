//! [`BootState`]: what the bootloader will do on the next boot (which slot to try, in
//! what order, how often, what recovery boots), as the variables of one boot-state copy,
//! and the transitions cairnd makes to it. Transitions are pure; [`crate::copies`]
//! persists them. "INVARIANTS.md N" cites the A/B safety rules in that file at the
//! repository root.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The variables U-Boot imports from and exports to a copy (`cairn_vars` in `boot.cmd`).
/// Anything else in a copy belongs to someone else and is kept as it is.
pub const VARIABLES: [&str; 6] = [
    "BOOT_ORDER",
    "BOOT_A_LEFT",
    "BOOT_B_LEFT",
    "CAIRN_SEQ",
    "CAIRN_COMMITTED",
    "CAIRN_RECOVERY",
];

/// Tries a committed slot gets (RAUC's default).
pub const FULL_TRIES: u32 = 3;
/// Tries a freshly written slot gets: exactly one trial boot.
pub const TRIAL_TRIES: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum SlotId {
    A,
    B,
}

impl SlotId {
    pub fn other(self) -> SlotId {
        match self {
            SlotId::A => SlotId::B,
            SlotId::B => SlotId::A,
        }
    }

    pub fn lower(self) -> &'static str {
        match self {
            SlotId::A => "a",
            SlotId::B => "b",
        }
    }
}

impl fmt::Display for SlotId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SlotId::A => "A",
            SlotId::B => "B",
        })
    }
}

impl FromStr for SlotId {
    type Err = BootStateError;
    fn from_str(s: &str) -> Result<SlotId, BootStateError> {
        match s {
            "A" | "a" => Ok(SlotId::A),
            "B" | "b" => Ok(SlotId::B),
            other => Err(BootStateError::Invalid(format!("unknown slot '{other}'"))),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BootStateError {
    #[error("boot state I/O on {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no valid boot state copy ({0})")]
    NoValidCopy(String),
    #[error("boot state is invalid: {0}")]
    Invalid(String),
}

/// The slot the bootloader boots, and whether as a recovery boot (`cairn.recovery=1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootChoice {
    pub slot: SlotId,
    pub recovery: bool,
}

/// What the bootloader will do on the next boot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootState {
    /// Slots in the order the bootloader tries them.
    pub order: Vec<SlotId>,
    pub tries_a: u32,
    pub tries_b: u32,
    /// The slot recovery boots when no slot has tries left.
    pub committed: SlotId,
    /// Set by the bootloader when it booted `committed` because every slot was out of tries.
    pub recovery: bool,
    /// Write sequence number (two-copy stores take the newest valid copy).
    pub seq: u64,
}

impl BootState {
    /// A fresh device: A committed and first, B unbootable. Also what U-Boot assumes
    /// when neither copy is valid.
    pub fn factory() -> BootState {
        BootState::flashed(FULL_TRIES, false)
    }

    /// What a freshly flashed disk holds: A committed and first with `tries`; B with the
    /// same tries when the image put a bootable copy of A there (a fallback from the first
    /// boot on), else none.
    pub fn flashed(tries: u32, slot_b_bootable: bool) -> BootState {
        BootState {
            order: vec![SlotId::A, SlotId::B],
            tries_a: tries,
            tries_b: if slot_b_bootable { tries } else { 0 },
            committed: SlotId::A,
            recovery: false,
            seq: 0,
        }
    }

    pub fn tries(&self, slot: SlotId) -> u32 {
        match slot {
            SlotId::A => self.tries_a,
            SlotId::B => self.tries_b,
        }
    }

    fn set_tries(&mut self, slot: SlotId, tries: u32) {
        match slot {
            SlotId::A => self.tries_a = tries,
            SlotId::B => self.tries_b = tries,
        }
    }

    fn put_first(&mut self, slot: SlotId) {
        self.order = vec![slot, slot.other()];
    }

    /// The slot the bootloader will boot next (first in order with tries left), or
    /// `None` when it will fall into recovery.
    pub fn next_boot(&self) -> Option<SlotId> {
        self.order.iter().copied().find(|&s| self.tries(s) > 0)
    }

    pub fn is_bootable(&self, slot: SlotId) -> bool {
        self.tries(slot) > 0
    }

    /// Before the first byte goes to `target`: it must not boot (INVARIANTS.md 2).
    pub fn prepare_install(&mut self, target: SlotId) {
        self.set_tries(target, 0);
        self.put_first(target.other());
    }

    /// Every image of `target` is written and verified: boot it once, on trial
    /// (INVARIANTS.md 3). The committed slot keeps its tries as the fallback.
    pub fn arm_trial(&mut self, target: SlotId) {
        self.set_tries(target, TRIAL_TRIES);
        self.put_first(target);
    }

    /// `slot` booted and passed its checks: it becomes the committed slot, first, with
    /// full tries; the other slot keeps its tries as the fallback (INVARIANTS.md 4).
    pub fn commit(&mut self, slot: SlotId) {
        self.set_tries(slot, FULL_TRIES);
        self.put_first(slot);
        self.committed = slot;
        self.recovery = false;
    }

    /// The trial of `failed` is over: it can no longer boot and the committed slot goes
    /// first, before any reboot (INVARIANTS.md 5).
    pub fn reject(&mut self, failed: SlotId) {
        self.set_tries(failed, 0);
        self.put_first(failed.other());
    }

    /// What the bootloader does at power-on (`boot.cmd`; INVARIANTS.md 6 and 8): takes
    /// one try from the first slot in the order that has any and boots it, or, when none
    /// has, marks a recovery boot of the committed slot, leaving every counter as it is.
    /// The caller persists the result before the kernel starts.
    pub fn take_try(&mut self) -> BootChoice {
        match self.next_boot() {
            Some(slot) => {
                self.set_tries(slot, self.tries(slot) - 1);
                BootChoice {
                    slot,
                    recovery: false,
                }
            }
            None => {
                self.recovery = true;
                BootChoice {
                    slot: self.committed,
                    recovery: true,
                }
            }
        }
    }

    /// The committed slot booted normally: restore its tries so a later bad trial plus a
    /// few resets can never leave it with none.
    pub fn refresh_committed(&mut self) {
        self.set_tries(self.committed, FULL_TRIES);
        self.recovery = false;
    }

    /// RAUC-compatible variables plus cairn's own, for the U-Boot env.
    pub fn to_vars(&self, vars: &mut BTreeMap<String, String>) {
        let order: Vec<String> = self.order.iter().map(|s| s.to_string()).collect();
        vars.insert("BOOT_ORDER".into(), order.join(" "));
        vars.insert("BOOT_A_LEFT".into(), self.tries_a.to_string());
        vars.insert("BOOT_B_LEFT".into(), self.tries_b.to_string());
        vars.insert("CAIRN_COMMITTED".into(), self.committed.to_string());
        vars.insert("CAIRN_SEQ".into(), self.seq.to_string());
        if self.recovery {
            vars.insert("CAIRN_RECOVERY".into(), "1".into());
        } else {
            vars.remove("CAIRN_RECOVERY");
        }
    }

    /// Just this state's variables.
    pub fn vars(&self) -> BTreeMap<String, String> {
        let mut vars = BTreeMap::new();
        self.to_vars(&mut vars);
        vars
    }

    pub fn from_vars(vars: &BTreeMap<String, String>) -> Result<BootState, BootStateError> {
        let get = |name: &str| {
            vars.get(name)
                .ok_or_else(|| BootStateError::Invalid(format!("{name} is missing")))
        };
        let num = |name: &str| -> Result<u64, BootStateError> {
            get(name)?
                .trim()
                .parse()
                .map_err(|_| BootStateError::Invalid(format!("{name} is not a number")))
        };
        let order = get("BOOT_ORDER")?
            .split_whitespace()
            .map(SlotId::from_str)
            .collect::<Result<Vec<_>, _>>()?;
        if order.is_empty() {
            return Err(BootStateError::Invalid("BOOT_ORDER is empty".into()));
        }
        Ok(BootState {
            order,
            tries_a: num("BOOT_A_LEFT")? as u32,
            tries_b: num("BOOT_B_LEFT")? as u32,
            committed: match vars.get("CAIRN_COMMITTED") {
                Some(s) => s.parse()?,
                None => SlotId::A,
            },
            recovery: vars.get("CAIRN_RECOVERY").is_some_and(|v| v == "1"),
            seq: vars.get("CAIRN_SEQ").map_or(Ok(0), |_| num("CAIRN_SEQ"))?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_update_cycle_never_leaves_the_device_without_a_bootable_committed_slot() {
        let mut s = BootState::factory();
        let check = |s: &BootState| {
            assert!(
                s.is_bootable(s.committed),
                "committed slot unbootable: {s:?}"
            );
            assert!(s.next_boot().is_some());
        };
        s.prepare_install(SlotId::B);
        check(&s);
        assert_eq!(s.next_boot(), Some(SlotId::A));
        s.arm_trial(SlotId::B);
        check(&s);
        assert_eq!((s.next_boot(), s.tries_b), (Some(SlotId::B), 1));
        s.commit(SlotId::B);
        check(&s);
        assert_eq!(
            (s.committed, s.order[0], s.tries_a),
            (SlotId::B, SlotId::B, FULL_TRIES)
        );
        s.prepare_install(SlotId::A);
        s.arm_trial(SlotId::A);
        s.reject(SlotId::A);
        check(&s);
        assert_eq!((s.next_boot(), s.tries_a), (Some(SlotId::B), 0));
    }

    #[test]
    fn the_bootloader_spends_tries_and_falls_into_recovery_without_resetting_counters() {
        let mut s = BootState::factory();
        s.prepare_install(SlotId::B);
        s.arm_trial(SlotId::B);
        let normal = |slot| BootChoice {
            slot,
            recovery: false,
        };
        assert_eq!(s.take_try(), normal(SlotId::B));
        assert_eq!(s.tries_b, 0);
        assert_eq!(
            s.take_try(),
            normal(SlotId::A),
            "the trial's one try is spent"
        );
        s.tries_a = 0;
        let recovery = s.take_try();
        assert_eq!((recovery.slot, recovery.recovery), (SlotId::A, true));
        assert_eq!((s.tries_a, s.tries_b, s.recovery), (0, 0, true));
    }

    #[test]
    fn boot_cmd_imports_exactly_these_variables() {
        let script = include_str!("../boot.cmd");
        let line = script
            .lines()
            .find_map(|l| l.strip_prefix("setenv cairn_vars "))
            .expect("boot.cmd sets cairn_vars");
        let names: Vec<&str> = line.trim_matches('"').split_whitespace().collect();
        assert_eq!(names, VARIABLES);
    }

    #[test]
    fn a_flashed_disk_with_a_fallback_copy_can_boot_either_slot() {
        let s = BootState::flashed(3, true);
        assert_eq!((s.tries_a, s.tries_b, s.committed), (3, 3, SlotId::A));
        assert_eq!(BootState::flashed(FULL_TRIES, false), BootState::factory());
    }

    #[test]
    fn vars_round_trip_and_keep_foreign_variables() {
        let mut vars = BTreeMap::from([("bootdelay".to_string(), "0".to_string())]);
        let mut s = BootState::factory();
        s.recovery = true;
        s.seq = 41;
        s.to_vars(&mut vars);
        assert_eq!(vars["BOOT_ORDER"], "A B");
        assert_eq!(vars["bootdelay"], "0");
        assert_eq!(BootState::from_vars(&vars).unwrap(), s);
    }
}
