//! Logs on stderr: plain lines for a terminal or a file; for the systemd
//! journal (stderr is the stream `JOURNAL_STREAM` names) each line
//! prefixed with its syslog priority (`<3>` error, `<4>` warning, `<6>`
//! info, `<7>` debug), which journald turns into the entry's priority, with
//! no colour and no timestamp of our own (the journal has one); and when
//! zfs-snap stands in for a borg asked for `--log-json` (borgmatic always
//! asks), borg's own JSON log lines, so the caller files each of ours at
//! its level instead of reading unknown stderr text as an error.

use std::io::IsTerminal;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::fmt::format::{Format, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// How log lines are written.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// Lines for people (and the journal, when stderr is it).
    Text,
    /// borg's `--log-json` lines: `{"type": "log_message", "levelname", ...}`.
    BorgJson,
}

pub fn init(verbosity: i8, style: Style) {
    let level = match verbosity {
        i8::MIN..=-2 => LevelFilter::ERROR,
        -1 => LevelFilter::WARN,
        0 => LevelFilter::INFO,
        1 => LevelFilter::DEBUG,
        _ => LevelFilter::TRACE,
    };
    let json = style == Style::BorgJson;
    let journal = !json && stderr_is_journal();
    let colour = !journal
        && !json
        && std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none();
    let plain = tracing_subscriber::fmt::format()
        .with_ansi(colour)
        .with_target(false)
        .without_time();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(colour)
        .with_max_level(level)
        .event_format(Lines {
            inner: plain,
            journal,
            json,
        })
        .init();
}

/// Whether stderr is the journal stream systemd set up
/// (`JOURNAL_STREAM=<device>:<inode>` of it), not a file it was
/// redirected to by a child of the unit.
fn stderr_is_journal() -> bool {
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;
    let Some(value) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = value.to_str().and_then(|v| v.split_once(':')) else {
        return false;
    };
    let Ok(meta) = std::io::stderr()
        .as_fd()
        .try_clone_to_owned()
        .map(std::fs::File::from)
        .and_then(|f| f.metadata())
    else {
        return false;
    };
    dev.parse::<u64>().is_ok_and(|d| d == meta.dev())
        && ino.parse::<u64>().is_ok_and(|i| i == meta.ino())
}

/// syslog(3) priority of a level.
fn priority(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        Level::DEBUG | Level::TRACE => 7,
    }
}

struct Lines {
    inner: Format<tracing_subscriber::fmt::format::Full, ()>,
    journal: bool,
    json: bool,
}

impl<S, N> FormatEvent<S, N> for Lines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        if self.json {
            let mut text = String::new();
            let bare = self.inner.clone().with_level(false);
            bare.format_event(ctx, Writer::new(&mut text), event)?;
            let level = match *event.metadata().level() {
                Level::ERROR => "ERROR",
                Level::WARN => "WARNING",
                Level::INFO => "INFO",
                Level::DEBUG | Level::TRACE => "DEBUG",
            };
            let time = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64());
            let line = serde_json::json!({
                "type": "log_message",
                "time": time,
                "levelname": level,
                "name": "zfs-snap",
                "message": format!("zfs-snap: {}", text.trim()),
            });
            return writeln!(writer, "{line}");
        }
        if !self.journal {
            return self.inner.format_event(ctx, writer, event);
        }
        // journald reads a priority per line: a message of several lines
        // (a teardown listing what it left) carries it on each.
        let mut text = String::new();
        self.inner
            .format_event(ctx, Writer::new(&mut text), event)?;
        let prefix = format!("<{}>", priority(event.metadata().level()));
        for line in text.lines() {
            writeln!(writer, "{prefix}{line}")?;
        }
        Ok(())
    }
}
