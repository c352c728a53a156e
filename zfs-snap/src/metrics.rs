//! The Prometheus text exposition of what runs recorded ([`crate::records`]):
//! the seed's five names, the names borgmatic-exporter emits (what Grafana
//! dashboard 20334 reads), and zfs-snap's own, each with `# HELP` and
//! `# TYPE`. Built from the state files alone: no borg, no zfs. Also
//! written as a textfile for node_exporter ([`write_textfile`]).

use prometheus::core::Collector;
use prometheus::{Counter, CounterVec, Encoder, Gauge, GaugeVec, Opts, Registry, TextEncoder};

use crate::records::{RecordError, Recorded, RepositoryState, Settings};

/// Per repository (label `repository`): name, help, value of a state.
type RepoFigure = (
    &'static str,
    &'static str,
    fn(&RepositoryState) -> Option<f64>,
);

fn last_archive(s: &RepositoryState) -> Option<&crate::records::ArchiveFigures> {
    s.last_success.as_ref()?.archive_figures.as_ref()
}

fn totals(s: &RepositoryState) -> Option<&crate::records::RepositoryTotals> {
    s.last_success.as_ref()?.totals.as_ref()
}

/// Gauges per repository, of its last successful create.
pub const REPOSITORY_GAUGES: &[RepoFigure] = &[
    // The seed's five.
    (
        "borg_last_backup_timestamp",
        "Unix time the last successful borg create through zfs-snap ended",
        |s| Some(s.last_success.as_ref()?.attempt.end),
    ),
    (
        "borg_backup_duration_seconds",
        "Wall-clock seconds of the last successful borg create (as zfs-snap ran it)",
        |s| {
            let a = &s.last_success.as_ref()?.attempt;
            Some(a.end - a.start)
        },
    ),
    (
        "borg_backup_size_bytes",
        "Original size of the last archive, bytes (borg's original_size)",
        |s| Some(last_archive(s)?.original_size as f64),
    ),
    (
        "borg_repository_size_bytes",
        "Size of the repository: all archives, deduplicated and compressed, bytes (borg's unique_csize)",
        |s| Some(totals(s)?.unique_csize as f64),
    ),
    (
        "borg_backup_files_count",
        "Files in the last archive (borg's nfiles)",
        |s| Some(last_archive(s)?.nfiles as f64),
    ),
    // borgmatic-exporter's names, for dashboard 20334.
    (
        "borg_total_backups",
        "Archives in the repository after the last successful create",
        |s| s.last_success.as_ref()?.archives.map(|n| n as f64),
    ),
    (
        "borg_total_chunks",
        "Chunks referenced by all archives of the repository",
        |s| Some(totals(s)?.total_chunks as f64),
    ),
    (
        "borg_total_compressed_size",
        "Compressed size of all archives, bytes (borg's total_csize)",
        |s| Some(totals(s)?.total_csize as f64),
    ),
    (
        "borg_total_size",
        "Original size of all archives, bytes (borg's total_size)",
        |s| Some(totals(s)?.total_size as f64),
    ),
    (
        "borg_total_deduplicated_compressed_size",
        "Deduplicated compressed size of the repository, bytes (borg's unique_csize)",
        |s| Some(totals(s)?.unique_csize as f64),
    ),
    (
        "borg_total_deduplicated_size",
        "Deduplicated uncompressed size of the repository, bytes (borg's unique_size)",
        |s| Some(totals(s)?.unique_size as f64),
    ),
    (
        "borg_last_backup_duration",
        "borg's own duration of the last archive, seconds",
        |s| Some(last_archive(s)?.duration),
    ),
    (
        "borg_last_backup_files",
        "Files in the last archive (borg's nfiles)",
        |s| Some(last_archive(s)?.nfiles as f64),
    ),
    (
        "borg_last_backup_deduplicated_compressed_size",
        "What the last archive added to the repository, bytes (borg's deduplicated_size)",
        |s| Some(last_archive(s)?.deduplicated_size as f64),
    ),
    (
        "borg_last_backup_compressed_size",
        "Compressed size of the last archive, bytes (borg's compressed_size)",
        |s| Some(last_archive(s)?.compressed_size as f64),
    ),
    (
        "borg_last_backup_size",
        "Original size of the last archive, bytes (borg's original_size)",
        |s| Some(last_archive(s)?.original_size as f64),
    ),
    // zfs-snap's own, of every create (failed ones too).
    (
        "zfs_snap_backup_figures_timestamp_seconds",
        "When the create whose figures the borg_* size and file gauges show ended (an earlier one when the last brought none)",
        |s| s.last_success.as_ref()?.figures_end,
    ),
    (
        "zfs_snap_repository_totals_timestamp_seconds",
        "When the repository's totals and archive count (borg_total_*, borg_repository_size_bytes) were taken: at the end of the create's session, after its prune and compact, or else when the create ended",
        |s| {
            let last = s.last_success.as_ref()?;
            last.totals.as_ref()?;
            last.totals_end.or(last.figures_end)
        },
    ),
    (
        "zfs_snap_create_last_attempt_timestamp_seconds",
        "Unix time the last borg create through zfs-snap ended, successful or not",
        |s| Some(s.last_attempt.end),
    ),
    (
        "zfs_snap_create_last_status",
        "borg's exit code of the last create (0 ok, 1 or 100-127 warning, 2-99 error, 128+N signal N)",
        |s| Some(f64::from(s.last_attempt.status)),
    ),
    (
        "zfs_snap_create_last_success",
        "1 if the last create made an archive (exit 0 or a warning), else 0",
        |s| {
            Some(f64::from(u8::from(crate::records::made_archive(
                s.last_attempt.status,
            ))))
        },
    ),
    (
        "zfs_snap_create_last_failure_timestamp_seconds",
        "Unix time the last failed borg create (no archive) ended",
        |s| Some(s.last_failure.as_ref()?.end),
    ),
];

