//! borgmatic's upstream units with zfs-snap's drop-in, installed as a user
//! installs them, for the tests that run under real systemd (the seed's
//! host guest): `tests/systemd.rs` and `tests/seedhost.rs`.

use std::path::Path;
use std::process::Command;

use crate::{run, which, write_file, zfs_snap_bin, Out};

/// zfs-snap's drop-in for borgmatic's upstream unit, as shipped.
pub const DROP_IN: &str = include_str!("../../systemd/borgmatic.service.d/zfs-snap.conf");
/// zfs-snap's exporter unit, as shipped.
pub const EXPORTER_UNIT: &str = include_str!("../../systemd/zfs-snap-exporter.service");
/// Where the guest image keeps borgmatic's upstream units (vm-tests image.rs).
pub const UPSTREAM_UNITS: &str = "/usr/local/share/borgmatic-systemd";
/// The `borg` link borgmatic's `local_path` names.
pub const LINK: &str = "/usr/local/lib/zfs-snap/borg";
/// The state directory the units record in (zfs-snap's default).
pub const STATE_DIR: &str = "/var/lib/zfs-snap";
/// The test drop-in's path (after the shipped `zfs-snap.conf`).
pub const TEST_DROP_IN: &str = "/etc/systemd/system/borgmatic.service.d/zz-test.conf";

/// The repositories' passphrase as the seed keeps it: a root-only file
/// (the seed's module: an agenix secret, read by `encryption_passcommand`).
pub const PASSPHRASE_FILE: &str = "/root/borg-passphrase";
/// The passphrase itself (a test greps logs and files for it).
pub const PASSPHRASE: &str = "correct horse battery staple";
/// Upstream's unit loads this as `LoadCredentialEncrypted=borgmatic.pw`.
pub const CREDENTIAL: &str = "/etc/credstore.encrypted/borgmatic.pw";

/// [`PASSPHRASE_FILE`], and upstream's encrypted credential ([`CREDENTIAL`])
/// made from it with `systemd-creds encrypt`, as borgmatic's docs say; made
/// once per boot, by whichever test comes first.
pub fn passphrase_and_credential() {
    if Path::new(CREDENTIAL).exists() && Path::new(PASSPHRASE_FILE).exists() {
        return;
    }
    write_file(Path::new(PASSPHRASE_FILE), PASSPHRASE);
    std::fs::set_permissions(
        PASSPHRASE_FILE,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    std::fs::create_dir_all("/etc/credstore.encrypted").unwrap();
    std::fs::set_permissions(
        "/etc/credstore.encrypted",
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    run(Command::new("systemd-creds").args([
        "encrypt",
        "--name=borgmatic.pw",
        PASSPHRASE_FILE,
        CREDENTIAL,
    ]))
    .success();
}

pub fn systemctl(args: &[&str]) -> Out {
    run(Command::new("systemctl").args(args))
}

/// The unit's journal as text.
pub fn journal(unit: &str) -> String {
    run(Command::new("journalctl").args(["-u", unit, "--no-pager", "-o", "cat"])).stdout
}

/// Installs zfs-snap, its link, borgmatic where upstream's unit looks for
/// it, upstream's units and our drop-in, plus `test_drop_in` (the lines a
/// test changes, as `[Service]` lines) as [`TEST_DROP_IN`]; stops a unit a
/// failed test left running.
pub fn install(test_drop_in: &str) {
    systemctl(&["stop", "borgmatic.timer", "borgmatic.service"]);
    systemctl(&["reset-failed", "borgmatic.service"]);
    std::fs::create_dir_all("/usr/local/lib/zfs-snap").unwrap();
    // By rename: a zfs-snap still running keeps its old file.
    std::fs::copy(zfs_snap_bin(), "/usr/local/bin/.zfs-snap.new").unwrap();
    std::fs::rename("/usr/local/bin/.zfs-snap.new", "/usr/local/bin/zfs-snap").unwrap();
    let _ = std::fs::remove_file(LINK);
    std::os::unix::fs::symlink("/usr/local/bin/zfs-snap", LINK).unwrap();
    std::fs::create_dir_all("/root/.local/bin").unwrap();
    let _ = std::fs::remove_file("/root/.local/bin/borgmatic");
    std::os::unix::fs::symlink(which("borgmatic").unwrap(), "/root/.local/bin/borgmatic").unwrap();
    for unit in ["borgmatic.service", "borgmatic.timer"] {
        std::fs::copy(
            Path::new(UPSTREAM_UNITS).join(unit),
            Path::new("/etc/systemd/system").join(unit),
        )
        .unwrap_or_else(|e| panic!("upstream {unit}: {e}"));
    }
    let dropins = Path::new("/etc/systemd/system/borgmatic.service.d");
    let _ = std::fs::remove_dir_all(dropins);
    std::fs::create_dir_all(dropins).unwrap();
    write_file(&dropins.join("zfs-snap.conf"), DROP_IN);
    write_file(
        Path::new(TEST_DROP_IN),
        &format!("[Service]\n{test_drop_in}"),
    );
    systemctl(&["daemon-reload"]).success();
}

/// zfs-snap's own `zfs-snap-backup.service` and `.timer`, as shipped, in
/// `/etc/systemd/system` (the caller runs `daemon-reload`).
pub fn install_standalone_units() {
    for (name, text) in [
        (
            "zfs-snap-backup.service",
            include_str!("../../systemd/zfs-snap-backup.service"),
        ),
        (
            "zfs-snap-backup.timer",
            include_str!("../../systemd/zfs-snap-backup.timer"),
        ),
    ] {
        write_file(&Path::new("/etc/systemd/system").join(name), text);
    }
}

/// Starts zfs-snap's exporter unit as shipped, scrapes it once, and stops
/// it: it must stop cleanly on systemd's SIGTERM.
pub fn exporter_scrape() -> std::collections::BTreeMap<String, f64> {
    write_file(
        Path::new("/etc/systemd/system/zfs-snap-exporter.service"),
        EXPORTER_UNIT,
    );
    systemctl(&["daemon-reload"]).success();
    systemctl(&["start", "zfs-snap-exporter.service"]).success();
    let fetch = r#"
import sys, time, urllib.request
for _ in range(100):
    try:
        sys.stdout.write(urllib.request.urlopen("http://127.0.0.1:9996/metrics").read().decode())
        break
    except OSError:
        time.sleep(0.1)
else:
    sys.exit("the exporter never answered")
"#;
    let scraped = run(Command::new("python3").args(["-c", fetch]));
    let journal = journal("zfs-snap-exporter");
    systemctl(&["stop", "zfs-snap-exporter.service"]).success();
    let result = systemctl(&[
        "show",
        "-p",
        "Result,ExecMainStatus,User",
        "zfs-snap-exporter.service",
    ]);
    assert!(scraped.code() == 0, "{}\n{journal}", scraped.dump());
    assert!(
        result.stdout.contains("Result=success") && result.stdout.contains("ExecMainStatus=0"),
        "the exporter stops cleanly on SIGTERM: {}\n{journal}",
        result.stdout
    );
    assert!(journal.contains("exporter serving /metrics"), "{journal}");
    // The unit's LimitNOFILE=8192 reached it, read under its seccomp filter.
    assert!(journal.contains("waiting_cap=4096"), "{journal}");
    crate::exposition_samples(&scraped.stdout)
}
