//! The command line, as clap reads it.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "zfs-snap",
    version,
    about = "Consistent borg backups of ZFS hosts: borg reads one atomic snapshot, the archive keeps the original paths, nothing is left behind",
    after_help = "Invoked through a link named `borg`, zfs-snap acts as `zfs-snap wrap -- <real borg> ARGS...`, configured by the ZFS_SNAP_* environment variables."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct Global {
    /// The zfs command; may carry arguments, e.g. "sudo zfs" (borgmatic's zfs.zfsCommand).
    #[arg(
        long,
        global = true,
        env = "ZFS_SNAP_ZFS_COMMAND",
        default_value = "zfs",
        value_name = "COMMAND"
    )]
    pub zfs_command: String,

    /// How snapshots are created and destroyed: `libzetta` (libzfs_core, when built with the
    /// `libzetta` feature), `command` (the zfs command), or `auto` (libzetta if it opens and --zfs-command is
    /// the plain `zfs`).
    #[arg(
        long,
        global = true,
        env = "ZFS_SNAP_BACKEND",
        default_value = "auto",
        value_name = "BACKEND"
    )]
    pub backend: zfs_snap::zfs::Backend,

    /// Mount snapshots with this command (`CMD -t zfs -o ro,... SNAPSHOT DIR`) instead of mount(2) (zfs.mountCommand).
    #[arg(
        long,
        global = true,
        env = "ZFS_SNAP_MOUNT_COMMAND",
        value_name = "COMMAND"
    )]
    pub mount_command: Option<String>,

    /// Unmount with this command (`CMD DIR`) instead of umount2(2) (zfs.umountCommand).
    #[arg(
        long,
        global = true,
        env = "ZFS_SNAP_UMOUNT_COMMAND",
        value_name = "COMMAND"
    )]
    pub umount_command: Option<String>,

    /// Where snapshots are mounted and the lock lives; created 0700, must be owned by the caller.
    #[arg(long, global = true, env = "ZFS_SNAP_RUNTIME_ROOT", default_value = zfs_snap::runtime::DEFAULT_ROOT, value_name = "DIR")]
    pub runtime_root: PathBuf,

    /// If another run holds the lock, wait for it (for SECONDS, or as long as it takes).
    #[arg(long, global = true, env = "ZFS_SNAP_WAIT", num_args = 0..=1, require_equals = true, default_missing_value = "forever", value_name = "SECONDS")]
    pub wait: Option<String>,

    /// More output (-v info+debug, -vv trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count, conflicts_with = "quiet")]
    pub verbose: u8,

    /// Less output (-q warnings and errors, -qq errors only).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub quiet: u8,

    /// Verbosity from -2 (errors only) to 2 (trace), as borgmatic's `verbosity`; -v/-q adjust it.
    #[arg(long, global = true, env = "ZFS_SNAP_VERBOSITY", default_value_t = 0, allow_negative_numbers = true, value_parser = clap::value_parser!(i8).range(-2..=2))]
    pub verbosity: i8,

    /// After `wrap`, write each phase's duration and the number of processes spawned to FILE as JSON.
    #[arg(
        long,
        global = true,
        env = "ZFS_SNAP_TIMINGS_JSON",
        value_name = "FILE"
    )]
    pub timings_json: Option<PathBuf>,

    /// Where each create and run is recorded for monitoring (`zfs-snap metrics`, the exporter);
    /// `none` records nothing.
    #[arg(long, global = true, env = "ZFS_SNAP_STATE_DIR", default_value = zfs_snap::records::DEFAULT_DIR, value_name = "DIR")]
    pub state_dir: String,

    /// What to ask of borg for a recorded create's figures: `auto` (`--json` added to a create
    /// without it: no borg process beside the create; the archive count at a session's end),
    /// `always` (also one `borg list --json` after each create outside a session), or `never`.
    #[arg(
        long,
        global = true,
        env = "ZFS_SNAP_METRICS_INFO",
        default_value = "auto",
        value_name = "WHEN"
    )]
    pub metrics_info: String,

    /// At the end of a session: seconds it may spend on one `borg info --json` and one `borg
    /// list --json` per repository its creates wrote to, for the totals and archive count after
    /// its prune and compact (never prompting; a failure is a warning). 0: not asked, the
    /// totals stay those each create printed.
    #[arg(
        long,
        global = true,
        env = "ZFS_SNAP_METRICS_TOTALS_TIMEOUT",
        default_value = "120",
        value_name = "SECS"
    )]
    pub metrics_totals_timeout: String,

    /// Also write the Prometheus exposition to FILE after each run (node_exporter's textfile
    /// collector; name it `*.prom`), atomically.
    #[arg(
        long,
        global = true,
        env = "ZFS_SNAP_METRICS_TEXTFILE",
        value_name = "FILE"
    )]
    pub metrics_textfile: Option<PathBuf>,

    /// The mount table to read (tests point this at a fake one).
    #[arg(long, global = true, env = "ZFS_SNAP_MOUNTINFO", default_value = zfs_snap::mountinfo::DEFAULT_PATH, hide = true)]
    pub mountinfo: PathBuf,
}

