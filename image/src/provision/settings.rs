//! `cairn-image provision --config FILE`: the per-device settings written with each
//! identity. The file is TOML:
//!
//! ```toml
//! hostname = "press-{device_id}"   # {device_id} becomes each device's ID
//! tags = ["site-plant-3"]          # recorded for the server, with --tag's
//!
//! [network]                        # the device's own network.conf
//! iface = "eth0"
//! method = "static"                # or "dhcp" (then nothing below)
//! address = "10.0.2.15/24"
//! gateway = "10.0.2.2"
//! dns = "10.0.2.3"
//!
//! [server]                         # a signed server override (needs --key, --root)
//! url = "https://updates.plant-3.example:8443"
//! ca = "plant-3-ca.pem"            # relative to this file; none: the image's pin
//! ```
//!
//! Everything is checked when the file is loaded, before any device is written: the
//! hostname and network by the rules the device's init scripts apply
//! (`cairn_boot::device_settings`), the server URL and CA as far as the bench can. The
//! server override is signed per device (it names the device it is for, so it cannot be
//! copied onto another one) with the release signing key(s), which the device checks
//! against its trust root.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use cairn_boot::device_settings::{self, Hostname, NetworkSettings};
use cairn_bundle::{SignedServerOverride, SigningKey, TrustRoot};
use serde::Deserialize;

const DEVICE_ID_PLACEHOLDER: &str = "{device_id}";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    #[serde(default)]
    hostname: Option<String>,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    network: Option<NetworkSettings>,
    #[serde(default)]
    server: Option<ServerFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServerFile {
    url: String,
    #[serde(default)]
    ca: Option<PathBuf>,
}

/// A checked `--config`, with the keys that sign its server override.
pub struct DeviceSettings {
    hostname: Option<String>,
    pub tags: Vec<String>,
    network_conf: Option<String>,
    server: Option<(String, Option<String>)>,
    keys: Vec<SigningKey>,
}

impl std::fmt::Debug for DeviceSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Keys by ID only: never a secret in a log or a panic message.
        let key_ids: Vec<String> = self.keys.iter().map(|k| k.id().to_string()).collect();
        f.debug_struct("DeviceSettings")
            .field("hostname", &self.hostname)
            .field("tags", &self.tags)
            .field("network_conf", &self.network_conf)
            .field("server", &self.server.as_ref().map(|(url, _)| url))
            .field("keys", &key_ids)
            .finish()
    }
}

/// A file for the data partition: its path there, contents and mode.
pub struct DataFile {
    pub path: String,
    pub contents: Vec<u8>,
    pub mode: u32,
}

impl DeviceSettings {
    /// Loads and checks `path`; `keys` sign the server override (required with one), and
    /// must reach the threshold of `root`, the image's trust root, which devices check it
    /// against: a wrong key is found at the bench, not by a device in the field.
    pub fn load(
        path: &Path,
        keys: Vec<SigningKey>,
        root: Option<&TrustRoot>,
    ) -> Result<DeviceSettings> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let file: ConfigFile =
            toml::from_str(&text).with_context(|| format!("{}", path.display()))?;
        let invalid = |what: String| anyhow::anyhow!("{}: {what}", path.display());
        check_tags(&file.tags).map_err(invalid)?;
        if let Some(template) = &file.hostname {
            // The longest ID a device gets stands in for the placeholder.
            let sample = template.replace(DEVICE_ID_PLACEHOLDER, &"d".repeat(20));
            Hostname::parse(&sample).map_err(|e| invalid(e.to_string()))?;
        }
        let network_conf = match &file.network {
            Some(net) => Some(net.to_conf().map_err(|e| invalid(e.to_string()))?),
            None => None,
        };
        let server = match &file.server {
            None => None,
            Some(server) => {
                check_url(&server.url).map_err(invalid)?;
                let ca_pem = match &server.ca {
                    None => None,
                    Some(ca) => {
                        let ca = path.parent().unwrap_or(Path::new(".")).join(ca);
                        let pem = std::fs::read_to_string(&ca)
                            .with_context(|| format!("reading the server CA {}", ca.display()))?;
                        if !pem.contains("-----BEGIN CERTIFICATE-----") {
                            bail!("{}: no PEM certificate in it", ca.display());
                        }
                        Some(pem)
                    }
                };
                if keys.is_empty() {
                    return Err(invalid(
                        "[server] is a server override, which devices take only when signed: \
                         give the release signing key(s) with --key"
                            .into(),
                    ));
                }
                let Some(root) = root else {
                    return Err(invalid(
                        "[server] needs the image's trust root (--root root.json) to check \
                         that devices will take the override the keys sign"
                            .into(),
                    ));
                };
                let mut sample = SignedServerOverride::new(&server.url, ca_pem.clone(), vec![]);
                for key in &keys {
                    sample.sign(key)?;
                }
                sample.verify(root, "").map_err(|e| {
                    invalid(format!("devices would refuse this server override: {e}"))
                })?;
                Some((server.url.clone(), ca_pem))
            }
        };
        if !keys.is_empty() && server.is_none() {
            bail!(
                "--key signs a server override, and {} has no [server]",
                path.display()
            );
        }
        Ok(DeviceSettings {
            hostname: file.hostname,
            tags: file.tags,
            network_conf,
            server,
            keys,
        })
    }

    /// The files `device_id` gets on its data partition.
    pub fn files_for(&self, device_id: &str) -> Result<Vec<DataFile>> {
        let mut files = Vec::new();
        let file = |name: &str, contents: Vec<u8>| DataFile {
            path: device_settings::on_data(name),
            contents,
            mode: 0o644,
        };
        if let Some(template) = &self.hostname {
            let name = Hostname::parse(&template.replace(DEVICE_ID_PLACEHOLDER, device_id))?;
            files.push(file(device_settings::HOSTNAME, name.to_file().into_bytes()));
        }
        if let Some(conf) = &self.network_conf {
            files.push(file(device_settings::NETWORK, conf.clone().into_bytes()));
        }
        if let Some((url, ca_pem)) = &self.server {
            let mut signed =
                SignedServerOverride::new(url, ca_pem.clone(), vec![device_id.to_string()]);
            for key in &self.keys {
                signed.sign(key)?;
            }
            files.push(file(device_settings::SERVER_OVERRIDE, signed.to_json()));
        }
        Ok(files)
    }
}

