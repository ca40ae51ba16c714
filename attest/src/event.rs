//! The measurement event log the device writes and the verifier replays.
//!
//! Every event extends [`CAIRN_PCR`](crate::CAIRN_PCR) (SHA-256 bank) with
//! `sha256("cairn-event-v1\0" || kind || "\0" || value)`, where `kind` is the kebab-case
//! name below. Replaying starts from 32 zero bytes (the PCR's reset value) and computes
//! `pcr = sha256(pcr || digest)` per event, exactly as TPM2_PCR_Extend does.
//!
//! One event is not Cairn's: on the UEFI path (docs/UEFI.md) systemd-boot has already
//! measured the entry's command line into the PCR before Linux starts, as
//! `sha256(UTF-16LE(command line) || 00 00)`. The log records it first, as
//! [`EventKind::LoaderCmdline`] with that digest, so the replay still starts from zeros.
//!
//! JSON form: `{"events":[{"kind":"slot","value":"a","digest":"<64 hex>"}, ...]}`.

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{AttestError, Result};

/// Domain separation prefix of every event digest.
pub const EVENT_DOMAIN: &[u8] = b"cairn-event-v1\0";

/// What an event measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EventKind {
    /// The booted slot: `"a"` or `"b"`.
    Slot,
    /// The dm-verity root hash of the slot's rootfs, lowercase hex.
    RootfsVerityRoot,
    /// SHA-256 of the kernel file, lowercase hex (64 characters).
    Kernel,
    /// SHA-256 of the initrd file, lowercase hex (64 characters).
    Initrd,
    /// The UEFI path: the kernel command line systemd-boot measured before starting the
    /// unified kernel image (printable ASCII). Always the first event.
    LoaderCmdline,
    /// The UEFI path: SHA-256 of the unified kernel image file the slot's entry holds,
    /// lowercase hex (64 characters).
    Uki,
}

impl EventKind {
    pub const ALL: [EventKind; 6] = [
        EventKind::Slot,
        EventKind::RootfsVerityRoot,
        EventKind::Kernel,
        EventKind::Initrd,
        EventKind::LoaderCmdline,
        EventKind::Uki,
    ];

    /// The name hashed into the digest (same as the JSON name).
    pub fn name(self) -> &'static str {
        match self {
            EventKind::Slot => "slot",
            EventKind::RootfsVerityRoot => "rootfs-verity-root",
            EventKind::Kernel => "kernel",
            EventKind::Initrd => "initrd",
            EventKind::LoaderCmdline => "loader-cmdline",
            EventKind::Uki => "uki",
        }
    }

    /// Checks `value` has the form this kind requires.
    fn check_value(self, value: &str) -> std::result::Result<(), String> {
        let hex_of = |min: usize, max: usize| {
            if value.len() < min || value.len() > max || !value.len().is_multiple_of(2) {
                return Err(format!(
                    "expected {min}..={max} lowercase hex characters, got {}",
                    value.len()
                ));
            }
            if !value
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
            {
                return Err("expected lowercase hex".to_string());
            }
            Ok(())
        };
        match self {
            EventKind::Slot if value == "a" || value == "b" => Ok(()),
            EventKind::Slot => Err(format!("expected \"a\" or \"b\", got {value:?}")),
            // verity may use any hash; sha256 (64) up to sha512 (128).
            EventKind::RootfsVerityRoot => hex_of(40, 128),
            EventKind::Kernel | EventKind::Initrd | EventKind::Uki => hex_of(64, 64),
            EventKind::LoaderCmdline
                if value.len() <= MAX_CMDLINE
                    && value.bytes().all(|b| (b' '..=b'~').contains(&b)) =>
            {
                Ok(())
            }
            EventKind::LoaderCmdline => Err(format!(
                "expected at most {MAX_CMDLINE} printable ASCII characters"
            )),
        }
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The longest command line a [`EventKind::LoaderCmdline`] event may carry.
const MAX_CMDLINE: usize = 4096;

/// The digest an event extends the PCR with.
pub fn event_digest(kind: EventKind, value: &str) -> [u8; 32] {
    if kind == EventKind::LoaderCmdline {
        return loader_cmdline_digest(value);
    }
    let mut h = Sha256::new();
    h.update(EVENT_DOMAIN);
    h.update(kind.name().as_bytes());
    h.update([0u8]);
    h.update(value.as_bytes());
    h.finalize().into()
}

/// What systemd-boot extends PCR 12 with for a type #2 entry's command line (systemd
/// 254): the command line in UTF-16LE with its terminating NUL.
pub fn loader_cmdline_digest(cmdline: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    for unit in cmdline.encode_utf16().chain([0]) {
        h.update(unit.to_le_bytes());
    }
    h.finalize().into()
}

/// `sha256(pcr || digest)`: one TPM2_PCR_Extend in the SHA-256 bank.
pub fn extend(pcr: &[u8; 32], digest: &[u8; 32]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(pcr);
    h.update(digest);
    h.finalize().into()
}

/// One measurement. `digest` is recorded so a reader can see what was extended; it is
/// recomputed and compared on every replay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Event {
    kind: EventKind,
    value: String,
    #[serde(with = "hex::serde")]
    digest: [u8; 32],
}

