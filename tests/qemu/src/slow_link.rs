//! A slow link in front of the fleet server, for scenarios that must cut power in the
//! middle of a download: on loopback a megabyte arrives faster than any cut can be timed.

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};

use anyhow::{Context, Result};

/// Relays connections made to one address on to another, sending what comes back at a
/// fixed rate per connection; stops accepting on drop.
pub struct SlowLink {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl SlowLink {
    /// Listens on `listen` and relays to `to`, `bytes_per_sec` towards the client.
    pub fn start(listen: &str, to: SocketAddr, bytes_per_sec: u64) -> Result<SlowLink> {
        let listener =
            TcpListener::bind(listen).with_context(|| format!("slow link on {listen}"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread = thread::spawn({
            let stop = Arc::clone(&stop);
            move || crate::guest_net::relay_tcp(listener, to, &stop, Some(bytes_per_sec))
        });
        Ok(SlowLink {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for SlowLink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