/// Tags as the server takes them, so an import never fails on one.
pub fn check_tags(tags: &[String]) -> std::result::Result<(), String> {
    match tags.iter().find(|t| !cairn_server_api::is_valid_tag(t)) {
        Some(tag) => Err(format!(
            "tag {tag:?} must be {}",
            cairn_server_api::TAG_RULE
        )),
        None => Ok(()),
    }
}

/// An `https://host...` URL; the device checks it fully (and allows `http://` only where
/// its image does, which the bench cannot know).
fn check_url(url: &str) -> std::result::Result<(), String> {
    let host = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(|| format!("[server] url {url:?} is not an https:// URL"))?;
    if host.is_empty() || host.starts_with('/') || url.chars().any(char::is_whitespace) {
        return Err(format!("[server] url {url:?} names no host"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The release key every test's trust root holds.
    fn release_key() -> SigningKey {
        static KEY: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
        let json = KEY.get_or_init(|| SigningKey::generate().unwrap().to_json());
        SigningKey::from_json(json).unwrap()
    }

    fn root() -> TrustRoot {
        let key = release_key();
        let mut root = cairn_bundle::SignedRoot::new(
            1,
            time::OffsetDateTime::now_utc() + time::Duration::days(30),
            1,
            vec![key.public()],
        );
        root.sign(&key).unwrap();
        TrustRoot::anchor(root).unwrap()
    }

    fn load(text: &str, keys: Vec<SigningKey>) -> Result<DeviceSettings> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("ca.pem"),
            "-----BEGIN CERTIFICATE-----\nMII\n",
        )
        .unwrap();
        let path = dir.path().join("site.toml");
        std::fs::write(&path, text).unwrap();
        DeviceSettings::load(&path, keys, Some(&root()))
    }

    #[test]
    fn a_full_config_gives_each_device_its_files() {
        let key = release_key();
        let settings = load(
            "hostname = \"press-{device_id}\"\ntags = [\"site-3\"]\n\
             [network]\niface = \"eth0\"\nmethod = \"dhcp\"\n\
             [server]\nurl = \"https://site.example\"\nca = \"ca.pem\"\n",
            vec![key],
        )
        .unwrap();
        let files = settings.files_for("dev-0123456789abcdef").unwrap();
        let names: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(
            names,
            [
                "cairn/hostname",
                "cairn/network.conf",
                "cairn/server-override.json"
            ]
        );
        assert_eq!(files[0].contents, b"press-dev-0123456789abcdef\n");
        let signed = SignedServerOverride::parse(&files[2].contents).unwrap();
        assert_eq!(signed.signed.devices, ["dev-0123456789abcdef"]);
        assert!(signed.signed.ca_pem.is_some());
    }

    #[test]
    fn each_mistake_is_named_before_anything_is_written() {
        let key = || vec![release_key()];
        let cases = [
            ("hostname = \"bad_name\"\n", vec![], "hostname"),
            (
                "hostname = \"{device_id}-{device_id}-{device_id}-toolong\"\n",
                vec![],
                "hostname",
            ),
            (
                "[network]\niface = \"eth0\"\nmethod = \"static\"\n",
                vec![],
                "needs an address",
            ),
            (
                "[network]\niface = \"eth0\"\nmethod = \"wifi\"\n",
                vec![],
                "unknown variant",
            ),
            ("[server]\nurl = \"https://s.example\"\n", vec![], "--key"),
            (
                "[server]\nurl = \"ftp://s.example\"\n",
                key(),
                "not an https",
            ),
            (
                "[server]\nurl = \"https://s\"\nca = \"missing.pem\"\n",
                key(),
                "missing.pem",
            ),
            ("hostname = \"a\"\n", key(), "no [server]"),
            ("colour = \"blue\"\n", vec![], "unknown field"),
            (
                "[server]\nurl = \"https://s.example\"\n",
                vec![SigningKey::generate().unwrap()],
                "devices would refuse this server override: ",
            ),
            ("tags = [\"site=\"]\n", vec![], "tag \"site=\""),
        ];
        for (text, keys, named) in cases {
            let err = format!("{:#}", load(text, keys).unwrap_err());
            assert!(err.contains(named), "{text:?}: {err} should name {named}");
        }
    }
}