impl Event {
    /// A new event; fails if `value` is not valid for `kind`.
    pub fn new(kind: EventKind, value: &str) -> Result<Self> {
        let event = Event {
            kind,
            value: value.to_string(),
            digest: event_digest(kind, value),
        };
        event.check(0)?;
        Ok(event)
    }

    pub fn kind(&self) -> EventKind {
        self.kind
    }

    pub fn value(&self) -> &str {
        &self.value
    }

    /// The digest extended into the PCR.
    pub fn digest(&self) -> &[u8; 32] {
        &self.digest
    }

    /// Value form and recorded digest; `index` is for the error message.
    fn check(&self, index: usize) -> Result<()> {
        self.kind
            .check_value(&self.value)
            .map_err(|detail| AttestError::InvalidEventValue {
                index,
                kind: self.kind,
                detail,
            })?;
        if event_digest(self.kind, &self.value) != self.digest {
            return Err(AttestError::EventDigestMismatch { index });
        }
        Ok(())
    }
}

/// The booted slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Slot {
    A,
    B,
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Slot::A => "a",
            Slot::B => "b",
        })
    }
}

/// What a verified log says booted. Hex strings are lowercase, as measured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Measured {
    pub slot: Slot,
    pub rootfs_verity_root: String,
    pub boot: MeasuredBoot,
}

/// The files the slot booted from, by boot path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "path")]
pub enum MeasuredBoot {
    /// U-Boot's: a kernel and an initrd file.
    Uboot {
        kernel_sha256: String,
        initrd_sha256: String,
    },
    /// UEFI: one unified kernel image, started by systemd-boot with `loader_cmdline`.
    Uefi {
        uki_sha256: String,
        loader_cmdline: String,
    },
}

/// The ordered list of events extended into [`CAIRN_PCR`](crate::CAIRN_PCR) since reset.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventLog {
    events: Vec<Event>,
}

impl EventLog {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn events(&self) -> &[Event] {
        &self.events
    }

    /// Appends an event (the device does this after extending the PCR with it).
    pub fn push(&mut self, event: Event) {
        self.events.push(event);
    }

    /// The PCR value this log produces from reset. Fails if any event's value is invalid
    /// for its kind or its recorded digest disagrees with its kind and value.
    pub fn replay(&self) -> Result<[u8; 32]> {
        let mut pcr = [0u8; 32];
        for (index, event) in self.events.iter().enumerate() {
            event.check(index)?;
            pcr = extend(&pcr, &event.digest);
        }
        Ok(pcr)
    }

