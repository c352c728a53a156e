//! borgmatic as a real client: its `local_path` is a `borg` link to zfs-snap
//! and its own ZFS hook is off.

use std::os::unix::fs::symlink;
use std::process::Command;

use integration::*;

#[test]
fn borgmatic_through_the_borg_link() {
    let fx = require_zfs!();
    let borgmatic = need!(Need::Borgmatic);
    let p = &fx.pool;
    p.dataset("data", &[]);
    let a = p.write("data/a.txt", "before\n");
    p.write("data/sub/b.txt", "b\n");
    let second = fx.new_repo("second");
    let link = fx.work.join("bin/borg");
    symlink(zfs_snap_bin(), &link).expect("symlink borg -> zfs-snap");
    let mount = fx.script(
        "mount-after-change",
        &format!("echo after > {}\nexec mount \"$@\"", sh_quote(&a)),
    );
    let config = write_file(
        &fx.work.join("borgmatic.yaml"),
        &format!(
            "source_directories:\n    - {source}\n\
             repositories:\n    - path: {repo}\n      label: test\n    - path: {second}\n\
             local_path: {link}\n\
             archive_name_format: 'bm-{{now:%Y%m%dT%H%M%S}}'\n\
             unknown_unencrypted_repo_access_is_ok: true\n\
             relocated_repo_access_is_ok: true\n\
             store_config_files: false\n\
             keep_daily: 7\n",
            source = p.path("data").display(),
            repo = fx.repo.path.display(),
            second = second.path.display(),
            link = link.display(),
        ),
    );
    let mut cmd = Command::new(&borgmatic);
    borg_env(&mut cmd, &fx.work.join("borg-base"));
    cmd.env("ZFS_SNAP_RUNTIME_ROOT", &fx.root)
        .env("ZFS_SNAP_MOUNT_COMMAND", &mount)
        .env("ZFS_SNAP_METRICS_INFO", "auto")
        .args([
            "--config",
            &config.display().to_string(),
            "create",
            "--json",
            "--verbosity",
            "1",
        ]);
    let out = run(&mut cmd).success();

    assert_eq!(
        read_file(&a),
        "after\n",
        "the mount command did not run: borgmatic bypassed zfs-snap?\n{}",
        out.dump()
    );
    let archives = fx.repo.archives();
    assert_eq!(archives.len(), 1, "{archives:?}\n{}", out.dump());
    assert!(archives[0].starts_with("bm-"), "{archives:?}");
    let listed = fx.repo.list(&archives[0]);
    let data = p.ds("data");
    for want in [format!("{data}/a.txt"), format!("{data}/sub/b.txt")] {
        assert!(listed.contains(&want), "{want} missing from {listed:#?}");
    }
    let root = fx.root.display().to_string();
    let leaked: Vec<&String> = listed
        .iter()
        .filter(|l| l.contains(root.trim_start_matches('/')))
        .collect();
    assert!(
        leaked.is_empty(),
        "runtime-root paths in the archive: {leaked:?}"
    );
    let x = fx.work.join("x");
    fx.repo.extract(&archives[0], &x);
    assert_eq!(
        read_file(&x.join(&data).join("a.txt")),
        "before\n",
        "archived live data, not the snapshot"
    );

    // Monitoring: borg's JSON reached borgmatic unchanged, and what each
    // create recorded of its repository is what borg says.
    // borgmatic logs to stdout too; its JSON starts the last line.
    let last = out.stdout.lines().last().unwrap_or_default();
    let printed: serde_json::Value = serde_json::Deserializer::from_str(last)
        .into_iter()
        .next()
        .expect("a JSON value")
        .unwrap_or_else(|e| panic!("borgmatic --json output: {e}\n{}", out.dump()));
    let samples = recorded_samples(&fx.state_dir());
    for repo in [&fx.repo, &second] {
        let location = repo.path.display().to_string();
        let created = printed
            .as_array()
            .expect("one JSON object per repository")
            .iter()
            .find(|c| c["repository"]["location"] == location.as_str())
            .unwrap_or_else(|| panic!("{location} not in {printed:#}"));
        let archive = created["archive"]["name"].as_str().unwrap();
        assert!(archive.starts_with("bm-"));
        let borg = || repo.borg();
        assert_figures_match_borg(
            &samples,
            &borg,
            &location,
            archive,
            Some(created),
            Totals::OfTheCreate { counted: false },
        );
    }
    assert_eq!(samples["zfs_snap_runs_total"], 2.0, "two wraps");
    assert_eq!(samples["zfs_snap_last_run_success"], 1.0);
    fx.assert_clean();
}
