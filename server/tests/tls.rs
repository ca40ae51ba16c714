//! HTTPS served by cairn-server itself: a client that trusts the server's CA gets
//! answers, one that does not is refused, and a renewed certificate takes effect when
//! its files change, without a restart; a broken renewal keeps the old certificate.

use std::path::Path;
use std::time::{Duration, Instant};

use cairn_server::config::{Config, TlsFiles};
use cairn_server::local::LocalServer;
use cairn_testkit::TestCa;

fn client_trusting(ca: &TestCa) -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca.cert_pem().as_bytes()).unwrap())
        .build()
        .unwrap()
}

fn answers(client: &reqwest::blocking::Client, url: &str) -> Result<u16, String> {
    let r = client.get(format!("{url}/ui/devices")).send();
    r.map(|r| r.status().as_u16()).map_err(|e| format!("{e:?}"))
}

fn serve(dir: &Path, files: TlsFiles) -> LocalServer {
    let db = format!("sqlite://{}", dir.join("server.db").display());
    let mut config = Config::new(dir.join("blobs"));
    config.tls = Some(files);
    LocalServer::start(&db, config, "127.0.0.1:0").unwrap()
}

#[test]
fn the_server_speaks_tls_and_picks_up_a_renewed_certificate_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let first = TestCa::new("first CA");
    let issued = first.issue(&["127.0.0.1"], dir.path(), "server");
    let server = serve(
        dir.path(),
        TlsFiles {
            cert: issued.cert.clone(),
            key: issued.key.clone(),
        },
    );
    let url = server.url();
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");

    // 401: the dashboard wants the admin token; what matters is that TLS worked.
    assert_eq!(answers(&client_trusting(&first), &url), Ok(401));
    let second = TestCa::new("second CA");
    let refused = answers(&client_trusting(&second), &url).unwrap_err();
    assert!(refused.contains("UnknownIssuer"), "{refused}");

    // A renewal that is half written (a key that does not match) is not taken.
    let stray = second.issue(&["127.0.0.1"], dir.path(), "stray");
    std::fs::copy(&stray.key, &issued.key).unwrap();
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(
        answers(&client_trusting(&first), &url),
        Ok(401),
        "old certificate kept"
    );

    // The whole renewal: the new certificate is served within a few seconds.
    let renewed = second.issue(&["127.0.0.1"], dir.path(), "renewed");
    std::fs::copy(&renewed.cert, &issued.cert).unwrap();
    std::fs::copy(&renewed.key, &issued.key).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while answers(&client_trusting(&second), &url) != Ok(401) {
        assert!(
            Instant::now() < deadline,
            "the renewed certificate was not picked up"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(answers(&client_trusting(&first), &url).is_err());
}

#[test]
fn a_server_without_a_usable_certificate_does_not_start_serving() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("CA");
    let issued = ca.issue(&["127.0.0.1"], dir.path(), "server");
    let other = ca.issue(&["127.0.0.1"], dir.path(), "other");
    let server = serve(
        dir.path(),
        TlsFiles {
            cert: issued.cert,
            key: other.key,
        },
    );
    // The serve loop refused to start: nothing accepts connections.
    std::thread::sleep(Duration::from_millis(500));
    let connected = std::net::TcpStream::connect(server.addr);
    let refused_or_closed = match connected {
        Err(_) => true,
        Ok(mut stream) => {
            use std::io::{Read, Write};
            let _ = stream.write_all(b"\x16\x03\x01\x00\x05hello");
            let mut buf = [0u8; 1];
            stream
                .set_read_timeout(Some(Duration::from_secs(2)))
                .unwrap();
            matches!(stream.read(&mut buf), Ok(0) | Err(_))
        }
    };
    assert!(refused_or_closed, "a server with a mismatched key answered");
}