impl Global {
    /// Where runs are recorded; `None` with `--state-dir none` (or empty).
    pub fn state(&self) -> Option<zfs_snap::records::Settings> {
        if self.state_dir.is_empty() || self.state_dir == "none" {
            return None;
        }
        // A bad value must not stop a backup: say so and go on.
        let info = self.metrics_info.parse().unwrap_or_else(|e| {
            tracing::warn!("--metrics-info / ZFS_SNAP_METRICS_INFO: {e}; using auto");
            zfs_snap::records::InfoPolicy::Auto
        });
        // A relative textfile is the caller's: fixed to its directory now.
        let textfile = self.metrics_textfile.as_ref().map(|t| {
            std::env::current_dir()
                .map(|cwd| cwd.join(t))
                .unwrap_or_else(|_| t.clone())
        });
        let totals_timeout = self
            .metrics_totals_timeout
            .trim()
            .parse::<u64>()
            .map(Duration::from_secs)
            .unwrap_or_else(|e| {
                tracing::warn!(
                    "--metrics-totals-timeout / ZFS_SNAP_METRICS_TOTALS_TIMEOUT {:?}: {e} (whole \
                     seconds, 0 for none); using {}",
                    self.metrics_totals_timeout,
                    zfs_snap::records::DEFAULT_TOTALS_TIMEOUT.as_secs()
                );
                zfs_snap::records::DEFAULT_TOTALS_TIMEOUT
            });
        Some(zfs_snap::records::Settings {
            dir: PathBuf::from(&self.state_dir),
            info,
            totals_timeout,
            textfile,
        })
    }

    pub fn verbosity(&self) -> i8 {
        (self.verbosity + self.verbose as i8 - self.quiet as i8).clamp(-2, 2)
    }

