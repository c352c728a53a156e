//! What is recorded: one repository's record ([`RepositoryState`]), the
//! runs' record ([`RunState`]), and the rules that update them from one
//! create or run, as data in, data out.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::records::figures::{ArchiveFigures, RepositoryTotals};
use crate::report::{Report, Timings};

/// The version of the files' layout; a file without it is not ours.
pub const FORMAT: u32 = 1;

/// One repository's record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RepositoryState {
    pub format: u32,
    /// The repository as the create named it (a relative local path made
    /// absolute).
    pub repository: String,
    /// Creates recorded, and how many of them failed (no archive).
    pub creates: u64,
    pub failures: u64,
    pub last_attempt: Attempt,
    /// The last create that made an archive (borg exit 0 or 1).
    pub last_success: Option<Success>,
    pub last_failure: Option<Attempt>,
}

/// One create: Unix times in seconds, borg's exit code (128+N: signal N).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    pub start: f64,
    pub end: f64,
    pub status: i32,
    /// The archive argument as given (placeholders unexpanded).
    pub archive: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Success {
    #[serde(flatten)]
    pub attempt: Attempt,
    /// borg's figures for the archive; `None` when not asked for.
    pub archive_figures: Option<ArchiveFigures>,
    pub totals: Option<RepositoryTotals>,
    /// Archives in the repository after this create.
    pub archives: Option<u64>,
    /// Where the figures came from: `create --json`, `borg info`, or `none`.
    pub figures_from: String,
    /// When the create the figures describe ended: this one, or an
    /// earlier one when this one brought none.
    #[serde(default)]
    pub figures_end: Option<f64>,
    /// When `totals` and `archives` were taken, if later than the create:
    /// at the end of its session, after the session's prune and compact.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub totals_end: Option<f64>,
}

/// What a session's end found in a repository: its totals and archive
/// count after everything the session's command did to it.
#[derive(Clone, Debug, PartialEq)]
pub struct TotalsTaken {
    pub totals: RepositoryTotals,
    pub archives: u64,
    /// When they were taken.
    pub end: f64,
}

/// `state` with the totals and archive count a session's end took; `None`
/// when it has no successful create to attach them to (the session's
/// creates into it all failed: its last success is older than the session).
pub fn with_totals(
    mut state: RepositoryState,
    taken: TotalsTaken,
    session_start: f64,
) -> Option<RepositoryState> {
    let last = state.last_success.as_mut()?;
    if last.attempt.end < session_start {
        return None;
    }
    last.totals = Some(taken.totals);
    last.archives = Some(taken.archives);
    last.totals_end = Some(taken.end);
    Some(state)
}

/// `state` after a create in a session whose end takes the archive count:
/// until then, and if that `borg list` fails, the count known before the
/// create stays (`borg_total_backups` does not vanish for one failed call).
pub fn keeping_the_count(mut state: RepositoryState, known: Option<u64>) -> RepositoryState {
    if let Some(last) = state.last_success.as_mut() {
        if last.archives.is_none() {
            last.archives = known;
        }
    }
    state
}

/// zfs-snap's last run that took snapshots (a `wrap` or a whole session),
/// and totals over all runs.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RunState {
    pub format: u32,
    /// `wrap` or `session`.
    pub kind: String,
    pub start: f64,
    pub end: f64,
    /// The command's (or borg's) exit code.
    pub status: i32,
    /// Ended without error and left nothing behind.
    pub success: bool,
    pub backend: String,
    pub datasets: u64,
    pub pools: u64,
    pub processes: u64,
    /// Creates served (a session); 1 for a wrap.
    pub creates: u64,
    /// Seconds per phase: discovery, snapshot, hold, mount, borg, teardown.
    pub phases: BTreeMap<String, f64>,
    /// What earlier runs had left and this run found at its start.
    pub leftovers_found: u64,
    pub leftovers_removed: u64,
    /// Snapshots whose destroy ZFS deferred (someone else holds them).
    pub deferred_destroys: u64,
    /// What this run's teardown could not remove.
    pub left_behind: u64,
    pub runs_total: u64,
    pub failed_runs_total: u64,
    pub leftovers_removed_total: u64,
}

