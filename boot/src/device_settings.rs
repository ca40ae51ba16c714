//! A device's own settings on its data partition, for the init scripts beside this crate:
//! its hostname (`/data/cairn/hostname`, read by `rootfs/etc/cairn/device-hostname`) and
//! its network (`/data/cairn/network.conf`, read by `rootfs/etc/cairn/network`). One image serves
//! every site; these files are what differs between two devices of a fleet, written at
//! provisioning (`cairn-image provision --config`).
//!
//! The scripts read them as data, check every value and fall back to the image's own
//! settings when a file is wrong (a shell that sourced a file on /data would run whatever
//! was written there, at every boot). This module is the writer's side of the same rules:
//! [`Hostname::parse`] and [`NetworkSettings::validate`] accept exactly what the scripts
//! accept, so a file cairn-image writes is never one the device rejects. A test runs the
//! scripts on what this module renders to keep the two sides in step.

use std::fmt;
use std::net::Ipv4Addr;

use serde::Deserialize;

/// The directory on the data partition (mounted at `/data`) that holds these files; it is
/// also cairnd's `data_dir` in every image cairn-image builds.
pub const DIR: &str = "cairn";
/// File names in [`DIR`].
pub const HOSTNAME: &str = "hostname";
pub const NETWORK: &str = "network.conf";
/// The signed server override (`cairn_bundle::SignedServerOverride`), read by cairnd.
pub const SERVER_OVERRIDE: &str = "server-override.json";

/// `name`'s path relative to the data partition's root.
pub fn on_data(name: &str) -> String {
    format!("{DIR}/{name}")
}

