//! The Secure Boot key hierarchy cairn-image makes (openssl): private keys are 0600 from
//! the start, an existing hierarchy is kept, and an incomplete one is named, not used.

use std::fs;
use std::os::unix::fs::PermissionsExt;

use cairn_image::os::secureboot::SecureBootKeys;

#[test]
fn keys_are_private_kept_and_an_incomplete_hierarchy_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let keys = SecureBootKeys::ensure(dir.path(), "Cairn test").unwrap();
    for pair in [&keys.pk, &keys.kek, &keys.db] {
        let mode = fs::metadata(&pair.key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", pair.key.display());
        let cert = fs::read_to_string(&pair.cert).unwrap();
        assert!(cert.starts_with("-----BEGIN CERTIFICATE-----"), "{cert}");
    }
    let db_cert = fs::read(&keys.db.cert).unwrap();
    let again = SecureBootKeys::ensure(dir.path(), "Cairn test").unwrap();
    assert_eq!(fs::read(&again.db.cert).unwrap(), db_cert, "made anew");
    assert!(SecureBootKeys::existing(dir.path()).is_ok());

    fs::remove_file(&keys.kek.key).unwrap();
    let err = SecureBootKeys::existing(dir.path())
        .unwrap_err()
        .to_string();
    assert!(err.contains("KEK.key is missing"), "{err}");
    let leftovers: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty());
}
