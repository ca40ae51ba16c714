//! Certificates for a fleet server's HTTPS: a small certificate authority that issues a
//! server certificate for given names. `cairn-image` uses it for the development CA the
//! QEMU profile pins (made once per checkout under `target/cairn/dev-keys/`, like the
//! development signing key); tests use it for throwaway CAs. A fleet in the field uses
//! its own PKI: only the CA's certificate goes into the image (`[server] ca`).

use std::fs;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

/// A CA: its certificate (PEM) and what signs with it.
pub struct CertAuthority {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// PEM files of an issued server certificate: the chain (leaf, then the CA) and the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl CertAuthority {
    /// A new CA called `name`; returns it and its private key (PEM).
    pub fn generate(name: &str) -> Result<(CertAuthority, String)> {
        let key = KeyPair::generate().context("generating the CA key")?;
        let key_pem = key.serialize_pem();
        let cert_pem = ca_params(name)?
            .self_signed(&key)
            .context("signing the CA certificate")?
            .pem();
        Ok((
            CertAuthority {
                cert_pem,
                issuer: Issuer::new(ca_params(name)?, key),
            },
            key_pem,
        ))
    }

    /// The CA `generate` made, from its certificate and key PEM.
    pub fn load(name: &str, cert_pem: String, key_pem: &str) -> Result<CertAuthority> {
        let key = KeyPair::from_pem(key_pem).context("reading the CA key")?;
        Ok(CertAuthority {
            cert_pem,
            issuer: Issuer::new(ca_params(name)?, key),
        })
    }

    /// The CA certificate: what devices pin.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// A server certificate for `names` (DNS names or IP addresses), written to `files`
    /// (the key with mode 0600 from its first byte).
    pub fn issue(&self, names: &[String], files: &IssuedFiles) -> Result<()> {
        let first = names.first().context("a server certificate needs a name")?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, first.as_str());
        params.subject_alt_names = names
            .iter()
            .map(|n| match n.parse::<IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => Ok(SanType::DnsName(n.as_str().try_into()?)),
            })
            .collect::<Result<_, rcgen::Error>>()?;
        let key = KeyPair::generate().context("generating the server key")?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .context("signing the server certificate")?;
        cairn_atomic::write_private(&files.key, key.serialize_pem().as_bytes())
            .with_context(|| format!("writing {}", files.key.display()))?;
        cairn_atomic::write(&files.cert, (cert.pem() + &self.cert_pem).as_bytes())
            .with_context(|| format!("writing {}", files.cert.display()))?;
        Ok(())
    }
}

fn ca_params(name: &str) -> Result<CertificateParams> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    Ok(params)
}

/// The development CA and server certificate for a profile's server: made on first use
/// in `dir`, the server certificate made again when the names it must carry change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevTls {
    /// The CA certificate the image pins.
    pub ca: PathBuf,
    /// The server's certificate chain and key.
    pub server: IssuedFiles,
}

const DEV_CA_NAME: &str = "Cairn development CA (not for production)";

impl DevTls {
    pub fn ensure(dir: &Path, names: &[String]) -> Result<DevTls> {
        fs::create_dir_all(dir)?;
        let tls = DevTls {
            ca: dir.join("server-ca.pem"),
            server: IssuedFiles {
                cert: dir.join("server.crt"),
                key: dir.join("server.key"),
            },
        };
        let ca_key = dir.join("server-ca.key");
        let ca = match (fs::read_to_string(&tls.ca), fs::read_to_string(&ca_key)) {
            (Ok(cert), Ok(key)) => CertAuthority::load(DEV_CA_NAME, cert, &key)?,
            _ => {
                let (ca, key) = CertAuthority::generate(DEV_CA_NAME)?;
                cairn_atomic::write_private(&ca_key, key.as_bytes())?;
                cairn_atomic::write(&tls.ca, ca.cert_pem().as_bytes())?;
                eprintln!("==> made a development server CA in {}", dir.display());
                ca
            }
        };
        let names_file = dir.join("server.names");
        let wanted = names.join("\n");
        let current = fs::read_to_string(&names_file).ok();
        if current.as_deref() != Some(wanted.as_str()) || !tls.server.key.exists() {
            ca.issue(names, &tls.server)?;
            cairn_atomic::write(&names_file, wanted.as_bytes())?;
        }
        Ok(tls)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_dev_ca_is_made_once_and_its_key_is_private_from_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let names = vec!["10.0.2.2".to_string(), "localhost".to_string()];
        let first = DevTls::ensure(dir.path(), &names).unwrap();
        let ca = fs::read(&first.ca).unwrap();
        let cert = fs::read(&first.server.cert).unwrap();
        for secret in [dir.path().join("server-ca.key"), first.server.key.clone()] {
            let mode = fs::metadata(&secret).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", secret.display());
        }
        // Again with the same names: nothing changes. Other names: a new leaf, same CA.
        let again = DevTls::ensure(dir.path(), &names).unwrap();
        assert_eq!(again, first);
        assert_eq!(fs::read(&first.server.cert).unwrap(), cert);
        DevTls::ensure(dir.path(), &["127.0.0.1".to_string()]).unwrap();
        assert_ne!(fs::read(&first.server.cert).unwrap(), cert);
        assert_eq!(fs::read(&first.ca).unwrap(), ca);
    }
}