/// The longest host name Linux takes (`HOST_NAME_MAX`).
pub const HOSTNAME_MAX: usize = 64;
/// The longest interface name Linux takes (`IFNAMSIZ` - 1).
pub const IFACE_MAX: usize = 15;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingsError {
    #[error(
        "hostname {0:?}: want 1-{HOSTNAME_MAX} characters of dot-separated labels of \
         1-63 of A-Z a-z 0-9 and -, none starting or ending with -"
    )]
    Hostname(String),
    #[error(
        "network interface {0:?}: want 1-{IFACE_MAX} of A-Z a-z 0-9 . _ -, not starting with -"
    )]
    Iface(String),
    #[error("network address {0:?}: want an IPv4 address/prefix such as 10.0.2.15/24")]
    Address(String),
    #[error("network {what} {value:?}: want an IPv4 address such as 10.0.2.2")]
    Ipv4 { what: &'static str, value: String },
    #[error("network method static needs {0}")]
    StaticNeeds(&'static str),
    #[error("network method dhcp takes no {0}")]
    DhcpTakes(&'static str),
}

/// A host name the device sets at boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hostname(String);

impl Hostname {
    pub fn parse(name: &str) -> Result<Hostname, SettingsError> {
        let bad = || SettingsError::Hostname(name.to_string());
        if name.is_empty() || name.len() > HOSTNAME_MAX {
            return Err(bad());
        }
        for label in name.split('.') {
            let ok = (1..=63).contains(&label.len())
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-');
            if !ok {
                return Err(bad());
            }
        }
        Ok(Hostname(name.to_string()))
    }

    /// The file's contents: the name and a newline.
    pub fn to_file(&self) -> String {
        format!("{}\n", self.0)
    }
}

impl fmt::Display for Hostname {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMethod {
    Static,
    Dhcp,
}

/// One interface's settings, as `[network]` of a provisioning config spells them.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkSettings {
    pub iface: String,
    pub method: NetworkMethod,
    /// `static`: the address and prefix length (`10.0.2.15/24`).
    #[serde(default)]
    pub address: Option<String>,
    /// `static`: the default route.
    #[serde(default)]
    pub gateway: Option<String>,
    /// `static`: the name server, when there is one.
    #[serde(default)]
    pub dns: Option<String>,
}

impl NetworkSettings {
    /// Every value checked as `network` checks it, with the first problem named.
    pub fn validate(&self) -> Result<(), SettingsError> {
        let iface = &self.iface;
        let iface_ok = !iface.is_empty()
            && iface.len() <= IFACE_MAX
            && !iface.starts_with('-')
            && iface
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-_".contains(&b));
        if !iface_ok {
            return Err(SettingsError::Iface(iface.clone()));
        }
        match self.method {
            NetworkMethod::Static => {
                let address = self
                    .address
                    .as_deref()
                    .ok_or(SettingsError::StaticNeeds("an address"))?;
                let gateway = self
                    .gateway
                    .as_deref()
                    .ok_or(SettingsError::StaticNeeds("a gateway"))?;
                check_address(address)?;
                check_ipv4("gateway", gateway)?;
                if let Some(dns) = &self.dns {
                    check_ipv4("dns", dns)?;
                }
            }
            NetworkMethod::Dhcp => {
                let given = [
                    ("address", &self.address),
                    ("gateway", &self.gateway),
                    ("dns", &self.dns),
                ];
                if let Some((name, _)) = given.iter().find(|(_, v)| v.is_some()) {
                    return Err(SettingsError::DhcpTakes(name));
                }
            }
        }
        Ok(())
    }

    /// `network.conf`: KEY=VALUE lines, once [`NetworkSettings::validate`] passed.
    pub fn to_conf(&self) -> Result<String, SettingsError> {
        self.validate()?;
        let mut conf = format!("IFACE={}\n", self.iface);
        match self.method {
            NetworkMethod::Dhcp => conf.push_str("METHOD=dhcp\n"),
            NetworkMethod::Static => {
                conf.push_str("METHOD=static\n");
                let lines = [
                    ("ADDRESS", &self.address),
                    ("GATEWAY", &self.gateway),
                    ("DNS", &self.dns),
                ];
                for (key, value) in lines {
                    if let Some(value) = value {
                        conf.push_str(&format!("{key}={value}\n"));
                    }
                }
            }
        }
        Ok(conf)
    }
}

/// Rust's dotted-quad parser is stricter than the script's `ipv4` (it refuses leading
/// zeros, which the script takes): every address it accepts, the script accepts.
fn is_ipv4(value: &str) -> bool {
    value.parse::<Ipv4Addr>().is_ok()
}

fn check_ipv4(what: &'static str, value: &str) -> Result<(), SettingsError> {
    if is_ipv4(value) {
        Ok(())
    } else {
        Err(SettingsError::Ipv4 {
            what,
            value: value.to_string(),
        })
    }
}

fn check_address(value: &str) -> Result<(), SettingsError> {
    let bad = || SettingsError::Address(value.to_string());
    let (ip, prefix) = value.split_once('/').ok_or_else(bad)?;
    let prefix_ok = (1..=2).contains(&prefix.len())
        && prefix.bytes().all(|b| b.is_ascii_digit())
        && prefix.parse::<u8>().is_ok_and(|p| p <= 32);
    if is_ipv4(ip) && prefix_ok {
        Ok(())
    } else {
        Err(bad())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostnames_follow_rfc_1123_within_linux_limits() {
        for good in ["press-07", "a", "line3.plant-2", &"x".repeat(63)] {
            assert!(Hostname::parse(good).is_ok(), "{good}");
        }
        let long = format!("{}.{}", "a".repeat(40), "b".repeat(30));
        for bad in [
            "",
            "-a",
            "a-",
            "a..b",
            ".a",
            "a.",
            "a_b",
            "a b",
            "a;reboot",
            "ä",
            &long,
            &"x".repeat(64),
        ] {
            assert!(Hostname::parse(bad).is_err(), "{bad:?}");
        }
    }

    fn static_net() -> NetworkSettings {
        NetworkSettings {
            iface: "eth0".into(),
            method: NetworkMethod::Static,
            address: Some("10.0.2.15/24".into()),
            gateway: Some("10.0.2.2".into()),
            dns: Some("10.0.2.3".into()),
        }
    }

    #[test]
    fn static_settings_render_as_the_script_reads_them() {
        assert_eq!(
            static_net().to_conf().unwrap(),
            "IFACE=eth0\nMETHOD=static\nADDRESS=10.0.2.15/24\nGATEWAY=10.0.2.2\nDNS=10.0.2.3\n"
        );
    }

    #[test]
    fn each_bad_value_is_named() {
        type Edit = fn(&mut NetworkSettings);
        let cases: [(Edit, &str); 6] = [
            (|n| n.iface = "-eth0".into(), "interface"),
            (|n| n.address = Some("10.0.2.15".into()), "address"),
            (|n| n.address = Some("10.0.2.15/33".into()), "address"),
            (|n| n.gateway = Some("10.0.2.256".into()), "gateway"),
            (|n| n.dns = Some("8.8.8".into()), "dns"),
            (|n| n.gateway = None, "needs a gateway"),
        ];
        for (edit, named) in cases {
            let mut net = static_net();
            edit(&mut net);
            let err = net.to_conf().unwrap_err().to_string();
            assert!(err.contains(named), "{err} should name {named}");
        }
        let mut dhcp = static_net();
        dhcp.method = NetworkMethod::Dhcp;
        assert_eq!(dhcp.validate(), Err(SettingsError::DhcpTakes("address")));
    }
}