/// Everything in a state directory, as read for an exposition.
#[derive(Debug, Default)]
pub struct Recorded {
    pub repositories: Vec<RepositoryState>,
    pub run: Option<RunState>,
    /// Files that are not records of ours, and why.
    pub unreadable: Vec<(PathBuf, String)>,
}

/// Whether borg's exit code says the archive was made: 0, a warning (1,
/// or 100-127 with `BORG_EXIT_CODES=modern`, which borgmatic 2 sets).
pub fn made_archive(status: i32) -> bool {
    matches!(status, 0 | 1 | 100..=127)
}

pub fn updated(
    old: Option<RepositoryState>,
    repository: String,
    attempt: Attempt,
    success: Option<Success>,
) -> RepositoryState {
    let mut state = old.unwrap_or(RepositoryState {
        format: FORMAT,
        repository,
        creates: 0,
        failures: 0,
        last_attempt: attempt.clone(),
        last_success: None,
        last_failure: None,
    });
    state.creates += 1;
    state.last_attempt = attempt.clone();
    match success {
        Some(mut s) => {
            // A create without figures (a remote repository, a borg info
            // that failed) keeps the last ones known, with their time.
            if s.archive_figures.is_none() {
                if let Some(old) = state.last_success.take() {
                    if old.archive_figures.is_some() {
                        s.archive_figures = old.archive_figures;
                        s.totals = old.totals;
                        s.archives = s.archives.or(old.archives);
                        s.figures_from = old.figures_from;
                        s.figures_end = old.figures_end;
                        s.totals_end = old.totals_end;
                    }
                }
            }
            state.last_success = Some(s);
        }
        None => {
            state.failures += 1;
            state.last_failure = Some(attempt);
        }
    }
    state
}

/// A run that took snapshots: what [`record_run`] needs.
pub struct RunRecord<'a> {
    pub kind: &'a str,
    pub start: f64,
    pub status: i32,
    pub timings: &'a Timings,
    pub creates: u64,
    /// Recovery at the run's start.
    pub recovered: &'a Report,
    /// Teardown's report, or what it could not remove.
    pub teardown: std::result::Result<&'a Report, usize>,
}

pub fn run_state(old: RunState, run: &RunRecord<'_>, end: f64) -> RunState {
    let t = run.timings;
    let found = run.recovered.unmounted.len()
        + run.recovered.destroyed.len()
        + run.recovered.deferred.len();
    let removed = run.recovered.unmounted.len() + run.recovered.destroyed.len();
    let (teardown_deferred, left_behind) = match run.teardown {
        Ok(report) => (report.deferred.len(), 0),
        Err(problems) => (0, problems),
    };
    let success = run.status == 0 && left_behind == 0;
    let phases = [
        ("discovery", t.discovery_ms),
        ("snapshot", t.snapshot_ms),
        ("hold", t.hold_ms),
        ("mount", t.mount_ms),
        ("borg", t.borg_ms),
        ("teardown", t.teardown_ms),
    ]
    .into_iter()
    .map(|(k, ms)| (k.to_owned(), ms / 1000.0))
    .collect();
    RunState {
        format: FORMAT,
        kind: run.kind.to_owned(),
        start: run.start,
        end,
        status: run.status,
        success,
        backend: t.backend.clone(),
        datasets: t.datasets as u64,
        pools: t.pools as u64,
        processes: t.processes as u64,
        creates: run.creates,
        phases,
        leftovers_found: found as u64,
        leftovers_removed: removed as u64,
        deferred_destroys: (run.recovered.deferred.len() + teardown_deferred) as u64,
        left_behind: left_behind as u64,
        runs_total: old.runs_total + 1,
        failed_runs_total: old.failed_runs_total + u64::from(!success),
        leftovers_removed_total: old.leftovers_removed_total + removed as u64,
    }
}

