//! How cairnd reaches anything over the network: the fleet server and bundle downloads.
//! One place decides which URLs are acceptable (https only, unless `insecure_http` is
//! set in system.toml) and which certificates are trusted (the CA pinned by `[server]
//! ca`, or the public web roots when none is pinned), and bounds what is read back.

use std::io::{self, Read};
use std::time::Duration;

use reqwest::blocking::{Client, ClientBuilder};
use reqwest::{Certificate, Url};

use crate::fleet::ServerConfig;

/// The most cairnd reads of an answer it parses (check-in, token, errors). Bundles are
/// read through ranges whose lengths the bundle header bounds.
pub const MAX_ANSWER_BYTES: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("{url}: not a URL: {reason}")]
    BadUrl { url: String, reason: String },
    #[error(
        "{url}: plain http:// is refused; use https://, or set insecure_http = true in \
         [server] (development only)"
    )]
    PlainHttp { url: String },
    #[error("{url}: only https:// (or http:// with insecure_http) URLs are followed")]
    NotHttp { url: String },
    #[error(
        "bundle URL {url} is neither on the server's origin ({server}) nor on a configured \
         mirror"
    )]
    ForeignOrigin { url: String, server: String },
    #[error("reading the pinned server CA {path}: {reason}")]
    Ca { path: String, reason: String },
}

/// What `[server]` says about transport, checked once.
#[derive(Debug, Clone, Default)]
pub struct Transport {
    /// Certificates to trust instead of the public web roots.
    ca: Option<Vec<Certificate>>,
    insecure_http: bool,
    /// Origins bundles may come from: the server's and the mirrors'.
    bundle_origins: Vec<String>,
}

impl Transport {
    /// Without a server: https to anyone the public roots vouch for, for `cairn install
    /// https://...` by hand.
    pub fn public() -> Transport {
        Transport::default()
    }

    /// From `[server]`: checks every URL in it and reads the pinned CA.
    pub fn from_server(server: &ServerConfig) -> Result<Transport, TransportError> {
        let mut transport = Transport {
            ca: None,
            insecure_http: server.insecure_http,
            bundle_origins: Vec::new(),
        };
        for url in std::iter::once(&server.url).chain(&server.mirrors) {
            let parsed = transport.check_url(url)?;
            transport
                .bundle_origins
                .push(parsed.origin().ascii_serialization());
        }
        if let Some(pem) = &server.ca_pem {
            transport.ca = Some(parse_ca("the server override's CA", pem.as_bytes())?);
        } else if let Some(path) = &server.ca {
            let pem = std::fs::read(path).map_err(|e| TransportError::Ca {
                path: path.display().to_string(),
                reason: e.to_string(),
            })?;
            transport.ca = Some(parse_ca(&path.display().to_string(), &pem)?);
        }
        Ok(transport)
    }

    /// For a device with or without `[server]`.
    pub fn for_server(server: Option<&ServerConfig>) -> Result<Transport, TransportError> {
        server.map_or(Ok(Transport::public()), Transport::from_server)
    }

    /// `url` parsed, when its scheme is one cairnd may use.
    pub fn check_url(&self, url: &str) -> Result<Url, TransportError> {
        let parsed = Url::parse(url).map_err(|e| TransportError::BadUrl {
            url: url.to_string(),
            reason: e.to_string(),
        })?;
        match parsed.scheme() {
            "https" => Ok(parsed),
            "http" if self.insecure_http => Ok(parsed),
            "http" => Err(TransportError::PlainHttp {
                url: url.to_string(),
            }),
            _ => Err(TransportError::NotHttp {
                url: url.to_string(),
            }),
        }
    }

