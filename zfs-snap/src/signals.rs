//! Signals during a run. SIGINT, SIGTERM and SIGHUP are blocked in every
//! thread and taken by one thread with sigwaitinfo(2): before borg starts
//! they stop the run (teardown still happens); while borg runs they are
//! passed on to borg (a second SIGINT as SIGTERM), and teardown happens
//! when borg exits.

use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;

use nix::sys::signal::{kill, SigSet, SigmaskHow, Signal};
use nix::unistd::Pid;

const HANDLED: [Signal; 3] = [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP];

#[derive(Debug, Default)]
struct Shared {
    /// The last signal received, 0 for none.
    received: AtomicI32,
    /// The pid to pass signals to, 0 while there is none.
    child: AtomicI32,
}

/// Owns the signal thread. Create it first thing in `main`, before any
/// other thread exists, so every thread inherits the blocked mask.
#[derive(Clone, Debug)]
pub struct Signals {
    shared: Arc<Shared>,
}

impl Signals {
    pub fn install() -> std::io::Result<Signals> {
        let mut set = SigSet::empty();
        for signal in HANDLED {
            set.add(signal);
        }
        nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), None)?;
        let shared = Arc::new(Shared::default());
        let thread_shared = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                let mut interrupts = 0;
                loop {
                    let Some((signal, from_terminal, sender)) = wait_for(&set) else {
                        continue;
                    };
                    thread_shared
                        .received
                        .store(signal as i32, Ordering::SeqCst);
                    let child = thread_shared.child.load(Ordering::SeqCst);
                    if signal == Signal::SIGINT {
                        interrupts += 1;
                    }
                    // borg takes SIGINT as "stop after the current file", which
                    // never comes if that file blocks; a second one insists.
                    let (signal, already_delivered) = if signal == Signal::SIGINT && interrupts > 1
                    {
                        (Signal::SIGTERM, false)
                    } else {
                        // The terminal already delivered ^C to borg (same process group).
                        (signal, from_terminal && signal == Signal::SIGINT)
                    };
                    // A child that signals its own process group (borgmatic
                    // passes signals on that way, and zfs-snap is in it)
                    // has the signal already: sending it back would loop.
                    let from_child = child > 0 && sender == child;
                    if child > 0 && !already_delivered && !from_child {
                        tracing::info!(signal = %signal, pid = child, "passing the signal on to the child");
                        let _ = kill(Pid::from_raw(child), signal);
                    } else if child == 0 {
                        tracing::warn!(signal = %signal, "signal received: stopping after cleanup");
                    }
                }
            })?;
        Ok(Signals { shared })
    }

    /// The signal that asked us to stop, if one did.
    pub fn received(&self) -> Option<i32> {
        match self.shared.received.load(Ordering::SeqCst) {
            0 => None,
            n => Some(n),
        }
    }

    pub(crate) fn set_child(&self, pid: Option<u32>) {
        let raw = pid.map_or(0, |p| p as i32);
        self.shared.child.store(raw, Ordering::SeqCst);
    }
}

/// Waits for one of `set`; returns it, whether the kernel sent it on a
/// terminal's behalf (rather than a process calling kill(2)), and the
/// sending process (0 for the kernel).
fn wait_for(set: &SigSet) -> Option<(Signal, bool, i32)> {
    let mut info = std::mem::MaybeUninit::<libc::siginfo_t>::uninit();
    // SAFETY: `set` is a valid sigset and `info` a writable siginfo_t.
    let n = unsafe { libc::sigwaitinfo(set.as_ref(), info.as_mut_ptr()) };
    if n < 0 {
        return None;
    }
    // SAFETY: sigwaitinfo succeeded, so it filled `info`.
    let info = unsafe { info.assume_init() };
    let signal = Signal::try_from(n).ok()?;
    let from_kernel = info.si_code == libc::SI_KERNEL;
    // SAFETY: for signals sent by kill(2) and by the kernel alike, si_pid
    // is set (0 when the kernel sent it).
    let sender = if from_kernel {
        0
    } else {
        unsafe { info.si_pid() }
    };
    Some((signal, from_kernel, sender))
}
