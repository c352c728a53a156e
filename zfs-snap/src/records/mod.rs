//! What runs recorded, for monitoring. Per repository: the last `borg
//! create` through zfs-snap (when, how it ended), and for the last one that
//! made an archive, borg's own figures (the archive's sizes and file
//! count, the repository's totals). For zfs-snap itself: its last run
//! (phases, datasets, leftovers) and running totals.
//!
//! [`record`] (the records and their update rules), [`figures`] (borg's
//! JSON), [`location`] (which repository), [`borg_calls`] (the borg calls
//! made for figures), [`store`] (the state directory). `zfs-snap metrics`
//! and the exporter only read the store: they never run borg or zfs.
//!
//! Recording never fails a backup: what cannot be recorded is a warning.

pub mod borg_calls;
pub mod error;
pub mod figures;
pub mod location;
pub mod record;
pub mod store;

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::borg::CreateArgs;
use crate::command::CommandLine;

pub use error::RecordError;
pub use figures::{parse_create_json, parse_info_json, ArchiveFigures, RepositoryTotals};
pub use location::{absolute_location, canonical, is_remote, repository_of};
use record::{failed_run_state, keeping_the_count, run_state, updated, with_totals};
pub use record::{
    made_archive, Attempt, Recorded, RepositoryState, RunRecord, RunState, Success, TotalsTaken,
    FORMAT,
};
pub use store::{read, repository_file, REPOSITORIES_DIR, RUN_FILE};

pub const DEFAULT_DIR: &str = "/var/lib/zfs-snap";

/// What zfs-snap asks of borg for a create's figures: `--json` added to a
/// create whose caller did not give it (borg then computes the
/// repository's totals, loading each archive's metadata, as `--stats`
/// does); the archive count and the totals after the run come at a
/// session's end ([`record_totals`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InfoPolicy {
    /// `--json` added; no borg process of zfs-snap's own beside a create
    /// (outside a session, no archive count).
    Auto,
    /// As `Auto`, and outside a session one `borg list --json` after each
    /// create for the archive count (before the caller's prune).
    Always,
    /// Nothing: figures only from a caller's own `--json`.
    Never,
}

impl Settings {
    /// Whether a create recorded with these settings gets the `--json`
    /// zfs-snap adds.
    pub fn asks_for_figures(&self) -> bool {
        self.info != InfoPolicy::Never
    }

    /// Whether a session's end asks borg for its repositories' totals.
    pub fn takes_totals_at_session_end(&self) -> bool {
        self.asks_for_figures() && !self.totals_timeout.is_zero()
    }
}

impl std::str::FromStr for InfoPolicy {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(InfoPolicy::Auto),
            "always" => Ok(InfoPolicy::Always),
            "never" => Ok(InfoPolicy::Never),
            other => Err(format!(
                "unknown value {other:?}: use auto, always (a borg list after each create outside a session) or never"
            )),
        }
    }
}

impl InfoPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            InfoPolicy::Auto => "auto",
            InfoPolicy::Always => "always",
            InfoPolicy::Never => "never",
        }
    }
}

/// How long a session's end may spend on the repositories' totals unless
/// told otherwise (all its borg calls together).
pub const DEFAULT_TOTALS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

/// Where and how runs are recorded.
#[derive(Clone, Debug)]
pub struct Settings {
    pub dir: PathBuf,
    pub info: InfoPolicy,
    /// How long a session's end may spend asking borg for each
    /// repository's totals and archive count, after the session's prune
    /// and compact; zero: not asked.
    pub totals_timeout: std::time::Duration,
    /// Also write the exposition here (node_exporter's textfile collector).
    pub textfile: Option<PathBuf>,
}

pub fn now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// A `borg create` that ended: what [`record_create`] needs.
pub struct Create<'a> {
    pub borg: &'a CommandLine,
    pub args: &'a CreateArgs,
    pub cwd: &'a Path,
    pub start: f64,
    pub end: f64,
    pub status: i32,
    /// borg's stdout, when the create had `--json`.
    pub stdout: Option<&'a [u8]>,
    /// Signals reach the `borg info` / `borg list` calls through it; after
    /// one, none is made.
    pub signals: &'a crate::signals::Signals,
}

/// Records a create in its repository's file; on success, with borg's
/// figures (from its `--json` output, or else one `borg info --json`, as
/// `settings.info` allows). A failure leaves the last success as it was.
/// Whether it was recorded.
pub fn record_create(settings: &Settings, create: &Create<'_>) -> bool {
    let Some((given, archive)) = repository_of(create.args) else {
        tracing::debug!("no repository in the create's command line: nothing recorded");
        return false;
    };
    let repository = canonical(&given, create.cwd);
    // Earlier records were keyed by the location as spelled.
    let spelled = absolute_location(&given, create.cwd);
    if spelled != repository {
        if let Err(e) = store::rename_repository(&settings.dir, &spelled, &repository) {
            tracing::warn!("monitoring: {e}");
        }
    }
    let attempt = Attempt {
        start: create.start,
        end: create.end,
        status: create.status,
        archive: archive.clone(),
    };
    let success = made_archive(create.status)
        .then(|| success_of(settings, create, &given, &repository, attempt.clone()));
    let count_at_the_end =
        crate::session::protocol::joined().is_some() && settings.takes_totals_at_session_end();
    let result = store::update_repository(&settings.dir, &repository, |old| {
        let known = old
            .as_ref()
            .and_then(|o| o.last_success.as_ref())
            .and_then(|s| s.archives);
        let state = updated(old, repository.clone(), attempt, success);
        if count_at_the_end {
            keeping_the_count(state, known)
        } else {
            state
        }
    });
    warn_unless_recorded(result)
}