/// Counters per repository.
pub const REPOSITORY_COUNTERS: &[RepoFigure] = &[
    (
        "zfs_snap_creates_total",
        "borg creates through zfs-snap",
        |s| Some(s.creates as f64),
    ),
    (
        "zfs_snap_create_failures_total",
        "borg creates through zfs-snap that made no archive (an error, a signal, or zfs-snap stopped first)",
        |s| Some(s.failures as f64),
    ),
];

type RunFigure = (
    &'static str,
    &'static str,
    fn(&crate::records::RunState) -> f64,
);

/// Gauges of zfs-snap's last run that took snapshots.
pub const RUN_GAUGES: &[RunFigure] = &[
    (
        "zfs_snap_last_run_timestamp_seconds",
        "Unix time zfs-snap's last run (a wrap or a whole session) ended",
        |r| r.end,
    ),
    (
        "zfs_snap_last_run_duration_seconds",
        "Seconds zfs-snap's last run took, borg included",
        |r| r.end - r.start,
    ),
    (
        "zfs_snap_last_run_success",
        "1 if the last run's command succeeded and its teardown left nothing, else 0",
        |r| f64::from(u8::from(r.success)),
    ),
    (
        "zfs_snap_last_run_status",
        "Exit code of the last run's borg (wrap) or command (session)",
        |r| f64::from(r.status),
    ),
    (
        "zfs_snap_last_run_datasets",
        "Datasets the last run snapshotted",
        |r| r.datasets as f64,
    ),
    (
        "zfs_snap_last_run_pools",
        "Pools the last run snapshotted (one atomic call each)",
        |r| r.pools as f64,
    ),
    (
        "zfs_snap_last_run_creates",
        "borg creates the last run served",
        |r| r.creates as f64,
    ),
    (
        "zfs_snap_last_run_processes",
        "Processes the last run spawned, borg not counted",
        |r| r.processes as f64,
    ),
    (
        "zfs_snap_last_run_leftovers_found",
        "Snapshots and mounts of dead runs the last run found at its start",
        |r| r.leftovers_found as f64,
    ),
    (
        "zfs_snap_last_run_leftovers_removed",
        "Of those, how many the last run removed",
        |r| r.leftovers_removed as f64,
    ),
    (
        "zfs_snap_last_run_deferred_destroys",
        "Snapshots of ours whose destroy ZFS deferred (held by someone else)",
        |r| r.deferred_destroys as f64,
    ),
    (
        "zfs_snap_last_run_left_behind",
        "What the last run's teardown could not remove (run zfs-snap cleanup)",
        |r| r.left_behind as f64,
    ),
];

pub const RUN_COUNTERS: &[RunFigure] = &[
    (
        "zfs_snap_runs_total",
        "zfs-snap runs that took snapshots",
        |r| r.runs_total as f64,
    ),
    (
        "zfs_snap_run_failures_total",
        "Of those, runs that failed or left something behind",
        |r| r.failed_runs_total as f64,
    ),
    (
        "zfs_snap_leftovers_removed_total",
        "Leftovers of dead runs removed by later runs",
        |r| r.leftovers_removed_total as f64,
    ),
];

pub const PHASES: &str = "zfs_snap_last_run_phase_seconds";
pub const INFO: &str = "zfs_snap_last_run_info";
pub const UNREADABLE: &str = "zfs_snap_state_files_unreadable";

