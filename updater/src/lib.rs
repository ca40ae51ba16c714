//! The device side of Cairn: `cairnd` (boot-time decisions, server polling, metrics) and
//! `cairn` (the operator's CLI) share this library.
//!
//! Map: `bootstate` (the bootloader's view and its stores) and `state` (cairnd's own
//! record) hold pure transitions; `reconcile` derives what happened across a reboot;
//! `install` streams a bundle into the inactive slot; `trial` commits or rejects;
//! `health` runs the image's checks; `containers` imports the next version's container
//! images before its reboot; `reboot_hooks` drains and uncordons the node around a reboot
//! into an update (both run their programs through `command`); `fleet` talks to cairn-server; `attestation`
//! measures the boot into the TPM, enrolls its key and answers quote requests; `context`
//! ties config and stores together.

pub mod attestation;
pub mod bootstate;
pub mod clock;
pub mod command;
pub mod config;
pub mod containers;
pub mod context;
pub mod fleet;
pub mod health;
pub mod install;
pub mod logpipe;
pub mod metrics;
pub mod provision;
pub mod reboot;
pub mod reboot_hooks;
pub mod reconcile;
pub mod slot;
pub mod sntp;
pub mod state;
pub mod status;
pub mod transport;
pub mod trial;
pub mod watchdog;
