//! Bad input: each case gets a clear message and leaves nothing behind.

mod support;

use std::fs;
use std::os::unix::fs::PermissionsExt;

use support::*;

fn wrap_args(repo: &str, path: &std::path::Path) -> Vec<String> {
    vec![
        "wrap".into(),
        "--".into(),
        "borg".into(),
        "create".into(),
        format!("{repo}::a"),
        path.display().to_string(),
    ]
}

/// A source root that does not exist is what plain borg makes of it
/// (DESIGN Discovery 6): borg's own warning naming it, the rest archived
/// from snapshots, exit 1. Missing as a positional path below a dataset, as
/// a relative path, and as an `R` line of a patterns file; the archive's
/// listing is plain borg's over the live tree with the same missing paths.
#[test]
fn a_missing_source_path_is_borgs_warning_and_the_rest_is_archived() {
    need!(Need::Borg);
    let w = World::new();
    let data = w.dataset("tank/data", "tank/data");
    w.write(&data.join("a.txt"), "a\n");
    w.write(&data.join("sub/b.txt"), "b\n");
    let below = data.join("nope");
    let patterns = w.dir.path().join("patterns.lst");
    w.write(
        &patterns,
        &format!(
            "R {}\nR {}\n",
            data.join("gone/deeper").display(),
            data.display()
        ),
    );
    let repo = w.repo();
    let args = |archive: &str| -> Vec<String> {
        vec![
            "create".into(),
            "--patterns-from".into(),
            patterns.display().to_string(),
            format!("{repo}::{archive}"),
            below.display().to_string(),
            "no-such-relative".into(),
        ]
    };
    let out = run(w.cmd().args(["wrap", "--", "borg"]).args(args("a")));
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "borg's warning status: {err}");
    for missing in [
        below.display().to_string(),
        "no-such-relative".to_owned(),
        data.join("gone/deeper").display().to_string(),
    ] {
        assert!(
            err.contains(&format!("source path {missing} does not exist")),
            "our warning names {missing}: {err}"
        );
        assert!(
            err.contains(&format!("[Errno 2] No such file or directory: '{missing}'")),
            "borg's own warning names {missing} as given: {err}"
        );
    }
    assert_eq!(w.snapshot_calls(), 1, "the rest is read from a snapshot");
    let plain = w.borg(&args("plain").iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(plain.status.code(), Some(1), "{}", stderr(&plain));
    let listed = w.archive_paths("a");
    assert!(
        listed.contains(&archived(&data.join("sub/b.txt"))),
        "{listed:?}"
    );
    assert_eq!(listed, w.archive_paths("plain"));
    w.assert_clean();
}

/// `zfs-snap plan` tells about a missing source path too.
#[test]
fn plan_names_a_missing_source_path() {
    let w = World::new();
    let data = w.dataset("tank/data", "tank/data");
    let out = run(w.cmd().arg("plan").arg(&data).arg(data.join("nope")));
    assert!(out.status.success(), "{}", stderr(&out));
    let text = format!("{}{}", stdout(&out), stderr(&out));
    assert!(
        text.contains(&format!(
            "source path {} does not exist",
            data.join("nope").display()
        )),
        "{text}"
    );
}

#[test]
fn zfs_command_missing_failing_or_garbled() {
    need!(Need::Borg);
    let w = World::new();
    let data = w.dataset("tank/data", "tank/data");
    let out = run(w
        .cmd()
        .args(["--zfs-command", "/nonexistent/zfs"])
        .args(wrap_args("/r", &data)));
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("zfs command `/nonexistent/zfs` was not found"),
        "{}",
        stderr(&out)
    );

    w.edit(|s| s["fail"] = serde_json::json!({"list": "The ZFS modules cannot be auto-loaded."}));
    let out = run(w.cmd().args(wrap_args("/r", &data)));
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("The ZFS modules cannot be auto-loaded."));

    w.edit(|s| {
        s["fail"] = serde_json::json!({});
        s["garbage"] = serde_json::json!("tank\tnonsense");
    });
    let out = run(w.cmd().args(wrap_args("/r", &data)));
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("\"tank\\tnonsense\""),
        "the line is quoted: {}",
        stderr(&out)
    );
    w.assert_clean();
}

#[test]
fn borg_missing_or_too_old() {
    let w = World::new();
    let data = w.dataset("tank/data", "tank/data");
    let mut args = wrap_args("/r", &data);
    args[2] = "/nonexistent/borg".into();
    let out = run(w.cmd().args(&args));
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("borg command `/nonexistent/borg` was not found"),
        "{}",
        stderr(&out)
    );

    let old = w.dir.path().join("old-borg");
    fs::write(&old, "#!/bin/sh\necho 'borg 1.2.4'\n").unwrap();
    fs::set_permissions(&old, fs::Permissions::from_mode(0o755)).unwrap();
    args[2] = old.display().to_string();
    let out = run(w.cmd().args(&args));
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("borg 1.2.4 is too old"),
        "{}",
        stderr(&out)
    );
    assert_eq!(w.snapshot_calls(), 0);
}

