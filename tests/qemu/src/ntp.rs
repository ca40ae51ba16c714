//! A real NTP server for the guest: chronyd on the host's loopback, serving its own clock
//! (`local stratum 8`) without touching the host's (`-x`), on the port the QEMU profile's
//! `[clock] ntp_servers` names (the guest reaches the host's loopback at 10.0.2.2).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// chronyd, stopped on drop.
pub struct NtpServer {
    child: Child,
}

impl NtpServer {
    /// Starts chronyd with its files in `dir` where this thread's guest reaches
    /// 10.0.2.2:[`crate::NTP_PORT`], the port the profile names, and waits until it answers.
    pub fn start(dir: &Path) -> Result<NtpServer> {
        let port = crate::host_port(crate::NTP_PORT);
        let conf = dir.join("chrony.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbindaddress 127.0.0.1\nlocal stratum 8\nallow 127.0.0.1\n\
                 cmdport 0\npidfile {}\n",
                dir.join("chronyd.pid").display()
            ),
        )?;
        let log = std::fs::File::create(dir.join("chronyd.log"))?;
        let child = Command::new("chronyd")
            .args(["-d", "-x", "-f"])
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting chronyd (Debian's chrony)")?;
        let server = NtpServer { child };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !answers(port)? {
            if Instant::now() > deadline {
                bail!(
                    "chronyd does not answer on 127.0.0.1:{port}: {}",
                    std::fs::read_to_string(dir.join("chronyd.log")).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(server)
    }
}

/// Whether a client request to the port gets a server's answer.
fn answers(port: u16) -> Result<bool> {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0")?;
    socket.connect(("127.0.0.1", port))?;
    socket.set_read_timeout(Some(Duration::from_millis(500)))?;
    let mut request = [0u8; 48];
    request[0] = (4 << 3) | 3;
    request[40] = 1;
    if socket.send(&request).is_err() {
        return Ok(false);
    }
    let mut answer = [0u8; 512];
    Ok(matches!(socket.recv(&mut answer), Ok(n) if n >= 48 && answer[0] & 7 == 4))
}

impl Drop for NtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
