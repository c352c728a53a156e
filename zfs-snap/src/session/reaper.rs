//! The session as its command's reaper: every process the command starts
//! stays the session's descendant even when its parent dies first
//! (`PR_SET_CHILD_SUBREAPER`), so the session can wait for the whole tree
//! (borgmatic after `systemd-inhibit` ended, a hook finishing its `TERM`
//! trap, a borg still writing its checkpoint) before it tears down.

use std::collections::BTreeSet;

use nix::errno::Errno;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

/// Makes this process the reaper of the orphans among its descendants.
pub fn become_subreaper() -> std::io::Result<()> {
    nix::sys::prctl::set_child_subreaper(true).map_err(std::io::Error::from)
}

/// Reaps every child that has ended, whatever its pid. Call it only once
/// the children whose status matters have been waited for: their status
/// would be taken here. Returns whether any child is left.
pub fn reap_ended() -> bool {
    loop {
        match waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => return true,
            Ok(status) => tracing::debug!(?status, "a process left by the session's command ended"),
            Err(Errno::EINTR) => {}
            Err(Errno::ECHILD) => return false,
            Err(e) => {
                tracing::warn!(error = %e, "waitpid failed; not waiting for the command's processes");
                return false;
            }
        }
    }
}

/// The pids of this process's children, for messages.
pub fn children() -> BTreeSet<u32> {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return BTreeSet::new();
    };
    tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("children")).ok())
        .flat_map(|list| {
            list.split_whitespace()
                .filter_map(|pid| pid.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

/// `pid (command)` of each of `pids`, for messages.
pub fn describe(pids: &BTreeSet<u32>) -> String {
    pids.iter()
        .map(|pid| {
            let name = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            format!("{pid} ({})", name.trim())
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;
    use std::time::{Duration, Instant};

    /// An orphan (a grandchild whose parent ended at once) comes back to
    /// the subreaper, is listed among its children, and is reaped when it
    /// ends. Runs in a child process of its own: being a subreaper and
    /// reaping any pid would disturb the other tests of this process.
    #[test]
    fn an_orphan_is_ours_to_wait_for() {
        if std::env::var_os("ZFS_SNAP_REAPER_CHILD").is_none() {
            let me = std::env::current_exe().unwrap();
            let out = Command::new(me)
                .args([
                    "--exact",
                    "session::reaper::tests::an_orphan_is_ours_to_wait_for",
                ])
                .args(["--test-threads=1", "--nocapture"])
                .env("ZFS_SNAP_REAPER_CHILD", "1")
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "{text}");
            assert!(
                text.contains("1 passed"),
                "the test ran in the child: {text}"
            );
            return;
        }
        become_subreaper().unwrap();
        let status = Command::new("sh")
            .args(["-c", "sleep 1 & echo $!"])
            .output()
            .unwrap();
        assert!(status.status.success());
        let orphan: u32 = String::from_utf8_lossy(&status.stdout)
            .trim()
            .parse()
            .unwrap();
        assert!(children().contains(&orphan), "{:?}", children());
        assert!(describe(&[orphan].into()).contains("sleep"));
        let deadline = Instant::now() + Duration::from_secs(20);
        while reap_ended() {
            assert!(Instant::now() < deadline, "the orphan never ended");
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(!children().contains(&orphan));
    }
}