    /// A bundle URL the server assigned: an acceptable URL on the server's origin or a
    /// mirror's, never a local path or another host.
    pub fn check_bundle_url(&self, url: &str) -> Result<Url, TransportError> {
        let parsed = self.check_url(url)?;
        let origin = parsed.origin().ascii_serialization();
        if !self.bundle_origins.contains(&origin) {
            return Err(TransportError::ForeignOrigin {
                url: url.to_string(),
                server: self.bundle_origins.first().cloned().unwrap_or_default(),
            });
        }
        Ok(parsed)
    }

    /// A client that trusts the pinned CA alone when there is one.
    pub fn client(&self) -> ClientBuilder {
        let mut builder = Client::builder().connect_timeout(Duration::from_secs(15));
        if let Some(certs) = &self.ca {
            builder = builder.tls_built_in_root_certs(false);
            for cert in certs {
                builder = builder.add_root_certificate(cert.clone());
            }
        }
        if !self.insecure_http {
            builder = builder.https_only(true);
        }
        builder
    }
}

/// The certificates in `pem` (from `source`), at least one.
fn parse_ca(source: &str, pem: &[u8]) -> Result<Vec<Certificate>, TransportError> {
    let error = |reason: String| TransportError::Ca {
        path: source.to_string(),
        reason,
    };
    let certs = Certificate::from_pem_bundle(pem).map_err(|e| error(e.to_string()))?;
    if certs.is_empty() {
        return Err(error("no PEM certificate in it".into()));
    }
    Ok(certs)
}

/// An error and its causes, `: `-separated: reqwest's own message ("error sending
/// request") hides the reason (an untrusted certificate, a refused connection).
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text = format!("{text}: {cause_text}");
        }
        source = cause.source();
    }
    text
}

/// Reads at most [`MAX_ANSWER_BYTES`] of `body`; more is an error, not a truncation.
pub fn read_bounded(body: impl Read) -> io::Result<String> {
    let mut text = String::new();
    body.take(MAX_ANSWER_BYTES + 1).read_to_string(&mut text)?;
    if text.len() as u64 > MAX_ANSWER_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("answer larger than {MAX_ANSWER_BYTES} bytes"),
        ));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(url: &str, insecure_http: bool, mirrors: &[&str]) -> ServerConfig {
        ServerConfig {
            url: url.into(),
            poll_secs: 300,
            device_id: None,
            identity: None,
            ca: None,
            insecure_http,
            mirrors: mirrors.iter().map(|m| m.to_string()).collect(),
            ca_pem: None,
        }
    }

    #[test]
    fn plain_http_is_refused_unless_asked_for() {
        let err = Transport::from_server(&server("http://10.0.0.1:8080", false, &[]));
        assert!(
            matches!(err, Err(TransportError::PlainHttp { .. })),
            "{err:?}"
        );
        assert!(Transport::from_server(&server("http://10.0.0.1:8080", true, &[])).is_ok());
        let err = Transport::from_server(&server("https://s", false, &["http://mirror"]));
        assert!(
            matches!(err, Err(TransportError::PlainHttp { .. })),
            "{err:?}"
        );
    }

    #[test]
    fn a_bundle_url_must_be_on_the_servers_origin_or_a_mirror() {
        let t = Transport::from_server(&server(
            "https://updates.example:8443/base",
            false,
            &["https://cdn.example"],
        ))
        .unwrap();
        assert!(t
            .check_bundle_url("https://updates.example:8443/blobs/x")
            .is_ok());
        assert!(t.check_bundle_url("https://cdn.example/x.cairn").is_ok());
        for bad in [
            "/etc/shadow",
            "file:///etc/shadow",
            "https://updates.example:9443/x",
            "http://updates.example:8443/x",
            "https://evil.example/x",
        ] {
            assert!(t.check_bundle_url(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn bounded_reads_refuse_what_is_too_long() {
        let big = vec![b'a'; MAX_ANSWER_BYTES as usize + 1];
        assert!(read_bounded(&big[..]).is_err());
        assert_eq!(read_bounded(&b"ok"[..]).unwrap(), "ok");
    }
}
