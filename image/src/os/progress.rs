//! Progress lines for the long stages: what starts, and how long it took.

use std::time::Instant;

pub struct Stage {
    name: String,
    started: Instant,
}

impl Stage {
    pub fn start(name: impl Into<String>) -> Stage {
        let name = name.into();
        eprintln!("==> {name} ...");
        Stage {
            name,
            started: Instant::now(),
        }
    }

    /// Ends the stage with a one-line result.
    pub fn done(self, detail: impl AsRef<str>) {
        eprintln!(
            "==> {}: {} ({:.1}s)",
            self.name,
            detail.as_ref(),
            self.started.elapsed().as_secs_f64()
        );
    }
}

/// Mebibytes, for summaries.
pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}