/// Says why a record was not written; whether it was.
fn warn_unless_recorded(result: Result<(), RecordError>) -> bool {
    match result {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!("monitoring: {e}");
            false
        }
    }
}

/// The record of a create that made an archive, with the figures borg
/// printed (its `--json`, the caller's or the one zfs-snap added) and, with
/// `--metrics-info always` outside a session, the archive count of one
/// `borg list`.
fn success_of(
    settings: &Settings,
    create: &Create<'_>,
    given: &str,
    repository: &str,
    attempt: Attempt,
) -> Success {
    let figures = match create.stdout.map(parse_create_json) {
        Some(Ok(figures)) => Some(figures),
        Some(Err(e)) => {
            tracing::warn!(
                repository,
                "borg create --json printed no figures zfs-snap can read: {e}"
            );
            None
        }
        None => {
            tracing::warn!(
                repository,
                "no figures for the new archive: borg was not asked for --json (it had --log-json and --stats, or --metrics-info never)"
            );
            None
        }
    };
    let archives = may_count_archives(settings, create, repository)
        .then(|| {
            borg_calls::count_archives(create.borg, create.args, create.signals, given)
                .map_err(|e| tracing::warn!(repository, "no archive count: {e}"))
                .ok()
        })
        .flatten();
    let from = if figures.is_some() {
        "create --json"
    } else {
        "none"
    };
    let (archive_figures, totals) = figures.unzip();
    Success {
        figures_end: archive_figures.as_ref().map(|_| attempt.end),
        attempt,
        archive_figures,
        totals,
        archives,
        figures_from: from.to_owned(),
        totals_end: None,
    }
}

/// Whether zfs-snap may make its own `borg list` for the archive count
/// right after a create: only when asked (`--metrics-info always`), never
/// after a signal, and never when borg read its passphrase from a pipe
/// (borgmatic's way) that a second borg would find empty. By default no
/// borg process is added to a create: a session takes the count at its
/// end, after the run's prune.
fn may_count_archives(settings: &Settings, create: &Create<'_>, repository: &str) -> bool {
    // In a session that takes totals at its end, the count is taken then,
    // after the session's prune.
    let in_session = crate::session::protocol::joined().is_some();
    let ask = create.signals.received().is_none()
        && !(in_session && settings.takes_totals_at_session_end())
        && settings.info == InfoPolicy::Always;
    if ask && borg_calls::passphrase_through_a_pipe() {
        tracing::warn!(
            repository,
            "borg's passphrase came through BORG_PASSPHRASE_FD (as borgmatic passes it), \
             which only one borg can read: no borg list for the archive count"
        );
        return false;
    }
    ask
}

/// A repository a session's creates wrote to, and how to open it again.
pub struct Written {
    /// Its record's key ([`canonical`]).
    pub repository: String,
    /// Where borg is to find it: the create's location, a relative local
    /// path made absolute.
    pub location: String,
    pub access: borg_calls::Access,
}

/// At the end of a session that began at `session_start`: for each
/// repository written, one `borg info --json` and one `borg list --json`
/// (together within `settings.totals_timeout`, never prompting), recorded
/// as its totals and archive count, after the session's prune and compact.
/// A failure is a warning; a signal stops them.
pub fn record_totals(
    settings: &Settings,
    written: &[Written],
    session_start: f64,
    signals: &crate::signals::Signals,
) {
    // A timeout too far to add is no deadline a run will reach: a year.
    let deadline = std::time::Instant::now()
        .checked_add(settings.totals_timeout)
        .unwrap_or_else(|| std::time::Instant::now() + std::time::Duration::from_secs(365 * 86400));
    let mut recorded = false;
    for w in written {
        if signals.received().is_some() {
            return;
        }
        let taken = match borg_calls::repository_totals(&w.access, &w.location, deadline, signals) {
            Ok((totals, archives)) => TotalsTaken {
                totals,
                archives,
                end: now(),
            },
            Err(e) => {
                tracing::warn!(
                    repository = %w.repository,
                    "no totals at the end of the session (the create's figures stay): {e}"
                );
                continue;
            }
        };
        tracing::info!(
            repository = %w.repository,
            archives = taken.archives,
            unique_csize = taken.totals.unique_csize,
            "repository totals after the session"
        );
        let result = store::update_existing_repository(&settings.dir, &w.repository, |state| {
            with_totals(state, taken, session_start)
        });
        recorded |= warn_unless_recorded(result.map(|_| ()));
    }
    if recorded {
        if let Err(e) = crate::metrics::write_textfile(settings) {
            tracing::warn!("monitoring: {e}");
        }
    }
}

/// A run that stopped before borg ended (an error, the lock held, a
/// signal): counted as failed; the last run's figures stay, so what an
/// earlier run left behind is still shown.
/// Whether it was recorded.
pub fn record_failed_run(settings: &Settings, kind: &str, start: f64, status: i32) -> bool {
    warn_unless_recorded(store::update_run(&settings.dir, |old| {
        failed_run_state(old, kind, start, now(), status)
    }))
}

/// Records zfs-snap's own figures of a run in `run.json`.
/// Whether it was recorded.
pub fn record_run(settings: &Settings, run: &RunRecord<'_>) -> bool {
    warn_unless_recorded(store::update_run(&settings.dir, |old| {
        run_state(old.unwrap_or_default(), run, now())
    }))
}

/// Forgets a repository's record (one retired or renamed); whether there
/// was one.
pub fn forget(settings: &Settings, location: &str, cwd: &Path) -> Result<bool, RecordError> {
    let canonical = store::remove_repository(&settings.dir, &canonical(location, cwd))?;
    let spelled = store::remove_repository(&settings.dir, &absolute_location(location, cwd))?;
    Ok(canonical || spelled)
}