    /// `None`: fail at once; `Some(MAX)`: wait as long as it takes.
    pub fn wait(&self) -> Option<Duration> {
        let text = self.wait.as_deref()?;
        if text == "forever" || text.is_empty() {
            return Some(Duration::MAX);
        }
        match text.parse::<f64>() {
            Ok(secs) if secs >= 0.0 => Some(Duration::from_secs_f64(secs)),
            _ => Some(Duration::MAX),
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run borg around snapshots: `zfs-snap wrap -- borg create [OPTIONS] ARCHIVE PATH...`.
    /// Only `create` is rewritten; every other borg command passes through untouched.
    Wrap {
        /// The real borg, when the command after `--` is zfs-snap's own `borg` link.
        #[arg(long, env = "ZFS_SNAP_BORG", value_name = "PATH")]
        borg: Option<String>,
        /// The borg command line: the borg program, then its arguments.
        #[arg(last = true, required = true, value_name = "BORG COMMAND")]
        command: Vec<OsString>,
    },
    /// Run a whole command (`borgmatic create`, a script) on one snapshot set: every `borg create`
    /// it starts through zfs-snap's `borg` link or `zfs-snap wrap` reads the same snapshots, taken
    /// at the first create that needs them; teardown happens once, when the command ends.
    Session {
        /// After the command ended or a signal came, how long to wait for what it left running
        /// (its creates, hooks, any process it started) before teardown. Under systemd keep it
        /// below the unit's TimeoutStopSec=, which must leave time for teardown.
        #[arg(long, env = "ZFS_SNAP_STOP_TIMEOUT", value_name = "SECS", default_value_t = zfs_snap::session::server::DEFAULT_STOP_TIMEOUT.as_secs())]
        stop_timeout: u64,
        /// The command and its arguments, e.g. `borgmatic create --verbosity 1`.
        #[arg(last = true, required = true, value_name = "COMMAND")]
        command: Vec<OsString>,
    },
    /// Show what would be snapshotted, where it would be mounted and how each path maps; changes nothing.
    Plan {
        /// Print JSON (documented in docs/plan-json.md).
        #[arg(long)]
        json: bool,
        /// Plan as for `borg create --one-file-system`.
        #[arg(short = 'x', long)]
        one_file_system: bool,
        /// Source paths, as given to borg.
        #[arg(value_name = "PATH")]
        paths: Vec<PathBuf>,
    },
    /// Tag datasets for backup (sets org.torsion.borgmatic:backup=auto, inherited by children).
    Tag {
        #[arg(required = true, value_name = "DATASET")]
        datasets: Vec<String>,
    },
    /// Remove the local tag from datasets (zfs inherit); an inherited tag still applies.
    Untag {
        #[arg(required = true, value_name = "DATASET")]
        datasets: Vec<String>,
    },
    /// List tagged datasets with the tag's value and where it comes from.
    Tags {
        #[arg(long)]
        json: bool,
    },
    /// Print the Prometheus exposition of what runs recorded in the state directory.
    Metrics {
        /// Instead, forget a repository's record (one retired or renamed), as the create named it.
        #[arg(long, value_name = "REPOSITORY")]
        forget: Option<String>,
    },
    /// Serve the exposition at http://ADDR/metrics (and nothing else), read from the state
    /// directory on every scrape; never runs borg or zfs. Stops cleanly on SIGTERM.
    Exporter {
        /// Address and port to listen on; loopback unless you mean otherwise.
        #[arg(
            long,
            env = "ZFS_SNAP_EXPORTER_LISTEN",
            default_value = "127.0.0.1:9996",
            value_name = "ADDR:PORT"
        )]
        listen: String,
    },
    /// Remove what dead runs of this runtime root left behind: mounts of our snapshots in the mirror, our snapshots (ownership property set locally), our files. Anything else is left alone, with a warning.
    Cleanup {
        /// Only say what would be removed.
        #[arg(long, short = 'n')]
        dry_run: bool,
    },
}

impl Cli {
    /// Through a link named `borg`: every argument belongs to borg, and the
    /// configuration comes from the environment.
    pub fn as_borg_link(borg_args: Vec<OsString>) -> Cli {
        let mut argv: Vec<OsString> = vec!["zfs-snap".into(), "wrap".into(), "--".into()];
        let me = std::env::current_exe()
            .map(OsString::from)
            .unwrap_or_else(|_| "borg".into());
        argv.push(me);
        argv.extend(borg_args);
        Cli::parse_from(argv)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn verbosity_combines_level_and_flags() {
        let cli = Cli::parse_from(["zfs-snap", "-vv", "tags"]);
        assert_eq!(cli.global.verbosity(), 2);
        let cli = Cli::parse_from(["zfs-snap", "--verbosity", "-1", "-q", "tags"]);
        assert_eq!(cli.global.verbosity(), -2);
    }

    #[test]
    fn wait_forms() {
        let cli = Cli::parse_from(["zfs-snap", "--wait", "tags"]);
        assert_eq!(cli.global.wait(), Some(Duration::MAX));
        let cli = Cli::parse_from(["zfs-snap", "--wait=2.5", "tags"]);
        assert_eq!(cli.global.wait(), Some(Duration::from_millis(2500)));
        let cli = Cli::parse_from(["zfs-snap", "tags"]);
        assert_eq!(cli.global.wait(), None);
    }

    #[test]
    fn wrap_takes_everything_after_double_dash() {
        let cli = Cli::parse_from([
            "zfs-snap", "wrap", "--", "borg", "create", "-e", "x", "::a", "/p",
        ]);
        match cli.command {
            Command::Wrap { command, .. } => assert_eq!(command.len(), 6),
            other => panic!("{other:?}"),
        }
    }
}
