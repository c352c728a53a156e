//! What the commands print on stdout (logs go to stderr).

use zfs_snap::plan::{Plan, RootSource};
use zfs_snap::report::Report;
use zfs_snap::zfs::TagInfo;

pub fn plan(plan: &Plan, json: bool) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(plan).expect("a plan always serialises")
        );
        return;
    }
    if plan.mounts.is_empty() {
        println!("No dataset to snapshot: borg would read every path live.");
    } else {
        println!("Snapshots (one atomic `zfs snapshot` per pool), mounted read-only:");
        for m in &plan.mounts {
            let bind = m.bind.as_ref().map_or(String::new(), |b| {
                format!(
                    "; a bind mount: its {} bound from {}",
                    b.root.display(),
                    b.from.display()
                )
            });
            println!(
                "  {}  {} -> {}  ({}{bind})",
                m.dataset,
                m.mountpoint.display(),
                m.snapshot_mountpoint.display(),
                m.reason
            );
        }
    }
    println!("Paths given to borg:");
    for root in plan.borg_roots() {
        let source = match root.source {
            RootSource::Snapshot => "snapshot",
            RootSource::Live => "live",
        };
        println!(
            "  {}  ->  {}  [{source}]",
            root.path.display(),
            root.borg_path
        );
    }
    for path in &plan.live_exclusions {
        println!(
            "Excluded live (read from its snapshot instead): {}",
            path.display()
        );
    }
    for path in &plan.boundaries {
        println!(
            "Stored as a directory, not descended into (--one-file-system): {}",
            path.display()
        );
    }
    for note in &plan.notes {
        println!("Note: {note}");
    }
    for warning in &plan.warnings {
        println!("Warning: {warning}");
    }
}

pub fn tags(tags: &[TagInfo], json: bool) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(tags).expect("tags always serialise")
        );
        return;
    }
    if tags.is_empty() {
        println!("No dataset is tagged.");
    }
    for tag in tags {
        println!("{}\t{}\t{}", tag.dataset, tag.value, tag.source);
    }
}

pub fn cleanup(report: &Report, dry_run: bool) {
    let (unmount, destroy) = if dry_run {
        ("would unmount", "would destroy")
    } else {
        ("unmounted", "destroyed")
    };
    if report.is_empty() {
        println!("Nothing left behind.");
    }
    for path in &report.unmounted {
        println!("{unmount} {}", path.display());
    }
    for name in &report.destroyed {
        println!("{destroy} {name}");
    }
    for name in &report.deferred {
        println!("marked for deferred destroy (busy) {name}");
    }
    for thing in &report.left_alone {
        println!("not zfs-snap's, left alone: {thing}");
    }
}
