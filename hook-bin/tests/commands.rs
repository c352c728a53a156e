//! `plan`, `tag`, `untag`, `tags` against the fake zfs.

mod support;

use support::*;

#[test]
fn plan_json_describes_snapshots_mounts_and_paths() {
    let w = World::new();
    let data = w.dataset("tank/data", "tank/data");
    let child = w.dataset("tank/data/child", "tank/data/child");
    let plain = w.dir.path().join("plain");
    std::fs::create_dir_all(&plain).unwrap();
    let out = run(w.cmd().args(["plan", "--json"]).arg(&data).arg(&plain));
    assert!(out.status.success());
    let plan: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let mounts = plan["mounts"].as_array().unwrap();
    assert_eq!(mounts.len(), 2);
    assert_eq!(mounts[0]["dataset"], "tank/data");
    assert_eq!(mounts[1]["dataset"], "tank/data/child");
    assert_eq!(mounts[1]["mountpoint"], child.display().to_string());
    let snap = w.runtime_root.join("snap").join(archived(&child));
    assert_eq!(mounts[1]["snapshot_mountpoint"], snap.display().to_string());
    assert_eq!(plan["roots"][0]["source"], "snapshot");
    assert_eq!(
        plan["roots"][0]["borg_path"],
        format!("{}/snap/./{}", w.runtime_root.display(), archived(&data))
    );
    assert_eq!(plan["roots"][1]["source"], "live");
    assert!(
        !w.calls().lines().any(|l| l.starts_with("zfs snapshot")),
        "plan changes nothing"
    );
    let text = run(w.cmd().args(["plan"]).arg(&data));
    assert!(stdout(&text).contains("tank/data/child"));
}

#[test]
fn tag_untag_and_tags_with_inheritance() {
    let w = World::new();
    w.dataset("tank", "tank");
    w.dataset("tank/a", "tank/a");
    w.dataset("tank/a/b", "tank/a/b");
    assert!(run(w.cmd().args(["tag", "tank/a"])).status.success());
    let out = run(w.cmd().args(["tags", "--json"]));
    let tags: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(
        tags,
        serde_json::json!([
            {"dataset": "tank/a", "value": "auto", "source": "local"},
            {"dataset": "tank/a/b", "value": "auto", "source": "inherited from tank/a"}
        ])
    );
    assert!(run(w.cmd().args(["untag", "tank/a"])).status.success());
    let out = run(w.cmd().args(["tags"]));
    assert!(stdout(&out).contains("No dataset is tagged"));
}
