//! `cairn status`: what a person (or the test harness) needs to know about the device.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::bootstate::{BootState, SlotId};
use crate::context::Context;
use crate::fleet::server_override::OverrideOutcome;
use crate::state::{ImageRecord, Phase};

#[derive(Debug, Serialize)]
pub struct Status {
    pub compatible: String,
    pub booted: Option<SlotId>,
    pub recovery: bool,
    pub phase: Phase,
    pub committed: SlotId,
    pub boot_order: Vec<SlotId>,
    pub slots: BTreeMap<SlotId, SlotStatus>,
    pub security_floor: u64,
    pub last_error: Option<String>,
    pub pending_reports: usize,
    /// The fleet server cairnd checks in with, after any server override.
    pub server: Option<String>,
    pub server_override: OverrideOutcome,
    /// A drain or uncordon hook the device is waiting for (`[reboot] before` /
    /// `after_commit`).
    pub reboot_hooks: Option<crate::reboot_hooks::Waiting>,
    /// The installed update waits for the server's leave to reboot (the campaign's reboot
    /// budget): `waiting for a reboot lease: 1 of 1 in cluster=line-3 rebooting`.
    pub reboot_lease: Option<String>,
    /// The installed update's container images are not imported yet (the reboot waits):
    /// `waiting for container preload: ...`.
    pub container_preload: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct SlotStatus {
    pub version: Option<String>,
    pub tries_left: u32,
    pub bootable: bool,
    pub images: BTreeMap<String, ImageRecord>,
}

pub fn status(ctx: &Context) -> Status {
    let facts = ctx.boot_facts().ok();
    let boot = ctx.boot_state().unwrap_or_else(|_| BootState::factory());
    let slots = [SlotId::A, SlotId::B]
        .into_iter()
        .map(|slot| {
            let record = ctx.state.slot(slot);
            let status = SlotStatus {
                version: record.version,
                tries_left: boot.tries(slot),
                bootable: boot.is_bootable(slot),
                images: record.images,
            };
            (slot, status)
        })
        .collect();
    Status {
        compatible: ctx.config.compatible.clone(),
        booted: facts.as_ref().map(|f| f.slot),
        recovery: facts.is_some_and(|f| f.recovery) || boot.recovery,
        phase: ctx.state.phase.clone(),
        committed: boot.committed,
        boot_order: boot.order.clone(),
        slots,
        security_floor: ctx.state.security_floor,
        last_error: ctx.state.last_error.clone(),
        pending_reports: ctx.state.outbox.len(),
        server: ctx.config.server.as_ref().map(|s| s.url.clone()),
        server_override: ctx.server_override.clone(),
        reboot_hooks: crate::reboot_hooks::current(ctx),
        reboot_lease: crate::fleet::reboot_lease::waiting_reason(ctx),
        container_preload: crate::containers::waiting_reason(ctx),
    }
}

pub fn render(s: &Status) -> String {
    let mut out = String::new();
    let booted = s.booted.map_or("unknown".to_string(), |b| b.to_string());
    let _ = writeln!(
        out,
        "device:    {} (booted slot {booted}{})",
        s.compatible,
        if s.recovery { ", RECOVERY" } else { "" }
    );
    let _ = writeln!(out, "state:     {}", describe(&s.phase));
    if let Some(w) = &s.container_preload {
        let _ = writeln!(out, "           {w}");
    }
    if let Some(w) = &s.reboot_lease {
        let _ = writeln!(out, "           {w}");
    }
    if let Some(w) = &s.reboot_hooks {
        let _ = writeln!(out, "           {}", w.reason);
    }
    let order: Vec<String> = s.boot_order.iter().map(|x| x.to_string()).collect();
    let _ = writeln!(
        out,
        "boot:      order {}, committed {}",
        order.join(" "),
        s.committed
    );
    for (slot, st) in &s.slots {
        let _ = writeln!(
            out,
            "slot {slot}:    {:<12} tries {} {}",
            st.version.as_deref().unwrap_or("-"),
            st.tries_left,
            if st.bootable {
                "bootable"
            } else {
                "unbootable"
            }
        );
    }
    let _ = writeln!(out, "floor:     security version {}", s.security_floor);
    if let Some(url) = &s.server {
        let from = match &s.server_override {
            OverrideOutcome::Applied { .. } => " (signed server override)",
            OverrideOutcome::Refused(_) => " (the image's: server override REFUSED)",
            OverrideOutcome::Absent => "",
        };
        let _ = writeln!(out, "server:    {url}{from}");
    }
    if let OverrideOutcome::Refused(reason) = &s.server_override {
        let _ = writeln!(out, "override:  {reason}");
    }
    if let Some(e) = &s.last_error {
        let _ = writeln!(out, "last error: {e}");
    }
    out
}

pub fn describe(phase: &Phase) -> String {
    match phase {
        Phase::Committed => "committed, nothing pending".into(),
        Phase::Installing { slot, version, .. } => format!("installing {version} into slot {slot}"),
        Phase::InstalledPending { slot, version, .. } => {
            format!("{version} installed in slot {slot}, waiting for reboot")
        }
        Phase::TrialBoot { slot, version, .. } => {
            format!("trial boot of {version} in slot {slot}, checking health")
        }
        Phase::RolledBack {
            version, reason, ..
        } => format!("rolled back from {version}: {reason}"),
        Phase::Failed { version, reason } => format!(
            "install of {} failed: {reason}",
            version.as_deref().unwrap_or("?")
        ),
    }
}
