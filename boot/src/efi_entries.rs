//! The UEFI path's boot state: one unified kernel image per slot in `\EFI\Linux` on the
//! EFI system partition, a Boot Loader Specification type #2 entry that systemd-boot
//! finds, orders and counts by its file name alone (docs/UEFI.md). No other file holds
//! boot state on this path.
//!
//! An entry's file name is `cairn-<generation>-<slot>[+<left>[-<done>]].efi`:
//! - `generation` grows by one with every install, so the newest install sorts first;
//! - `slot` is `a` or `b`;
//! - the counter is systemd-boot's boot assessment: `+1-0` is a trial with one try left.
//!   Before starting a counted entry, systemd-boot renames it with one try moved from
//!   `left` to `done`; at `+0-<n>` it is "bad" and sorts after every other entry. An
//!   entry without a counter is good: it always boots when chosen.
//!
//! systemd-boot starts the first entry in its order. For Cairn's names (no sort key, as
//! the UKIs' os-release carries no `ID` or `IMAGE_ID`) that order is: bad entries last,
//! then the file name without its counter in descending version order (here: the higher
//! generation first), then more tries left first. [`EntrySet::next_boot`] is that rule; a
//! QEMU test holds it to the real systemd-boot.
//!
//! The transitions say which renames and removals make a change; applying them is the
//! caller's (cairnd's) job, one rename or removal at a time, each synced, so a power cut
//! leaves either the old name or the new one: never a half-written entry under a name
//! systemd-boot reads (new UKIs are written under a name it ignores and renamed last).

use std::cmp::Ordering;
use std::fmt;

use crate::state::{SlotId, TRIAL_TRIES};

/// The directory of the ESP that holds the entries.
pub const ENTRY_DIR: &str = "EFI/Linux";
const PREFIX: &str = "cairn-";
const SUFFIX: &str = ".efi";

/// systemd-boot's boot-assessment counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counter {
    pub left: u32,
    pub done: u32,
}

/// One entry: a slot's UKI under its counted name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub generation: u64,
    pub slot: SlotId,
    pub counter: Option<Counter>,
}

impl Entry {
    /// Parses a file name in `\EFI\Linux`; `None` for anything that is not a Cairn entry
    /// (other UKIs, temp files), which the transitions leave alone.
    pub fn parse(file_name: &str) -> Option<Entry> {
        let lower = file_name.to_ascii_lowercase();
        let stem = lower.strip_prefix(PREFIX)?.strip_suffix(SUFFIX)?;
        let (id, counter) = match stem.split_once('+') {
            None => (stem, None),
            Some((id, counter)) => {
                let (left, done) = counter.split_once('-').unwrap_or((counter, "0"));
                (
                    id,
                    Some(Counter {
                        left: number(left)?,
                        done: number(done)?,
                    }),
                )
            }
        };
        let (generation, slot) = id.split_once('-')?;
        let slot = match slot {
            "a" => SlotId::A,
            "b" => SlotId::B,
            _ => return None,
        };
        Some(Entry {
            generation: number(generation)?,
            slot,
            counter,
        })
    }

    pub fn file_name(&self) -> String {
        let counter = self
            .counter
            .map_or(String::new(), |c| format!("+{}-{}", c.left, c.done));
        format!(
            "{PREFIX}{}-{}{counter}{SUFFIX}",
            self.generation,
            self.slot.lower()
        )
    }

    /// No tries left: systemd-boot puts it after every other entry.
    pub fn is_bad(&self) -> bool {
        self.counter.is_some_and(|c| c.left == 0)
    }

    /// Still on trial (counted, tries left).
    pub fn is_trial(&self) -> bool {
        self.counter.is_some_and(|c| c.left > 0)
    }

    /// What systemd-boot renames the entry to when it starts it.
    pub fn after_one_try(&self) -> Entry {
        let counter = self.counter.map(|c| Counter {
            left: c.left.saturating_sub(1),
            done: c.done.saturating_add(1),
        });
        Entry { counter, ..*self }
    }
}

impl fmt::Display for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.file_name())
    }
}

