//! `cairn-cri-probe [SOCKET]`: one CRI `RuntimeService/Status` call over the runtime's unix
//! socket; prints each condition (`RuntimeReady=true`, ...) and exits 0 only when
//! RuntimeReady is true, 1 when it is not, 2 when there was no answer. It ships in the
//! image for operators and the QEMU tests; the call itself is the `cairn_cri_probe` lib.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

fn main() -> ExitCode {
    let socket = std::env::args()
        .nth(1)
        .unwrap_or_else(|| cairn_cri_probe::DEFAULT_SOCKET.into());
    match cairn_cri_probe::status(Path::new(&socket), Duration::from_secs(10)) {
        Ok(conditions) => {
            let mut ready = false;
            for c in &conditions {
                println!("{}={} {} {}", c.kind, c.status, c.reason, c.message);
                if c.kind == "RuntimeReady" && c.status {
                    ready = true;
                }
            }
            if ready {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("cairn-cri-probe: {socket}: {e}");
            ExitCode::from(2)
        }
    }
}
