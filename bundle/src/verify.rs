//! From untrusted bytes to a [`VerifiedBundle`]: the checks a device makes before it acts
//! on anything in a bundle (INVARIANTS.md, 11).

use std::io::Read;

use time::OffsetDateTime;

use crate::error::{Error, Result};
use crate::header::{Header, HEADER_LEN};
use crate::keys::Signature;
use crate::manifest::Manifest;
use crate::root::{fmt_time, SignedRoot, TrustRoot};
use crate::signatures::{check_threshold, signed_message, MANIFEST_CONTEXT};

/// What the device requires of a bundle besides valid signatures.
#[derive(Debug, Clone)]
pub struct Policy {
    /// The device's `compatible`; `None` on a build host that checks any bundle.
    pub compatible: Option<String>,
    /// The lowest `security_version` the device accepts.
    pub security_floor: u64,
    pub now: OffsetDateTime,
}

impl Policy {
    /// A host-side policy: signatures and expiry only.
    pub fn any_device() -> Policy {
        Policy {
            compatible: None,
            security_floor: 0,
            now: OffsetDateTime::now_utc(),
        }
    }
}

/// A bundle's metadata sections, parsed but not yet trusted.
#[derive(Debug, Clone)]
pub struct UnverifiedBundle {
    pub header: Header,
    /// The exact manifest bytes the signatures cover.
    pub manifest_bytes: Vec<u8>,
    pub manifest: Manifest,
    pub signatures: Vec<Signature>,
    /// Trust roots the bundle carries so an offline device can follow a key rotation.
    pub roots: Vec<SignedRoot>,
}

/// A bundle whose manifest is signed by the device's (possibly rotated) trust root,
/// unexpired, compatible and not below the security floor. Its payloads are still
/// unchecked: each is trusted only once [`crate::decode_payload`] has matched its hashes.
#[derive(Debug, Clone)]
pub struct VerifiedBundle {
    pub header: Header,
    pub manifest: Manifest,
    /// The trust root that verified the manifest; newer than the device's anchor when the
    /// bundle carried a rotation. The device persists it only on commit.
    pub root: TrustRoot,
    /// The roots of that rotation, oldest first: the ones that verified, and no others.
    /// A device keeps exactly these when it commits the bundle.
    pub rotation: Vec<SignedRoot>,
}

impl UnverifiedBundle {
    /// Reads the header and metadata sections from the start of a bundle stream.
    pub fn read_from(input: &mut impl Read) -> Result<UnverifiedBundle> {
        let mut head = vec![0u8; HEADER_LEN];
        read_exactly(input, &mut head, "header")?;
        let header = Header::decode(&head)?;
        head.resize(header.metadata_end() as usize, 0);
        read_exactly(input, &mut head[HEADER_LEN..], "metadata sections")?;
        UnverifiedBundle::parse(&head)
    }

    /// Parses the metadata from `bytes`, which start at offset 0 of the bundle and hold at
    /// least the header and metadata sections.
    pub fn parse(bytes: &[u8]) -> Result<UnverifiedBundle> {
        let header = Header::decode(bytes)?;
        if (bytes.len() as u64) < header.metadata_end() {
            return Err(Error::Truncated {
                what: "metadata sections",
                needed: header.metadata_end(),
                available: bytes.len() as u64,
            });
        }
        let manifest_bytes = bytes[header.manifest_range()].to_vec();
        let manifest: Manifest =
            serde_json::from_slice(&manifest_bytes).map_err(|source| Error::Json {
                what: "manifest",
                source,
            })?;
        let signatures: Vec<Signature> = serde_json::from_slice(&bytes[header.signatures_range()])
            .map_err(|source| Error::Json {
                what: "signatures section",
                source,
            })?;
        let roots_bytes = &bytes[header.roots_range()];
        let roots: Vec<SignedRoot> = if roots_bytes.is_empty() {
            Vec::new()
        } else {
            serde_json::from_slice(roots_bytes).map_err(|source| Error::Json {
                what: "roots section",
                source,
            })?
        };
        manifest.validate(header.payload_area_len)?;
        Ok(UnverifiedBundle {
            header,
            manifest_bytes,
            manifest,
            signatures,
            roots,
        })
    }

    /// The checks of INVARIANTS.md 11, in order: trust chain, signatures, expiry,
    /// compatibility, security floor.
    pub fn verify(self, anchor: &TrustRoot, policy: &Policy) -> Result<VerifiedBundle> {
        let walk = anchor.follow(&self.roots, policy.now)?;
        let root = walk.root;
        let message = signed_message(MANIFEST_CONTEXT, &self.manifest_bytes);
        let signed = check_threshold(
            "manifest",
            &message,
            &self.signatures,
            root.keys(),
            root.threshold(),
        );
        if let Err(e) = signed {
            // A manifest signed under a root the bundle carried but that did not verify:
            // why that root was refused says more than the missing signatures.
            return Err(walk.skipped.into_iter().next().unwrap_or(e));
        }
        let m = &self.manifest;
        if policy.now >= m.expires {
            return Err(Error::Expired {
                what: format!("bundle {} manifest", m.version),
                expires: fmt_time(m.expires),
            });
        }
        if let Some(device) = &policy.compatible {
            if &m.compatible != device {
                return Err(Error::Incompatible {
                    bundle: m.compatible.clone(),
                    device: device.clone(),
                });
            }
        }
        if m.security_version < policy.security_floor {
            return Err(Error::BelowSecurityFloor {
                bundle: m.security_version,
                floor: policy.security_floor,
            });
        }
        Ok(VerifiedBundle {
            header: self.header,
            manifest: self.manifest,
            root,
            rotation: walk.accepted,
        })
    }
}

fn read_exactly(input: &mut impl Read, buf: &mut [u8], what: &'static str) -> Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        match input.read(&mut buf[filled..]) {
            Ok(0) => {
                return Err(Error::Truncated {
                    what,
                    needed: buf.len() as u64,
                    available: filled as u64,
                })
            }
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io(format!("reading {what}"))(e)),
        }
    }
    Ok(())
}
