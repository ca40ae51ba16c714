//! Prometheus metrics over HTTP on localhost. Rendered from the persisted state at each
//! scrape, so installs made by the `cairn` CLI show up as well as cairnd's own.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::context::Context;
use crate::status::{status, Status};

/// Counters that live in the daemon process.
#[derive(Default)]
pub struct Counters {
    pub install_bytes: AtomicU64,
    pub checkins: AtomicU64,
    pub checkin_errors: AtomicU64,
}

pub fn render(s: &Status, history: &[crate::state::HistoryEntry], counters: &Counters) -> String {
    let mut out = String::new();
    let mut gauge = |name: &str, help: &str, samples: &[(String, f64)]| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for (labels, value) in samples {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    };
    let phase = serde_json::to_value(&s.phase)
        .ok()
        .and_then(|v| v["phase"].as_str().map(str::to_string))
        .unwrap_or_default();
    gauge(
        "cairn_phase",
        "Current update phase (1 for the active one).",
        &[(format!("{{phase=\"{phase}\"}}"), 1.0)],
    );
    let booted = s.booted.map_or("unknown".into(), |b| b.to_string());
    gauge(
        "cairn_booted_slot",
        "Slot the device booted.",
        &[(format!("{{slot=\"{booted}\"}}"), 1.0)],
    );
    gauge(
        "cairn_recovery",
        "1 when the bootloader booted in recovery mode.",
        &[(String::new(), s.recovery as u8 as f64)],
    );
    let tries: Vec<_> = s
        .slots
        .iter()
        .map(|(slot, st)| (format!("{{slot=\"{slot}\"}}"), st.tries_left as f64))
        .collect();
    gauge("cairn_slot_tries_left", "Boot tries left per slot.", &tries);
    gauge(
        "cairn_security_floor",
        "Lowest security_version this device installs.",
        &[(String::new(), s.security_floor as f64)],
    );
    gauge(
        "cairn_pending_reports",
        "Reports not yet acknowledged by the server.",
        &[(String::new(), s.pending_reports as f64)],
    );
    let hook_failures: Vec<_> = [
        crate::reboot_hooks::Hook::Before,
        crate::reboot_hooks::Hook::AfterCommit,
    ]
    .into_iter()
    .map(|hook| {
        let failures = s
            .reboot_hooks
            .as_ref()
            .filter(|w| w.hook == hook)
            .map_or(0, |w| w.attempts);
        (format!("{{hook=\"{}\"}}", hook.key()), failures as f64)
    })
    .collect();
    gauge(
        "cairn_reboot_hook_failures",
        "Failed tries of the drain (before) or uncordon (after_commit) hook the device waits for.",
        &hook_failures,
    );
    let mut events = std::collections::BTreeMap::<&str, f64>::new();
    for h in history {
        *events.entry(h.event.as_str()).or_default() += 1.0;
    }
    let _ = writeln!(out, "# HELP cairn_events_total Update events recorded in the history.\n# TYPE cairn_events_total counter");
    for (event, n) in events {
        let _ = writeln!(out, "cairn_events_total{{event=\"{event}\"}} {n}");
    }
    for (name, help, v) in [
        (
            "cairn_install_bytes_total",
            "Image bytes written by this daemon.",
            &counters.install_bytes,
        ),
        (
            "cairn_checkins_total",
            "Server check-ins made.",
            &counters.checkins,
        ),
        (
            "cairn_checkin_errors_total",
            "Server check-ins that failed.",
            &counters.checkin_errors,
        ),
    ] {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
            v.load(Ordering::Relaxed)
        );
    }
    out
}

/// The longest request line read; anything longer is not a metrics scrape.
const MAX_REQUEST_LINE: u64 = 1024;
/// How long one client may take to send its request line or read the answer: the
/// endpoint serves one client at a time, so a silent one must not hold it.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(2);

/// Serves `GET /metrics` on `listen` from a background thread.
pub fn serve(listen: &str, config_path: PathBuf, counters: Arc<Counters>) -> std::io::Result<()> {
    let listener = TcpListener::bind(listen)?;
    std::thread::Builder::new().name("metrics".into()).spawn(move || {
        for stream in listener.incoming().flatten() {
            if stream.set_read_timeout(Some(CLIENT_TIMEOUT)).is_err()
                || stream.set_write_timeout(Some(CLIENT_TIMEOUT)).is_err()
            {
                continue;
            }
            let mut reader = BufReader::new((&stream).take(MAX_REQUEST_LINE));
            let mut request_line = String::new();
            if reader.read_line(&mut request_line).is_err() || !request_line.ends_with('\n') {
                continue;
            }
            let (code, body) = if request_line.starts_with("GET /metrics ") {
                match Context::open(&config_path) {
                    Ok(ctx) => ("200 OK", render(&status(&ctx), &ctx.state.history, &counters)),
                    Err(e) => ("500 Internal Server Error", format!("{e}\n")),
                }
            } else {
                ("404 Not Found", "only /metrics here\n".to_string())
            };
            let mut stream = &stream;
            let _ = write!(
                stream,
                "HTTP/1.0 {code}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
        }
    })?;
    Ok(())
}
