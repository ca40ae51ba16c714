//! The init scripts that read a device's settings and `cairn_boot::device_settings`, which
//! writes them, agree: what the module accepts and renders, the scripts take; what it
//! refuses, the scripts refuse too. Runs the scripts themselves (`check` mode) with the
//! host's POSIX sh.

use std::path::{Path, PathBuf};
use std::process::Command;

use cairn_boot::device_settings::{Hostname, NetworkMethod, NetworkSettings};

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("rootfs/etc/cairn")
        .join(name)
}

/// Whether `script check` takes a file holding `contents`.
fn script_takes(name: &str, contents: &str) -> bool {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("settings");
    std::fs::write(&file, contents).unwrap();
    let out = Command::new("sh")
        .arg(script(name))
        .arg("check")
        .arg(&file)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.starts_with("ok") || said.starts_with("rejected: "),
        "{name} check said {said:?} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.status.success()
}

#[test]
fn hostnames_the_module_accepts_are_the_ones_the_script_takes() {
    let long_label = "x".repeat(64);
    let long_name = format!("{}.{}", "a".repeat(40), "b".repeat(30));
    let names = [
        "press-07",
        "a",
        "line3.plant-2",
        &"x".repeat(63),
        "",
        "-a",
        "a-",
        "a..b",
        ".a",
        "a.",
        "a.-b",
        "a-.b",
        "a_b",
        "a b",
        "a;reboot",
        "$(reboot)",
        "ä",
        &long_label,
        &long_name,
    ];
    for name in names {
        let module = Hostname::parse(name).is_ok();
        let script = script_takes("device-hostname", &format!("{name}\n"));
        assert_eq!(module, script, "{name:?}: module {module}, script {script}");
    }
    assert!(!script_takes("device-hostname", "one\ntwo\n"));
    let rendered = Hostname::parse("press-07").unwrap().to_file();
    assert!(script_takes("device-hostname", &rendered));
}

fn net(method: NetworkMethod, values: [Option<&str>; 4]) -> NetworkSettings {
    let [iface, address, gateway, dns] = values.map(|v| v.map(str::to_string));
    NetworkSettings {
        iface: iface.unwrap_or_default(),
        method,
        address,
        gateway,
        dns,
    }
}

/// The file as written without the module's checks, to see the script refuse it.
fn raw_conf(settings: &NetworkSettings) -> String {
    let method = match settings.method {
        NetworkMethod::Static => "static",
        NetworkMethod::Dhcp => "dhcp",
    };
    let mut conf = format!("IFACE={}\nMETHOD={method}\n", settings.iface);
    for (key, value) in [
        ("ADDRESS", &settings.address),
        ("GATEWAY", &settings.gateway),
        ("DNS", &settings.dns),
    ] {
        if let Some(value) = value {
            conf.push_str(&format!("{key}={value}\n"));
        }
    }
    conf
}

#[test]
fn network_settings_the_module_renders_are_taken_and_those_it_refuses_are_refused() {
    use NetworkMethod::{Dhcp, Static};
    let good = [
        net(Dhcp, [Some("eth0"), None, None, None]),
        net(
            Static,
            [Some("eth0"), Some("10.0.2.15/24"), Some("10.0.2.2"), None],
        ),
        net(
            Static,
            [
                Some("enp0s1.100"),
                Some("192.168.1.7/32"),
                Some("192.168.1.1"),
                Some("1.1.1.1"),
            ],
        ),
    ];
    for settings in &good {
        let conf = settings.to_conf().unwrap();
        assert!(script_takes("network", &conf), "{conf}");
    }
    let bad = [
        net(
            Static,
            [Some("-eth0"), Some("10.0.2.15/24"), Some("10.0.2.2"), None],
        ),
        net(
            Static,
            [Some("eth0;x"), Some("10.0.2.15/24"), Some("10.0.2.2"), None],
        ),
        net(
            Static,
            [
                Some("averyveryverylongif"),
                Some("10.0.2.15/24"),
                Some("10.0.2.2"),
                None,
            ],
        ),
        net(
            Static,
            [Some(""), Some("10.0.2.15/24"), Some("10.0.2.2"), None],
        ),
        net(
            Static,
            [Some("eth0"), Some("10.0.2.15"), Some("10.0.2.2"), None],
        ),
        net(
            Static,
            [Some("eth0"), Some("10.0.2.15/33"), Some("10.0.2.2"), None],
        ),
        net(
            Static,
            [Some("eth0"), Some("10.0.2.256/24"), Some("10.0.2.2"), None],
        ),
        net(
            Static,
            [Some("eth0"), Some("10.0.2.15/24"), Some("10.0.2"), None],
        ),
        net(
            Static,
            [
                Some("eth0"),
                Some("10.0.2.15/24"),
                Some("10.0.2.2"),
                Some("8.8.8.8.8"),
            ],
        ),
        net(Static, [Some("eth0"), None, Some("10.0.2.2"), None]),
        net(Static, [Some("eth0"), Some("10.0.2.15/24"), None, None]),
    ];
    for settings in &bad {
        assert!(settings.validate().is_err(), "module took {settings:?}");
        let conf = raw_conf(settings);
        assert!(!script_takes("network", &conf), "script took {conf}");
    }
}