fn number<T: std::str::FromStr>(digits: &str) -> Option<T> {
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// One step of a transition, on names in [`ENTRY_DIR`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryOp {
    Remove(Entry),
    Rename { from: Entry, to: Entry },
}

/// The Cairn entries on an ESP.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EntrySet {
    entries: Vec<Entry>,
}

impl EntrySet {
    /// The entries among a directory listing's file names (others are ignored).
    pub fn from_file_names<S: AsRef<str>>(names: impl IntoIterator<Item = S>) -> EntrySet {
        EntrySet {
            entries: names
                .into_iter()
                .filter_map(|n| Entry::parse(n.as_ref()))
                .collect(),
        }
    }

    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// systemd-boot's order: bad last, then higher generation first, then more tries
    /// left, then fewer tries done.
    pub fn in_boot_order(&self) -> Vec<Entry> {
        let mut sorted = self.entries.clone();
        sorted.sort_by(boot_order);
        sorted
    }

    /// The entry systemd-boot starts next (and renames with [`Entry::after_one_try`] first).
    pub fn next_boot(&self) -> Option<Entry> {
        self.in_boot_order().into_iter().next()
    }

    /// The entries of `slot`.
    pub fn of_slot(&self, slot: SlotId) -> impl Iterator<Item = &Entry> {
        self.entries.iter().filter(move |e| e.slot == slot)
    }

    /// Before a slot is overwritten: its entries go, so that nothing can boot the slot
    /// while it holds neither the old image nor the new one.
    pub fn prepare_install(&self, target: SlotId) -> Vec<EntryOp> {
        self.of_slot(target).map(|e| EntryOp::Remove(*e)).collect()
    }

    /// The name a freshly installed slot's UKI is renamed to once it is completely written
    /// and synced: the next generation, on trial with exactly one try.
    pub fn trial_entry(&self, target: SlotId) -> Entry {
        let generation = self.entries.iter().map(|e| e.generation).max().unwrap_or(0) + 1;
        Entry {
            generation,
            slot: target,
            counter: Some(Counter {
                left: TRIAL_TRIES,
                done: 0,
            }),
        }
    }

    /// After the trial passed: the slot's counted entry loses its counter (the rename
    /// `systemd-bless-boot` makes), and it boots from now on.
    pub fn commit(&self, slot: SlotId) -> Vec<EntryOp> {
        self.of_slot(slot)
            .filter(|e| e.counter.is_some())
            .map(|e| EntryOp::Rename {
                from: *e,
                to: Entry {
                    counter: None,
                    ..*e
                },
            })
            .collect()
    }

    /// After the trial failed: the slot's entries are marked bad (no tries left), so the
    /// next boot takes the other slot and this one is never started again by itself.
    pub fn reject(&self, failed: SlotId) -> Vec<EntryOp> {
        self.of_slot(failed)
            .filter(|e| !e.is_bad())
            .map(|e| {
                let done = e.counter.map_or(0, |c| c.done + c.left);
                EntryOp::Rename {
                    from: *e,
                    to: Entry {
                        counter: Some(Counter { left: 0, done }),
                        ..*e
                    },
                }
            })
            .collect()
    }

    /// The set after `ops`.
    pub fn apply(&self, ops: &[EntryOp]) -> EntrySet {
        let mut entries = self.entries.clone();
        for op in ops {
            match op {
                EntryOp::Remove(gone) => entries.retain(|e| e != gone),
                EntryOp::Rename { from, to } => {
                    for e in entries.iter_mut().filter(|e| *e == from) {
                        *e = *to;
                    }
                }
            }
        }
        EntrySet { entries }
    }

    /// The set with `entry` added (a new UKI renamed into place).
    pub fn with(&self, entry: Entry) -> EntrySet {
        let mut entries = self.entries.clone();
        entries.push(entry);
        EntrySet { entries }
    }
}