#[test]
fn wrap_needs_a_command_and_create_needs_an_archive() {
    let w = World::new();
    let out = run(w.cmd().args(["wrap", "borg", "create", "::a", "/x"]));
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--"), "{}", stderr(&out));
    let out = run(w.cmd().args(["wrap", "--", "borg", "create", "--stats"]));
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("needs an ARCHIVE"),
        "{}",
        stderr(&out)
    );
    let out = run(w
        .cmd()
        .args(["wrap", "--", "borg", "create", "--paths-from-stdin", "::a"]));
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("--paths-from-stdin"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn unsafe_runtime_roots_are_refused() {
    need!(Need::Borg);
    let w = World::new();
    let data = w.dataset("tank/data", "tank/data");
    let real = w.dir.path().join("real-root");
    fs::create_dir(&real).unwrap();
    fs::set_permissions(&real, fs::Permissions::from_mode(0o700)).unwrap();
    let link = w.dir.path().join("link-root");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let out = run(w
        .cmd()
        .arg("--runtime-root")
        .arg(&link)
        .args(wrap_args("/r", &data)));
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("symlink"), "{}", stderr(&out));
    fs::set_permissions(&real, fs::Permissions::from_mode(0o770)).unwrap();
    let out = run(w
        .cmd()
        .arg("--runtime-root")
        .arg(&real)
        .args(wrap_args("/r", &data)));
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("writable by group or others"),
        "{}",
        stderr(&out)
    );
    assert_eq!(w.snapshot_calls(), 0);
}

#[test]
fn tagging_a_missing_dataset_names_it() {
    let w = World::new();
    w.dataset("tank/data", "tank/data");
    let out = run(w.cmd().args(["tag", "tank/data", "tank/nope"]));
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("dataset tank/nope does not exist"),
        "{}",
        stderr(&out)
    );
    assert!(
        w.state()["datasets"]["tank/data"]["props"]
            .get(TAG)
            .is_none(),
        "all or nothing"
    );
}

/// With stderr the journal stream (`JOURNAL_STREAM` names its device and
/// inode), each line carries its syslog priority for journald; stderr
/// redirected elsewhere by a child of the unit keeps plain lines.
#[test]
fn journal_lines_carry_their_priority() {
    use std::os::unix::fs::MetadataExt;
    need!(Need::Borg);
    let w = World::new();
    let data = w.dataset("tank/data", "tank/data");
    // An unknown borg option: a warning; a missing patterns file: an error.
    let log = w.dir.path().join("journal.log");
    let run_logged = |journal_stream: &str| {
        let file = fs::File::create(&log).unwrap();
        let status = w
            .cmd()
            .args(wrap_args("/r", &data))
            .arg("--an-option-from-the-future")
            .arg("--patterns-from=/nonexistent/zfs-snap-patterns")
            .env("JOURNAL_STREAM", journal_stream)
            .stderr(file)
            .status()
            .unwrap();
        assert_eq!(status.code(), Some(2));
        fs::read_to_string(&log).unwrap()
    };
    let file = fs::File::create(&log).unwrap();
    let meta = file.metadata().unwrap();
    let stream = format!("{}:{}", meta.dev(), meta.ino());
    drop(file);
    let text = run_logged(&stream);
    eprintln!("{text}");
    let lines: Vec<&str> = text.lines().collect();
    assert!(!lines.is_empty());
    assert!(
        lines
            .iter()
            .all(|l| l.starts_with('<') && l[1..3].ends_with('>')),
        "every line has a priority: {text}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("<4>") && l.contains("an-option-from-the-future")),
        "{text}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("<3>") && l.contains("/nonexistent/zfs-snap-patterns")),
        "{text}"
    );
    assert!(!text.contains('\x1b'), "no colour");

    let text = run_logged("1:2");
    assert!(!text.lines().any(|l| l.starts_with('<')), "{text}");
    assert!(text.contains("/nonexistent/zfs-snap-patterns"));
}

/// Standing in for a borg asked for `--log-json` (borgmatic always asks),
/// zfs-snap's own lines are borg's JSON log lines, each at its level: the
/// caller files them as log messages, not as unknown stderr text.
#[test]
fn with_log_json_our_lines_are_borg_json_log_lines() {
    need!(Need::Borg);
    let w = World::new();
    let data = w.dataset("tank/data", "tank/data");
    let out = run(w
        .cmd()
        .args(["wrap", "--", "borg", "create", "--log-json", "/r::a"])
        .arg(&data)
        .arg("--an-option-from-the-future")
        .arg("--patterns-from=/nonexistent/zfs-snap-patterns"));
    assert_eq!(out.status.code(), Some(2));
    let lines: Vec<serde_json::Value> = stderr(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect();
    let level_of = |needle: &str| {
        lines
            .iter()
            .find(|l| l["message"].as_str().unwrap().contains(needle))
            .map(|l| l["levelname"].as_str().unwrap().to_owned())
    };
    assert!(lines.iter().all(|l| l["type"] == "log_message"));
    assert_eq!(
        level_of("an-option-from-the-future").as_deref(),
        Some("WARNING")
    );
    assert_eq!(
        level_of("/nonexistent/zfs-snap-patterns").as_deref(),
        Some("ERROR")
    );
}