/// The record of a run that stopped before borg ended (an error, the lock
/// held, a signal): counted as failed; what the last run left behind, its
/// phases and leftovers stay on record; when, how and that it failed are
/// this run's.
pub fn failed_run_state(
    old: Option<RunState>,
    kind: &str,
    start: f64,
    end: f64,
    status: i32,
) -> RunState {
    match old {
        Some(mut old) => {
            old.kind = kind.to_owned();
            old.start = start;
            old.end = end;
            old.status = status;
            old.success = false;
            old.runs_total += 1;
            old.failed_runs_total += 1;
            old
        }
        None => RunState {
            format: FORMAT,
            kind: kind.to_owned(),
            start,
            end,
            status,
            runs_total: 1,
            failed_runs_total: 1,
            ..RunState::default()
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_that_made_an_archive() {
        for made in [0, 1, 100, 107, 127] {
            assert!(made_archive(made), "{made}");
        }
        for failed in [2, 3, 75, 99, 128, 130, 143] {
            assert!(!made_archive(failed), "{failed}");
        }
    }

    fn attempt(status: i32) -> Attempt {
        Attempt {
            start: 1.0,
            end: 2.0,
            status,
            archive: "a".into(),
        }
    }

    fn success() -> Success {
        Success {
            attempt: attempt(0),
            archive_figures: None,
            totals: None,
            archives: Some(3),
            figures_from: "none".into(),
            figures_end: None,
            totals_end: None,
        }
    }

    fn totals(unique_csize: u64) -> RepositoryTotals {
        RepositoryTotals {
            total_chunks: 1,
            total_csize: 2,
            total_size: 3,
            total_unique_chunks: 4,
            unique_csize,
            unique_size: 6,
        }
    }

    #[test]
    fn totals_taken_at_a_sessions_end_replace_the_creates_with_their_time() {
        let mut made = success();
        made.totals = Some(totals(100));
        made.attempt.end = 50.0;
        let s = updated(None, "/r".into(), made.attempt.clone(), Some(made));
        let taken = TotalsTaken {
            totals: totals(90),
            archives: 7,
            end: 60.0,
        };
        let after = with_totals(s.clone(), taken.clone(), 40.0).expect("attached");
        let last = after.last_success.as_ref().unwrap();
        assert_eq!(last.totals, Some(totals(90)));
        assert_eq!(last.archives, Some(7));
        assert_eq!(last.totals_end, Some(60.0));
        // A success from before the session is not this session's.
        assert_eq!(with_totals(s, taken.clone(), 55.0), None);
        let failed = updated(None, "/r".into(), attempt(2), None);
        assert_eq!(with_totals(failed, taken, 0.0), None);
    }

    #[test]
    fn a_sessions_create_keeps_the_last_count_until_its_end_takes_one() {
        let s = updated(None, "/r".into(), attempt(0), Some(success()));
        let known = s.last_success.as_ref().unwrap().archives;
        let mut uncounted = success();
        uncounted.totals = Some(totals(100));
        uncounted.archives = None;
        let s = keeping_the_count(
            updated(Some(s), "/r".into(), attempt(0), Some(uncounted)),
            known,
        );
        let last = s.last_success.as_ref().unwrap();
        assert_eq!(last.archives, Some(3), "the count known before");
        assert_eq!(last.totals, Some(totals(100)), "the create's own totals");
        assert_eq!(last.totals_end, None, "the totals are the create's");
        // Outside such a session a create without a count has none.
        let mut uncounted = success();
        uncounted.archives = None;
        let s = updated(Some(s), "/r".into(), attempt(0), Some(uncounted));
        assert_eq!(s.last_success.unwrap().archives, None);
    }

    #[test]
    fn a_success_without_figures_keeps_the_last_ones() {
        let mut with = success();
        with.archive_figures = Some(ArchiveFigures {
            name: "a".into(),
            duration: 1.0,
            original_size: 10,
            compressed_size: 5,
            deduplicated_size: 5,
            nfiles: 2,
        });
        with.figures_end = Some(2.0);
        let s = updated(None, "/r".into(), attempt(0), Some(with.clone()));
        let mut later = success();
        later.attempt.end = 9.0;
        let s = updated(Some(s), "/r".into(), later.attempt.clone(), Some(later));
        let last = s.last_success.unwrap();
        assert_eq!(last.attempt.end, 9.0);
        assert_eq!(last.archive_figures, with.archive_figures);
        assert_eq!(last.figures_end, Some(2.0));
    }

    #[test]
    fn a_failure_keeps_the_last_success() {
        let s = updated(None, "/r".into(), attempt(0), Some(success()));
        let s = updated(Some(s), "/r".into(), attempt(2), None);
        assert_eq!((s.creates, s.failures), (2, 1));
        assert_eq!(s.last_success, Some(success()));
        assert_eq!(s.last_failure, Some(attempt(2)));
        assert_eq!(s.last_attempt.status, 2);
    }
}
