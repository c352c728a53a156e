//! borg's `--stats` text, made from what `create --json` printed: zfs-snap
//! adds `--json` to a create so that the create itself reports its figures
//! (no second borg call), and a caller that asked for `--stats` still gets
//! borg's text, line for line as borg 1.4 logs it (`archive.py`
//! `Archive.__str__`, `cache.py` `Cache.str_format`, `archiver.py`
//! `STATS_HEADER`, `helpers/parseformat.py` `sizeof_fmt`,
//! `helpers/time.py` `format_timedelta`).

use serde_json::Value;

const DASHES: &str =
    "------------------------------------------------------------------------------";
const STATS_HEADER: &str =
    "                       Original size      Compressed size    Deduplicated size";

/// The `--stats` lines of a `borg create --json` document; `None` when it
/// lacks a figure the text shows.
pub fn text(json: &[u8], iec: bool) -> Option<String> {
    let v: Value = serde_json::from_slice(json).ok()?;
    let a = &v["archive"];
    let c = &v["cache"]["stats"];
    let size = |v: &Value| v.as_u64().map(|n| file_size(n, iec));
    let this = [
        size(&a["stats"]["original_size"])?,
        size(&a["stats"]["compressed_size"])?,
        size(&a["stats"]["deduplicated_size"])?,
    ];
    let all = [
        size(&c["total_size"])?,
        size(&c["total_csize"])?,
        size(&c["unique_csize"])?,
    ];
    let lines = [
        DASHES.to_owned(),
        format!("Repository: {}", v["repository"]["location"].as_str()?),
        format!("Archive name: {}", a["name"].as_str()?),
        format!("Archive fingerprint: {}", a["id"].as_str()?),
        format!("Time (start): {}", time(a["start"].as_str()?)?),
        format!("Time (end):   {}", time(a["end"].as_str()?)?),
        format!("Duration: {}", duration(a["duration"].as_f64()?)),
        format!("Number of files: {}", a["stats"]["nfiles"].as_u64()?),
        format!(
            "Utilization of max. archive size: {:.0}%",
            a["limits"]["max_archive_size"].as_f64()? * 100.0
        ),
        DASHES.to_owned(),
        STATS_HEADER.to_owned(),
        format!(
            "{:15} {:>20} {:>20} {:>20}",
            "This archive:", this[0], this[1], this[2]
        ),
        format!(
            "{:15} {:>20} {:>20} {:>20}",
            "All archives:", all[0], all[1], all[2]
        ),
        String::new(),
        "                       Unique chunks         Total chunks".to_owned(),
        format!(
            "Chunk index:    {:20} {:20}",
            c["total_unique_chunks"].as_u64()?,
            c["total_chunks"].as_u64()?
        ),
        DASHES.to_owned(),
    ];
    Some(lines.join("\n") + "\n")
}

/// borg's `format_file_size`: decimal units (`kB`, `MB`, ...) or, with
/// `--iec`, binary ones (`KiB`, ...), two decimals once scaled.
fn file_size(n: u64, iec: bool) -> String {
    let (units, power): (&[&str], f64) = if iec {
        (
            &["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei", "Zi", "Yi"],
            1024.0,
        )
    } else {
        (&["", "k", "M", "G", "T", "P", "E", "Z", "Y"], 1000.0)
    };
    let mut num = n as f64;
    let mut precision = 0;
    let mut unit = units[units.len() - 1];
    for u in &units[..units.len() - 1] {
        if ((num * 100.0).round() / 100.0).abs() < power {
            unit = u;
            break;
        }
        num /= power;
        precision = 2;
    }
    format!("{num:.precision$} {unit}B")
}

/// `Thu, 2026-12-03 14:00:01` from borg's ISO time (local, as the text
/// shows it too).
fn time(iso: &str) -> Option<String> {
    let (date, clock) = iso.split_once('T')?;
    let mut parts = date.split('-').map(|p| p.parse::<i64>());
    let (y, m, d) = (
        parts.next()?.ok()?,
        parts.next()?.ok()?,
        parts.next()?.ok()?,
    );
    let clock = clock.get(..8)?;
    const DAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
    // Sakamoto's day of the week.
    const T: [i64; 12] = [0, 3, 2, 5, 0, 3, 5, 1, 4, 6, 2, 4];
    let yy = if m < 3 { y - 1 } else { y };
    let dow = (yy + yy / 4 - yy / 100 + yy / 400 + T[usize::try_from(m - 1).ok()?] + d) % 7;
    Some(format!(
        "{}, {date} {clock}",
        DAYS[usize::try_from(dow).ok()?]
    ))
}

/// borg's `format_timedelta`.
fn duration(total: f64) -> String {
    let s = total % 60.0;
    let m = (total / 60.0) as u64 % 60;
    let h = (total / 3600.0) as u64 % 24;
    let days = (total / 86400.0).floor() as u64;
    let mut text = format!("{s:.2} seconds");
    if m > 0 {
        text = format!("{m} minutes {text}");
    }
    if h > 0 {
        text = format!("{h} hours {text}");
    }
    if days > 0 {
        text = format!("{days} days {text}");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_as_borg_formats_them() {
        assert_eq!(file_size(0, false), "0 B");
        assert_eq!(file_size(580, false), "580 B");
        assert_eq!(file_size(999, false), "999 B");
        assert_eq!(file_size(1000, false), "1.00 kB");
        assert_eq!(file_size(1234, false), "1.23 kB");
        assert_eq!(file_size(999_996, false), "1.00 MB");
        assert_eq!(file_size(1024, true), "1.00 KiB");
        assert_eq!(file_size(5 << 30, true), "5.00 GiB");
    }

    #[test]
    fn times_and_durations_as_borg_formats_them() {
        assert_eq!(
            time("2026-12-03T14:00:01.123456").as_deref(),
            Some("Thu, 2026-12-03 14:00:01")
        );
        assert_eq!(
            time("2024-02-29T00:00:00.000000").as_deref(),
            Some("Thu, 2024-02-29 00:00:00")
        );
        assert_eq!(duration(0.52), "0.52 seconds");
        assert_eq!(duration(62.5), "1 minutes 2.50 seconds");
        assert_eq!(duration(3600.0), "1 hours 0.00 seconds");
        assert_eq!(duration(90061.0), "1 days 1 hours 1 minutes 1.00 seconds");
    }
}