fn boot_order(a: &Entry, b: &Entry) -> Ordering {
    a.is_bad()
        .cmp(&b.is_bad())
        .then(b.generation.cmp(&a.generation))
        .then(b.slot.cmp(&a.slot))
        .then_with(|| match (a.counter, b.counter) {
            (Some(x), Some(y)) => y.left.cmp(&x.left).then(x.done.cmp(&y.done)),
            _ => Ordering::Equal,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(names: &[&str]) -> EntrySet {
        EntrySet::from_file_names(names)
    }

    #[test]
    fn names_round_trip_and_foreign_files_are_ignored() {
        for name in ["cairn-1-a.efi", "cairn-12-b+1-0.efi", "cairn-3-a+0-2.efi"] {
            assert_eq!(Entry::parse(name).unwrap().file_name(), name);
        }
        assert_eq!(
            Entry::parse("cairn-2-b+3.efi").unwrap().counter,
            Some(Counter { left: 3, done: 0 })
        );
        assert_eq!(Entry::parse("CAIRN-2-B.EFI").unwrap().slot, SlotId::B);
        for other in [
            "debian.efi",
            "cairn-1-c.efi",
            "cairn-x-a.efi",
            "cairn-1-a.efi.tmp",
            "cairn-1-a+-0.efi",
            "cairn--a.efi",
        ] {
            assert_eq!(Entry::parse(other), None, "{other}");
        }
        assert_eq!(set(&["cairn-1-a.efi", "ubuntu.efi"]).entries().len(), 1);
    }

    #[test]
    fn the_newest_generation_boots_first_unless_it_is_bad() {
        let s = set(&["cairn-9-a.efi", "cairn-10-b+1-0.efi"]);
        assert_eq!(
            s.next_boot().unwrap().file_name(),
            "cairn-10-b+1-0.efi",
            "10 > 9 as numbers"
        );
        let s = set(&["cairn-9-a.efi", "cairn-10-b+0-1.efi"]);
        assert_eq!(s.next_boot().unwrap().file_name(), "cairn-9-a.efi");
        assert_eq!(set(&[]).next_boot(), None);
    }

    #[test]
    fn an_install_trial_and_commit_go_through_the_states_systemd_boot_sees() {
        let committed = set(&["cairn-1-a.efi", "cairn-1-b+0-1.efi"]);
        let prepared = committed.apply(&committed.prepare_install(SlotId::B));
        assert_eq!(prepared, set(&["cairn-1-a.efi"]));
        let trial = prepared.trial_entry(SlotId::B);
        assert_eq!(trial.file_name(), "cairn-2-b+1-0.efi");
        let armed = prepared.with(trial);
        let started = armed.next_boot().unwrap();
        assert_eq!(started, trial);
        // systemd-boot renames before starting; then cairnd blesses.
        let booted = armed.apply(&[EntryOp::Rename {
            from: trial,
            to: trial.after_one_try(),
        }]);
        assert_eq!(booted, set(&["cairn-1-a.efi", "cairn-2-b+0-1.efi"]));
        let committed = booted.apply(&booted.commit(SlotId::B));
        assert_eq!(committed, set(&["cairn-1-a.efi", "cairn-2-b.efi"]));
        assert_eq!(committed.next_boot().unwrap().slot, SlotId::B);
    }

    #[test]
    fn an_unblessed_or_rejected_trial_falls_back_and_is_never_retried() {
        let booted = set(&["cairn-1-a.efi", "cairn-2-b+0-1.efi"]);
        assert_eq!(booted.next_boot().unwrap().slot, SlotId::A);
        let armed = set(&["cairn-1-a.efi", "cairn-2-b+1-0.efi"]);
        let rejected = armed.apply(&armed.reject(SlotId::B));
        assert_eq!(rejected, set(&["cairn-1-a.efi", "cairn-2-b+0-1.efi"]));
        assert_eq!(rejected.next_boot().unwrap().slot, SlotId::A);
        // Rejecting a committed slot (its own health failed) marks it bad too.
        let both = set(&["cairn-3-a.efi", "cairn-2-b.efi"]);
        let after = both.apply(&both.reject(SlotId::A));
        assert_eq!(after, set(&["cairn-3-a+0-0.efi", "cairn-2-b.efi"]));
        assert_eq!(after.next_boot().unwrap().slot, SlotId::B);
    }
}
