//! A throwaway certificate authority for tests that run TLS for real: the server gets a
//! certificate it issued, the device pins its certificate. The same issuing code as the
//! image builder's development CA (`cairn_image::tls`).

use std::path::Path;

use cairn_image::tls::{CertAuthority, IssuedFiles};

/// A CA made in the test.
pub struct TestCa {
    ca: CertAuthority,
}

/// PEM files of a certificate issued by a [`TestCa`].
pub type IssuedPem = IssuedFiles;

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let (ca, _key) = CertAuthority::generate(name).expect("a test CA");
        TestCa { ca }
    }

    /// The CA certificate, PEM: what a device pins.
    pub fn cert_pem(&self) -> String {
        self.ca.cert_pem().to_string()
    }

    /// Writes the CA certificate to `path`.
    pub fn write_cert(&self, path: &Path) {
        std::fs::write(path, self.cert_pem())
            .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    }

    /// A server certificate for `names` (DNS names or IP addresses), written as
    /// `<dir>/<stem>.crt` (leaf, then this CA) and `<dir>/<stem>.key`.
    pub fn issue(&self, names: &[&str], dir: &Path, stem: &str) -> IssuedPem {
        let files = IssuedFiles {
            cert: dir.join(format!("{stem}.crt")),
            key: dir.join(format!("{stem}.key")),
        };
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        self.ca
            .issue(&names, &files)
            .unwrap_or_else(|e| panic!("issuing a certificate for {names:?}: {e:#}"));
        files
    }
}