    /// The measured values (every event must be valid). Slot and root hash occur exactly
    /// once; then either a kernel and an initrd (U-Boot's path), or systemd-boot's command
    /// line as the first event and a UKI (the UEFI path), each once.
    pub fn measured(&self) -> Result<Measured> {
        self.replay()?;
        let count = |kind: EventKind| self.events.iter().filter(|e| e.kind == kind).count();
        let one = |kind: EventKind| -> Result<&str> {
            let mut found = self.events.iter().filter(|e| e.kind == kind);
            let first = found.next().ok_or(AttestError::MissingEvent(kind))?;
            if found.next().is_some() {
                return Err(AttestError::DuplicateEvent(kind));
            }
            Ok(&first.value)
        };
        let slot = match one(EventKind::Slot)? {
            "a" => Slot::A,
            _ => Slot::B, // check_value admits only "a" and "b"
        };
        let rootfs_verity_root = one(EventKind::RootfsVerityRoot)?.to_string();
        let boot = if count(EventKind::LoaderCmdline) + count(EventKind::Uki) > 0 {
            if let Some(kind) = [EventKind::Kernel, EventKind::Initrd]
                .into_iter()
                .find(|k| count(*k) > 0)
            {
                return Err(AttestError::MixedBootPaths(kind));
            }
            if self.events.first().map(|e| e.kind) != Some(EventKind::LoaderCmdline) {
                return Err(AttestError::LoaderCmdlineNotFirst);
            }
            MeasuredBoot::Uefi {
                loader_cmdline: one(EventKind::LoaderCmdline)?.to_string(),
                uki_sha256: one(EventKind::Uki)?.to_string(),
            }
        } else {
            MeasuredBoot::Uboot {
                kernel_sha256: one(EventKind::Kernel)?.to_string(),
                initrd_sha256: one(EventKind::Initrd)?.to_string(),
            }
        };
        Ok(Measured {
            slot,
            rootfs_verity_root,
            boot,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

    fn full_log() -> EventLog {
        let mut log = EventLog::new();
        for (kind, value) in [
            (EventKind::Slot, "b"),
            (EventKind::RootfsVerityRoot, H),
            (EventKind::Kernel, H),
            (EventKind::Initrd, H),
        ] {
            log.push(Event::new(kind, value).expect("valid event"));
        }
        log
    }

    #[test]
    fn digest_is_domain_separated_kind_and_value() {
        let mut h = Sha256::new();
        h.update(b"cairn-event-v1\0slot\0a");
        let want: [u8; 32] = h.finalize().into();
        assert_eq!(event_digest(EventKind::Slot, "a"), want);
    }

    #[test]
    fn replay_extends_from_zero() {
        let log = full_log();
        let mut pcr = [0u8; 32];
        for e in log.events() {
            pcr = extend(&pcr, e.digest());
        }
        assert_eq!(log.replay(), Ok(pcr));
        assert_eq!(EventLog::new().replay(), Ok([0u8; 32]));
    }

    #[test]
    fn measured_values() {
        let m = full_log().measured().expect("complete log");
        assert_eq!(m.slot, Slot::B);
        assert_eq!(
            m.boot,
            MeasuredBoot::Uboot {
                kernel_sha256: H.into(),
                initrd_sha256: H.into(),
            }
        );
    }

    #[test]
    fn missing_and_duplicate_kinds_are_rejected() {
        let mut log = full_log();
        log.events.remove(3);
        assert_eq!(
            log.measured(),
            Err(AttestError::MissingEvent(EventKind::Initrd))
        );
        let mut log = full_log();
        log.push(Event::new(EventKind::Slot, "a").expect("valid"));
        assert_eq!(
            log.measured(),
            Err(AttestError::DuplicateEvent(EventKind::Slot))
        );
    }

    #[test]
    fn json_round_trip_and_kebab_case() {
        let log = full_log();
        let json = serde_json::to_string(&log).expect("serialise");
        assert!(json.contains("\"rootfs-verity-root\""), "{json}");
        let back: EventLog = serde_json::from_str(&json).expect("parse");
        assert_eq!(back, log);
    }

    #[test]
    fn a_digest_that_disagrees_with_its_value_is_rejected() {
        let json = serde_json::to_string(&full_log()).expect("serialise");
        let tampered = json.replacen("\"value\":\"b\"", "\"value\":\"a\"", 1);
        let log: EventLog = serde_json::from_str(&tampered).expect("parse");
        assert_eq!(
            log.replay(),
            Err(AttestError::EventDigestMismatch { index: 0 })
        );
    }

    #[test]
    fn invalid_values_are_rejected() {
        assert!(Event::new(EventKind::Slot, "c").is_err());
        assert!(Event::new(EventKind::Kernel, &H.to_uppercase()).is_err());
        assert!(Event::new(EventKind::Kernel, &H[..62]).is_err());
        assert!(Event::new(EventKind::RootfsVerityRoot, "zz").is_err());
    }
}