/// Every metric name this module can emit, in order.
pub fn names() -> Vec<&'static str> {
    let mut names: Vec<&str> = REPOSITORY_GAUGES
        .iter()
        .chain(REPOSITORY_COUNTERS)
        .map(|f| f.0)
        .collect();
    names.extend(RUN_GAUGES.iter().chain(RUN_COUNTERS).map(|f| f.0));
    names.extend([PHASES, INFO, UNREADABLE]);
    names
}

/// The exposition (Prometheus text format 0.0.4) of `recorded`.
pub fn render(recorded: &Recorded) -> String {
    let registry = Registry::new();
    let repo = &["repository"];
    for (name, help, value) in REPOSITORY_GAUGES {
        let family = GaugeVec::new(Opts::new(*name, *help), repo).expect("valid metric");
        for s in &recorded.repositories {
            if let Some(v) = value(s) {
                family.with_label_values(&[s.repository.as_str()]).set(v);
            }
        }
        register(&registry, family);
    }
    for (name, help, value) in REPOSITORY_COUNTERS {
        let family = CounterVec::new(Opts::new(*name, *help), repo).expect("valid metric");
        for s in &recorded.repositories {
            if let Some(v) = value(s) {
                family.with_label_values(&[s.repository.as_str()]).inc_by(v);
            }
        }
        register(&registry, family);
    }
    if let Some(run) = &recorded.run {
        for (name, help, value) in RUN_GAUGES {
            let family = Gauge::with_opts(Opts::new(*name, *help)).expect("valid metric");
            family.set(value(run));
            register(&registry, family);
        }
        for (name, help, value) in RUN_COUNTERS {
            let family = Counter::with_opts(Opts::new(*name, *help)).expect("valid metric");
            family.inc_by(value(run));
            register(&registry, family);
        }
        let phases = GaugeVec::new(
            Opts::new(PHASES, "Seconds of each phase of the last run"),
            &["phase"],
        )
        .expect("valid metric");
        for (phase, seconds) in &run.phases {
            phases.with_label_values(&[phase.as_str()]).set(*seconds);
        }
        register(&registry, phases);
        let info = GaugeVec::new(
            Opts::new(
                INFO,
                "Always 1: the last run's kind (wrap, session) and ZFS backend",
            ),
            &["kind", "backend"],
        )
        .expect("valid metric");
        info.with_label_values(&[run.kind.as_str(), run.backend.as_str()])
            .set(1.0);
        register(&registry, info);
    }
    let unreadable = Gauge::with_opts(Opts::new(
        UNREADABLE,
        "State files that are not zfs-snap records (empty, truncated, foreign): left out",
    ))
    .expect("valid metric");
    unreadable.set(recorded.unreadable.len() as f64);
    register(&registry, unreadable);

    let mut out = Vec::new();
    TextEncoder::new()
        .encode(&registry.gather(), &mut out)
        .expect("text encoding of valid metrics");
    String::from_utf8(out).expect("the text format is UTF-8")
}

fn register(registry: &Registry, family: impl Collector + 'static) {
    registry
        .register(Box::new(family))
        .expect("each name registered once");
}

/// Rewrites the exposition in `settings`' textfile, if one is set (for
/// node_exporter's textfile collector), from the records as they are now;
/// taken under the state directory's lock, so a later writer's view wins.
pub fn write_textfile(settings: &Settings) -> Result<(), RecordError> {
    let Some(textfile) = &settings.textfile else {
        return Ok(());
    };
    crate::records::store::locked(&settings.dir, |dir| {
        let text = render(&crate::records::read(dir));
        crate::private::write_atomic(textfile, text.as_bytes(), 0o644).map_err(|source| {
            RecordError::Textfile {
                path: textfile.clone(),
                source,
            }
        })
    })
}

/// The content type of [`render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_follow_the_conventions() {
        let names = names();
        let mut sorted = names.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), names.len());
        let counters = REPOSITORY_COUNTERS.iter().map(|f| f.0);
        for name in counters.chain(RUN_COUNTERS.iter().map(|f| f.0)) {
            assert!(name.ends_with("_total"), "{name}");
        }
    }

    #[test]
    fn every_metric_is_listed_in_the_readme() {
        let readme = include_str!("../../README.md");
        for name in names() {
            assert!(
                readme.contains(&format!("`{name}`")) || readme.contains(&format!("`{name}{{")),
                "{name} is not in README's Monitoring tables"
            );
        }
    }

    #[test]
    fn an_empty_state_gives_only_the_health_gauge() {
        let text = render(&Recorded::default());
        assert_eq!(
            text.lines()
                .filter(|l| !l.starts_with('#'))
                .collect::<Vec<_>>(),
            ["zfs_snap_state_files_unreadable 0"]
        );
    }
}
