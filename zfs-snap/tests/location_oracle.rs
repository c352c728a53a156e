//! The `repository` label is borg's canonical location: zfs-snap's
//! spelling of generated locations against borg's own `Location` (the
//! Python that runs each borg of `ZFS_SNAP_DIFF_BORGS`, else `borg` on
//! PATH), the oracle.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use integration::need;
use integration::skip::Need;
use zfs_snap::records::location::canonical;

/// A small deterministic generator (xorshift).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
}

fn location(rng: &mut Rng) -> String {
    let users = ["", "u@", "zh1234@", "a.b-c@"];
    let hosts = ["h", "zh1234.rsync.net", "[::1]", "10.0.0.1", "host-1"];
    let ports = ["", ":22", ":2222"];
    let parts = ["repo", "a", "..", ".", "", "~", "~u", "b:c", "x y"];
    let mut path = String::new();
    for i in 0..1 + rng.below(4) {
        if i > 0 || rng.below(2) == 0 {
            path.push('/');
        }
        if rng.below(6) == 0 {
            path.push('/');
        }
        path.push_str(rng.pick(&parts));
    }
    if rng.below(5) == 0 {
        path.push('/');
    }
    match rng.below(5) {
        0 => format!(
            "ssh://{}{}{}{}",
            rng.pick(&users),
            rng.pick(&hosts),
            rng.pick(&ports),
            if path.starts_with('/') {
                path
            } else {
                format!("/{path}")
            }
        ),
        1 => format!("{}{}:{path}", rng.pick(&users), rng.pick(&hosts)),
        2 => format!("file://{path}"),
        _ => path,
    }
}

/// The Python interpreter of a borg program (its `#!` line).
fn python_of(borg: &Path) -> PathBuf {
    let text = std::fs::read(borg).expect("read the borg program");
    let first = text.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(first);
    let interpreter = line.strip_prefix("#!").expect("borg is a Python script");
    PathBuf::from(interpreter.split_whitespace().next().unwrap())
}

const ORACLE: &str = r#"
import sys
from borg.helpers.parseformat import Location
for line in sys.stdin.read().split("\0")[:-1]:
    try:
        loc = Location(line)
        print("ok", loc.proto, loc.canonical_path(), sep="\t")
    except Exception:
        print("invalid")
"#;

#[test]
fn generated_locations_are_spelled_as_borg_spells_them() {
    let borg = need!(Need::Borg);
    let borgs: Vec<PathBuf> = match std::env::var_os("ZFS_SNAP_DIFF_BORGS") {
        Some(list) => std::env::split_paths(&list).collect(),
        None => vec![borg],
    };
    let cwd = Path::new("/srv/cwd");
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let locations: Vec<String> = (0..400).map(|_| location(&mut rng)).collect();
    for borg in borgs {
        let mut child = Command::new(python_of(&borg))
            .args(["-c", ORACLE])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("run borg's Python");
        let mut input = child.stdin.take().unwrap();
        for l in &locations {
            input.write_all(l.as_bytes()).unwrap();
            input.write_all(b"\0").unwrap();
        }
        drop(input);
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let answers = String::from_utf8(out.stdout).unwrap();
        let answers: Vec<&str> = answers.lines().collect();
        assert_eq!(answers.len(), locations.len());
        let mut compared = 0;
        for (given, answer) in locations.iter().zip(answers) {
            let Some(rest) = answer.strip_prefix("ok\t") else {
                continue;
            };
            let (proto, borgs) = rest.split_once('\t').unwrap();
            // borg keeps a relative local path relative; zfs-snap makes it
            // absolute (a label must not depend on the working directory).
            let want = if proto == "file" && !borgs.starts_with('/') {
                zfs_snap::records::absolute_location(borgs, cwd)
            } else {
                borgs.to_owned()
            };
            assert_eq!(
                canonical(given, cwd),
                want,
                "{given:?} ({})",
                borg.display()
            );
            compared += 1;
        }
        assert!(
            compared > 300,
            "most generated locations are valid: {compared}"
        );
    }
}
