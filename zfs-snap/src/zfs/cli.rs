//! [`Zfs`] over the `zfs` command (or whatever the user configured), and
//! the parsers for what that command prints.

use std::ffi::OsString;

use crate::command::{args, CommandLine};
use crate::error::{Error, Result};
use crate::zfs::api::{
    Filesystem, Owner, Search, Snapshot, TagInfo, Zfs, HOLD_TAG, OWNER_PROPERTY, SNAPSHOT_PREFIX,
    TAG_PROPERTY, TAG_VALUE,
};

/// [`Zfs`] over the `zfs` command (or whatever the user configured).
pub struct ZfsCommand {
    command: CommandLine,
}

const FILESYSTEM_COLUMNS: usize = 7;
/// Names per `zfs get` call, far below any argument-length limit.
const NAMES_PER_CALL: usize = 512;

impl ZfsCommand {
    pub fn new(command: CommandLine) -> Self {
        Self { command }
    }

    fn run(&self, args: Vec<OsString>) -> Result<String> {
        let output = self.command.run(&args)?;
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    fn filesystems_args() -> Vec<OsString> {
        args([
            "list",
            "-H",
            "-p",
            "-t",
            "filesystem",
            "-o",
            &filesystem_columns(),
        ])
    }

    /// `zfs list -j` (OpenZFS >= 2.3) of `names`, or of every filesystem:
    /// values JSON-escaped, so a tab or line break in a mountpoint or a
    /// user property is part of that value and nothing else. In a UTF-8
    /// locale, so that zfs can print any valid UTF-8 value.
    fn json_list(&self, names: &[String]) -> Result<std::process::Output> {
        let mut argv = args(["list", "-j", "-p", "-t", "filesystem", "-o"]);
        argv.push(filesystem_columns().into());
        argv.extend(names.iter().map(OsString::from));
        self.command
            .clone()
            .with_env("LC_ALL", "C.UTF-8")
            .output(&argv)
    }

    /// Every filesystem from the JSON listing; see [`Zfs::filesystems`].
    fn filesystems_json(&self) -> Result<Option<Vec<Filesystem>>> {
        let output = self.json_list(&[])?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        if !output.status.success() && stderr.contains("invalid option 'j'") {
            return Ok(None);
        }
        if !output.status.success() {
            let mut argv = args(["list", "-j", "-p", "-t", "filesystem", "-o"]);
            argv.push(filesystem_columns().into());
            return Err(self.command.failure(&argv, &output));
        }
        if let Ok(listing) = parse_filesystems_json(&output.stdout) {
            return Ok(Some(listing.readable()));
        }
        // zfs stops printing at a value it cannot encode (not valid in the
        // locale), leaving JSON that does not parse. Find that dataset:
        // names alone are exact (they hold no tab or line break), then
        // halves of them are asked again until each bad one is alone.
        let argv = args(["list", "-H", "-t", "filesystem", "-o", "name"]);
        let stdout = self.run(argv.clone())?;
        let names = parse_names(&self.command.display_with(&argv), &stdout)?;
        let mut found = Vec::new();
        self.bisect(&names, &mut found)?;
        Ok(Some(found))
    }

    fn bisect(&self, names: &[String], found: &mut Vec<Filesystem>) -> Result<()> {
        if names.is_empty() {
            return Ok(());
        }
        let output = self.json_list(names)?;
        let parsed = output
            .status
            .success()
            .then(|| parse_filesystems_json(&output.stdout).ok())
            .flatten();
        match (parsed, names) {
            (Some(listing), _) => found.extend(listing.readable()),
            (None, [name]) if only_missing(&output) => {
                tracing::debug!(dataset = %name, "destroyed while listing");
            }
            (None, [name]) => tracing::warn!(
                dataset = %name,
                "zfs cannot print this dataset's mountpoint or {TAG_PROPERTY} \
                 (a value that is not valid UTF-8?): it is left out of discovery; \
                 paths on it are read live"
            ),
            (None, _) => {
                let (a, b) = names.split_at(names.len() / 2);
                self.bisect(a, found)?;
                self.bisect(b, found)?;
            }
        }
        Ok(())
    }

    /// Maps zfs's "dataset does not exist" to an error naming the dataset.
    fn on_datasets(&self, verb: &str, extra: &[&str], datasets: &[String]) -> Result<()> {
        let mut argv = args(std::iter::once(verb).chain(extra.iter().copied()));
        argv.extend(datasets.iter().map(OsString::from));
        let output = self.command.output(&argv)?;
        if output.status.success() {
            return Ok(());
        }
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        if let Some(missing) = datasets
            .iter()
            .find(|d| stderr.contains(&format!("'{d}'")) && stderr.contains("does not exist"))
        {
            return Err(Error::DatasetNotFound {
                dataset: missing.clone(),
                stderr,
            });
        }
        Err(self.command.failure(&argv, &output))
    }
}

impl Zfs for ZfsCommand {
    fn filesystems(&self) -> Result<Vec<Filesystem>> {
        if let Some(found) = self.filesystems_json()? {
            return Ok(found);
        }
        // OpenZFS before 2.3 has no JSON: tab-separated values, where a
        // tab or line break inside a value cannot be told from a separator.
        tracing::debug!("zfs list has no -j (OpenZFS < 2.3): reading tab-separated output");
        let argv = Self::filesystems_args();
        let stdout = self.run(argv.clone())?;
        parse_filesystems(&self.command.display_with(&argv), &stdout)
    }

    fn our_snapshots(&self, search: Search) -> Result<Vec<Snapshot>> {
        if search == Search::Everywhere {
            // `zfs get` (not `list`) because only it says where a value comes from.
            let argv = args([
                "get",
                "-H",
                "-p",
                "-t",
                "snapshot",
                "-s",
                "local",
                "-o",
                "name,value,source",
                OWNER_PROPERTY,
            ]);
            let stdout = self.run(argv.clone())?;
            // Values are printed raw and may hold line breaks that forge
            // lines for other snapshots: what this listing claims is only a
            // candidate, asked again by exact name.
            let claimed: Vec<String> = stdout
                .lines()
                .filter_map(|l| l.split('\t').next())
                .filter(|n| n.contains('@'))
                .map(str::to_owned)
                .collect();
            return self.owners(&claimed);
        }
        // Names only: zfs then reads no properties of the (many) snapshots
        // of other tools, about 4x faster than asking for ours with them.
        let stdout = self.run(args(["list", "-H", "-t", "snapshot", "-o", "name"]))?;
        let candidates: Vec<String> = stdout
            .lines()
            .filter(|name| {
                name.split_once('@')
                    .is_some_and(|(_, snap)| snap.starts_with(SNAPSHOT_PREFIX))
            })
            .map(str::to_owned)
            .collect();
        self.owners(&candidates)
    }

    fn owners(&self, names: &[String]) -> Result<Vec<Snapshot>> {
        let mut snapshots = Vec::with_capacity(names.len());
        for chunk in names.chunks(NAMES_PER_CALL) {
            let mut argv = args(["get", "-H", "-p", "-o", "name,value,source", OWNER_PROPERTY]);
            argv.extend(chunk.iter().map(OsString::from));
            let output = self.command.output(&argv)?;
            // A name destroyed since the caller learnt it (another runtime
            // root's run tearing down) is reported and skipped. Only that:
            // a zfs killed or crashed must not read as "none of ours".
            if !output.status.success() && !only_missing(&output) {
                return Err(self.command.failure(&argv, &output));
            }
            let stdout = String::from_utf8_lossy(&output.stdout);
            snapshots.extend(parse_owners(chunk, &stdout));
        }
        Ok(snapshots)
    }

    fn snapshot(&self, names: &[String], owner: &Owner) -> Result<()> {
        let mut argv = args(["snapshot", "-o"]);
        argv.push(format!("{OWNER_PROPERTY}={}", owner.value()).into());
        argv.extend(names.iter().map(OsString::from));
        self.run(argv).map(drop)
    }

    fn hold_run(&self, pool: &str, snapshot_name: &str, _: &[String]) -> Result<()> {
        // With explicit names zfs makes one ioctl (and one txg sync) per
        // snapshot; `-r` on the pool gathers them into one. The name is
        // unique to the run, so these are exactly its snapshots.
        let all = format!("{pool}@{snapshot_name}");
        self.run(args(["hold", "-r", HOLD_TAG, &all])).map(drop)
    }

    fn release_run(&self, pool: &str, snapshot_name: &str, _: &[String]) -> Result<()> {
        let all = format!("{pool}@{snapshot_name}");
        self.run(args(["release", "-r", HOLD_TAG, &all])).map(drop)
    }

    fn release(&self, snapshots: &[String]) -> Result<()> {
        let mut argv = args(["release", HOLD_TAG]);
        argv.extend(snapshots.iter().map(OsString::from));
        self.run(argv).map(drop)
    }

    fn holds(&self, snapshots: &[String]) -> Result<Vec<(String, String)>> {
        let mut argv = args(["holds", "-H"]);
        argv.extend(snapshots.iter().map(OsString::from));
        let stdout = self.run(argv.clone())?;
        parse_holds(&self.command.display_with(&argv), &stdout)
    }

    fn destroy_run(&self, pool: &str, snapshot_name: &str, _: &[String]) -> Result<()> {
        // `-r` on the pool takes every snapshot of that name below it in one
        // call; the name is unique to the run, so these are exactly its own.
        self.run(args(["destroy", "-r", &format!("{pool}@{snapshot_name}")]))
            .map(drop)
    }

    fn destroy(&self, snapshot: &str, defer: bool) -> Result<()> {
        let mut argv = args(["destroy"]);
        if defer {
            argv.push("-d".into());
        }
        argv.push(snapshot.into());
        self.run(argv).map(drop)
    }

    fn backend(&self) -> &'static str {
        "command"
    }

    fn set_tag(&self, datasets: &[String]) -> Result<()> {
        self.on_datasets("set", &[&format!("{TAG_PROPERTY}={TAG_VALUE}")], datasets)
    }

    fn clear_tag(&self, datasets: &[String]) -> Result<()> {
        self.on_datasets("inherit", &[TAG_PROPERTY], datasets)
    }

    fn tags(&self) -> Result<Vec<TagInfo>> {
        let argv = args([
            "get",
            "-H",
            "-p",
            "-t",
            "filesystem",
            "-o",
            "name,value,source",
            TAG_PROPERTY,
        ]);
        let stdout = self.run(argv.clone())?;
        parse_tags(&self.command.display_with(&argv), &stdout)
    }
}

/// True when zfs exited 1 and every line it printed on stderr says a
/// dataset does not exist (what `zfs get` does for each missing name,
/// after printing the others).
fn only_missing(output: &std::process::Output) -> bool {
    let stderr = String::from_utf8_lossy(&output.stderr);
    let mut lines = stderr.lines().filter(|l| !l.trim().is_empty()).peekable();
    output.status.code() == Some(1)
        && lines.peek().is_some()
        && lines.all(|l| l.contains("dataset does not exist"))
}

fn malformed(command: &str, line: &str, reason: impl Into<String>) -> Error {
    Error::MalformedOutput {
        command: command.to_owned(),
        line: line.to_owned(),
        reason: reason.into(),
    }
}

fn filesystem_columns() -> String {
    format!("name,mountpoint,canmount,mounted,keystatus,{TAG_PROPERTY},guid")
}

/// What `zfs list -j` said: the filesystems it could read, and the names
/// of those it could not (each named in a warning).
#[derive(Debug, Default)]
pub struct Listing {
    pub filesystems: Vec<Filesystem>,
    pub unreadable: Vec<(String, String)>,
}

impl Listing {
    fn readable(self) -> Vec<Filesystem> {
        for (name, reason) in &self.unreadable {
            tracing::warn!(
                dataset = %name,
                "cannot read what zfs says of this dataset ({reason}): it is left out of discovery; \
                 paths on it are read live"
            );
        }
        self.filesystems
    }
}

/// Parses `zfs list -j -p -t filesystem -o <filesystem columns>` (OpenZFS
/// 2.3: `{"output_version": .., "datasets": {NAME: {"name": NAME, "type":
/// "FILESYSTEM", .., "properties": {PROP: {"value": "..", "source": ..}}}}}`).
/// JSON that does not parse is an error; a dataset whose values make no
/// sense is left out and named, never failing the others.
pub fn parse_filesystems_json(stdout: &[u8]) -> std::result::Result<Listing, serde_json::Error> {
    #[derive(serde::Deserialize)]
    struct Out {
        datasets: std::collections::BTreeMap<String, serde_json::Value>,
    }
    let out: Out = serde_json::from_slice(stdout)?;
    let mut listing = Listing::default();
    for (key, item) in out.datasets {
        match filesystem_from_json(&key, &item) {
            Ok(fs) => listing.filesystems.push(fs),
            Err(reason) => listing.unreadable.push((key, reason)),
        }
    }
    Ok(listing)
}

fn filesystem_from_json(
    key: &str,
    item: &serde_json::Value,
) -> std::result::Result<Filesystem, String> {
    if item["name"].as_str() != Some(key) || !is_filesystem_name(key) {
        return Err("not a filesystem name".into());
    }
    let value = |prop: &str| {
        item["properties"][prop]["value"]
            .as_str()
            .ok_or_else(|| format!("no value of {prop}"))
    };
    let mounted = match value("mounted")? {
        "yes" => true,
        "no" | "-" => false,
        other => return Err(format!("`mounted` is {other:?}, expected yes or no")),
    };
    Ok(Filesystem {
        name: key.to_owned(),
        mountpoint: value("mountpoint")?.to_owned(),
        canmount: value("canmount")?.to_owned(),
        mounted,
        keystatus: optional(value("keystatus")?),
        tag: optional(value(TAG_PROPERTY)?),
        guid: value("guid")?.to_owned(),
    })
}

/// A ZFS filesystem name: never empty, no snapshot or bookmark part, no
/// tab or line break (ZFS allows neither in names).
fn is_filesystem_name(name: &str) -> bool {
    !name.is_empty() && !name.contains(['@', '#', '\t', '\n', '\r'])
}

/// Parses `zfs list -H -o name`: names hold no tab or line break, so each
/// line is exactly one.
fn parse_names(command: &str, stdout: &str) -> Result<Vec<String>> {
    stdout
        .lines()
        .filter(|l| !l.is_empty())
        .map(|line| {
            if is_filesystem_name(line) {
                Ok(line.to_owned())
            } else {
                Err(malformed(command, line, "not a filesystem name"))
            }
        })
        .collect()
}

fn optional(value: &str) -> Option<String> {
    (value != "-" && !value.is_empty()).then(|| value.to_owned())
}

/// Parses `zfs list -H -p -t filesystem -o name,mountpoint,canmount,mounted,keystatus,<tag>,guid`.
pub fn parse_filesystems(command: &str, stdout: &str) -> Result<Vec<Filesystem>> {
    let mut filesystems = Vec::new();
    for line in stdout.lines().filter(|l| !l.is_empty()) {
        let fields: Vec<&str> = line.split('\t').collect();
        if fields.len() != FILESYSTEM_COLUMNS {
            return Err(malformed(
                command,
                line,
                format!(
                    "expected {FILESYSTEM_COLUMNS} tab-separated columns, found {}",
                    fields.len()
                ),
            ));
        }
        let name = fields[0];
        if name.is_empty() || name.contains('@') {
            return Err(malformed(command, line, "not a filesystem name"));
        }
        let mounted = match fields[3] {
            "yes" => true,
            "no" | "-" => false,
            other => {
                return Err(malformed(
                    command,
                    line,
                    format!("`mounted` is {other:?}, expected yes or no"),
                ))
            }
        };
        filesystems.push(Filesystem {
            name: name.to_owned(),
            mountpoint: fields[1].to_owned(),
            canmount: fields[2].to_owned(),
            mounted,
            keystatus: optional(fields[4]),
            tag: optional(fields[5]),
            guid: fields[6].to_owned(),
        });
    }
    Ok(filesystems)
}

/// Parses `zfs get -H -p -o name,value,source <owner property> NAME...`
/// for the snapshots `asked`: an owner counts only where the source is
/// `local` (not `inherited from X`, not `received`, not `-`).
///
/// zfs prints values raw, and a user property may hold tabs and line breaks:
/// someone allowed to set one could forge a line claiming another snapshot
/// as ours. So a line counts only for a name that was asked, the source is
/// the last field, and a name printed more than once is nobody's. Lines that
/// fit none of that (the rest of a forged value) are skipped.
pub fn parse_owners(asked: &[String], stdout: &str) -> Vec<Snapshot> {
    let mut seen: std::collections::BTreeMap<&str, Vec<Option<Owner>>> =
        std::collections::BTreeMap::new();
    for line in stdout.lines() {
        let fields: Vec<&str> = line.split('\t').collect();
        let [name, value @ .., source] = &fields[..] else {
            continue;
        };
        if value.is_empty() || !asked.iter().any(|a| a == name) {
            continue;
        }
        let value = value.join("\t");
        let owner = (*source == "local")
            .then(|| optional(&value))
            .flatten()
            .as_deref()
            .and_then(Owner::parse)
            .filter(|o| !o.runtime_root.contains(['\t', '\n']));
        seen.entry(name).or_default().push(owner);
    }
    seen.into_iter()
        .map(|(name, owners)| {
            let owner = match <[Option<Owner>; 1]>::try_from(owners) {
                Ok([owner]) => owner,
                Err(_) => {
                    tracing::warn!(
                        snapshot = name,
                        "zfs printed this snapshot's ownership more than once (a property value with a line break?): not treating it as ours"
                    );
                    None
                }
            };
            Snapshot {
                name: name.to_owned(),
                owner,
            }
        })
        .collect()
}

/// Parses `zfs holds -H`: `snapshot\ttag\ttimestamp`.
pub fn parse_holds(command: &str, stdout: &str) -> Result<Vec<(String, String)>> {
    stdout
        .lines()
        .filter(|l| !l.is_empty())
        .map(|line| {
            let mut fields = line.split('\t');
            match (fields.next(), fields.next()) {
                (Some(snapshot), Some(tag)) if snapshot.contains('@') => {
                    Ok((snapshot.to_owned(), tag.to_owned()))
                }
                _ => Err(malformed(
                    command,
                    line,
                    "expected snapshot<TAB>tag<TAB>time",
                )),
            }
        })
        .collect()
}

/// Parses `zfs get -H -p -o name,value,source <tag>`, keeping set values.
pub fn parse_tags(command: &str, stdout: &str) -> Result<Vec<TagInfo>> {
    let mut tags = Vec::new();
    for line in stdout.lines().filter(|l| !l.is_empty()) {
        let fields: Vec<&str> = line.split('\t').collect();
        if fields.len() != 3 {
            return Err(malformed(
                command,
                line,
                "expected name<TAB>value<TAB>source",
            ));
        }
        if fields[1] == "-" {
            continue;
        }
        tags.push(TagInfo {
            dataset: fields[0].to_owned(),
            value: fields[1].to_owned(),
            source: fields[2].to_owned(),
        });
    }
    Ok(tags)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::zfs::api::pool_of;

    // The shape OpenZFS 2.3.2 (Debian bookworm-backports) prints in the VM;
    // the guids are made up.
    const LIST: &str = "tank\t/tank\ton\tyes\t-\t-\t4216753591848231185
tank/custom\t/srv/custom\ton\tyes\t-\tauto\t1
tank/data\t/tank/data\ton\tyes\t-\tauto\t2
tank/nomount\t/tank/nomount\toff\tno\t-\t-\t3
tank/legacy\tlegacy\ton\tyes\t-\t-\t4
tank/secret\t/tank/secret\ton\tno\tunavailable\tauto\t5
tank/with space\t/tank/with space\ton\tyes\t-\t-\t6
";

    #[test]
    fn parses_filesystems() {
        let fs = parse_filesystems("zfs list", LIST).unwrap();
        assert_eq!(fs.len(), 7);
        let custom = &fs[1];
        assert_eq!(custom.mountpoint, "/srv/custom");
        assert!(custom.is_tagged() && custom.mounted);
        assert_eq!(fs[6].name, "tank/with space");
        assert_eq!(fs[0].guid, "4216753591848231185");
        let snapshot = "tank/data@zfs-snap-1\t-\t-\t-\t-\t-\t7\n";
        assert!(parse_filesystems("zfs list", snapshot).is_err());
    }

    /// `zfs list -j -p` as OpenZFS 2.3 prints it (one line), made from
    /// (name, mountpoint, tag) with serde_json's escaping, which agrees
    /// with zfs's on every character zfs prints.
    fn json_listing(datasets: &[(&str, &str, Option<&str>)]) -> Vec<u8> {
        let mut map = serde_json::Map::new();
        for (name, mountpoint, tag) in datasets {
            let v = |value: &str| serde_json::json!({"value": value, "source": {"type": "NONE", "data": "-"}});
            map.insert(
                (*name).to_owned(),
                serde_json::json!({
                    "name": name, "type": "FILESYSTEM", "pool": pool_of(name), "createtxg": "1",
                    "properties": {
                        "mountpoint": v(mountpoint), "canmount": v("on"), "mounted": v("yes"),
                        "keystatus": v("-"), TAG_PROPERTY: v(tag.unwrap_or("-")), "guid": v("7"),
                    }
                }),
            );
        }
        serde_json::to_vec(&serde_json::json!({
            "output_version": {"command": "zfs list", "vers_major": 0, "vers_minor": 1},
            "datasets": map,
        }))
        .unwrap()
    }

    #[test]
    fn parses_the_json_listing_of_openzfs_2_3() {
        // As printed by `zfs list -j -p -t filesystem -o ...` (2.3.2's
        // nvlist_print_json: one line, tabs and line breaks escaped).
        let out = concat!(
            r#"{"output_version":{"command":"zfs list","vers_major":0,"vers_minor":1},"datasets":{"#,
            r#""tank":{"name":"tank","type":"FILESYSTEM","pool":"tank","createtxg":"1","properties":{"#,
            r#""mountpoint":{"value":"/srv/t\tab","source":{"type":"LOCAL","data":"-"}},"#,
            r#""canmount":{"value":"on","source":{"type":"DEFAULT","data":"-"}},"#,
            r#""mounted":{"value":"yes","source":{"type":"NONE","data":"-"}},"#,
            r#""keystatus":{"value":"-","source":{"type":"NONE","data":"-"}},"#,
            r#""org.torsion.borgmatic:backup":{"value":"auto\ntank/x\tauto","source":{"type":"LOCAL","data":"-"}},"#,
            r#""guid":{"value":"4216753591848231185","source":{"type":"NONE","data":"-"}}}}}}"#,
            "\n"
        );
        let listing = parse_filesystems_json(out.as_bytes()).unwrap();
        assert!(listing.unreadable.is_empty());
        let [tank] = &listing.filesystems[..] else {
            panic!("{:?}", listing.filesystems)
        };
        assert_eq!(tank.mountpoint, "/srv/t\tab");
        assert_eq!(tank.tag.as_deref(), Some("auto\ntank/x\tauto"));
        assert!(!tank.is_tagged());
        assert_eq!(tank.guid, "4216753591848231185");
        // What zfs prints when it stops at a value it cannot encode.
        assert!(parse_filesystems_json(&out.as_bytes()[..300]).is_err());
    }

    #[test]
    fn one_unreadable_dataset_in_the_json_listing_is_named_not_fatal() {
        let mut out: serde_json::Value = serde_json::from_slice(&json_listing(&[
            ("tank", "/tank", None),
            ("tank/a", "/a", None),
        ]))
        .unwrap();
        out["datasets"]["tank/a"]["properties"]["mounted"]["value"] = "maybe".into();
        let listing = parse_filesystems_json(&serde_json::to_vec(&out).unwrap()).unwrap();
        assert_eq!(listing.filesystems.len(), 1);
        assert_eq!(listing.filesystems[0].name, "tank");
        assert_eq!(listing.unreadable[0].0, "tank/a");
        assert!(listing.unreadable[0].1.contains("maybe"));
    }

    #[test]
    fn names_only_listing_is_exact() {
        assert_eq!(
            parse_names("zfs list", "tank\ntank/with space\n").unwrap(),
            ["tank", "tank/with space"]
        );
        let err = parse_names("zfs list", "tank\tnonsense\n").unwrap_err();
        assert!(err.to_string().contains("\"tank\\tnonsense\""), "{err}");
    }

    proptest::proptest! {
        /// Whatever a user puts in a mountpoint or the tag (tabs, line
        /// breaks, text that looks like another dataset's line or like
        /// JSON), every dataset is read, with exactly its own values: no
        /// other dataset is lost or changed, none is forged.
        #[test]
        fn free_text_values_never_touch_another_dataset(
            values in proptest::collection::vec(
                ("(/|[a-z/\t\n\\\" {}:,]|tank/[ab]|auto){0,12}",
                 proptest::option::of("(auto|[a-z\t\n\\\"{}:,]|tank/[ab]\tauto){0,8}")),
                1..6,
            )
        ) {
            let names: Vec<String> = (0..values.len()).map(|i| format!("tank/d{i}")).collect();
            let datasets: Vec<(&str, &str, Option<&str>)> = names
                .iter()
                .zip(&values)
                .map(|(n, (m, t))| (n.as_str(), m.as_str(), t.as_deref()))
                .collect();
            let listing = parse_filesystems_json(&json_listing(&datasets)).unwrap();
            proptest::prop_assert!(listing.unreadable.is_empty());
            proptest::prop_assert_eq!(listing.filesystems.len(), datasets.len());
            for (fs, (name, mountpoint, tag)) in listing.filesystems.iter().zip(&datasets) {
                proptest::prop_assert_eq!(&fs.name, name);
                proptest::prop_assert_eq!(&fs.mountpoint, mountpoint);
                let want = tag.filter(|t| *t != "-" && !t.is_empty());
                proptest::prop_assert_eq!(fs.tag.as_deref(), want);
                proptest::prop_assert_eq!(fs.is_tagged(), *tag == Some("auto"));
            }
        }
    }

    #[test]
    fn parses_owners_and_counts_only_local_values() {
        let value = "20261126T033500Z-99:/run/zfs-snap";
        let out = format!(
            "tank/data@zfs-snap-a\t-\t-\n\
             tank/data@zfs-snap-b\t{value}\tlocal\n\
             tank/t1@keepme\t{value}\tinherited from tank/t1\n\
             tank/recv@zfs-snap-c\t{value}\treceived\n"
        );
        let asked: Vec<String> = [
            "tank/data@zfs-snap-a",
            "tank/data@zfs-snap-b",
            "tank/t1@keepme",
            "tank/recv@zfs-snap-c",
        ]
        .map(String::from)
        .to_vec();
        let snaps = parse_owners(&asked, &out);
        assert_eq!(snaps.len(), 4);
        let owner_of = |n: &str| snaps.iter().find(|s| s.name == n).unwrap().owner.clone();
        assert_eq!(owner_of("tank/data@zfs-snap-a"), None);
        let owner = owner_of("tank/data@zfs-snap-b").unwrap();
        assert_eq!(owner.run_id, "20261126T033500Z-99");
        assert_eq!(owner.runtime_root, "/run/zfs-snap");
        assert_eq!(
            owner_of("tank/t1@keepme"),
            None,
            "inherited values prove nothing"
        );
        assert_eq!(
            owner_of("tank/recv@zfs-snap-c"),
            None,
            "received values prove nothing"
        );
    }

    #[test]
    fn forged_lines_in_a_value_claim_nothing() {
        // A user's value holding a line break and tabs, forging a line for
        // another snapshot (and one for its own).
        let forged = "a\tlocal\ntank/victim@keep\tR:/run/zfs-snap\tlocal\n\
                      tank/home/u@zfs-snap-x\tR:/run/zfs-snap\tlocal";
        let out = format!("tank/home/u@zfs-snap-x\t{forged}\tlocal\ntank/victim@keep\t-\t-\n");
        let asked = vec![
            "tank/home/u@zfs-snap-x".to_owned(),
            "tank/victim@keep".to_owned(),
        ];
        let snaps = parse_owners(&asked, &out);
        assert!(snaps.iter().all(|s| s.owner.is_none()), "{snaps:?}");
        // Not asked: a forged line for a snapshot not looked up is ignored.
        let snaps = parse_owners(&asked[..1], &out);
        assert!(
            snaps.iter().all(|s| s.name != "tank/victim@keep"),
            "{snaps:?}"
        );
        // A tab inside a value: the source is the last field.
        let out = "tank/a@s\tx:/run/zfs-snap\tlocal\tinherited from tank/a\n";
        let snaps = parse_owners(&["tank/a@s".to_owned()], out);
        assert_eq!(snaps[0].owner, None);
    }

    #[test]
    fn only_does_not_exist_may_be_skipped() {
        use std::os::unix::process::ExitStatusExt;
        let output = |raw: i32, stderr: &str| std::process::Output {
            status: std::process::ExitStatus::from_raw(raw),
            stdout: Vec::new(),
            stderr: stderr.as_bytes().to_vec(),
        };
        let missing = "cannot open 'tank/a@zfs-snap-x': dataset does not exist\n";
        assert!(only_missing(&output(1 << 8, missing)));
        assert!(!only_missing(&output(1 << 8, "")), "exit 1, nothing said");
        assert!(!only_missing(&output(9, missing)), "killed by SIGKILL");
        assert!(!only_missing(&output(2 << 8, missing)), "usage error");
        assert!(!only_missing(&output(
            1 << 8,
            &format!("{missing}internal error: out of memory\n")
        )));
    }

    #[test]
    fn unusable_reasons_name_the_cause() {
        let fs = parse_filesystems("zfs list", LIST).unwrap();
        let reason = |i: usize| fs[i].unusable_reason();
        assert_eq!(reason(0), None);
        assert_eq!(reason(3).as_deref(), Some("canmount=off"));
        assert!(reason(5).unwrap().contains("encryption key"));
    }

    #[test]
    fn malformed_line_is_quoted() {
        let err = parse_filesystems("zfs list", "tank\t/tank\ton\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"tank\\t/tank\\ton\""), "{err}");
        assert!(err.contains("found 3"), "{err}");
        let err = parse_filesystems("zfs list", "tank\t/tank\ton\tmaybe\t-\t-\t-\n").unwrap_err();
        assert!(err.to_string().contains("maybe"));
    }

    #[test]
    fn owner_value_round_trips_and_rejects_foreign_values() {
        let owner = Owner {
            run_id: "r1".into(),
            runtime_root: "/run/zfs snap".into(),
        };
        assert_eq!(Owner::parse(&owner.value()), Some(owner));
        assert_eq!(Owner::parse("yes"), None);
        assert_eq!(Owner::parse(":/run"), None);
    }

    #[test]
    fn parses_holds_and_tags() {
        let holds = parse_holds("zfs holds", "tank@a\tzfs-snap\tThu Nov 26 03:35 2026\n").unwrap();
        assert_eq!(holds, vec![("tank@a".into(), "zfs-snap".into())]);
        let tags = parse_tags(
            "zfs get",
            "tank\t-\t-\ntank/a\tauto\tlocal\ntank/a/b\tauto\tinherited from tank/a\n",
        )
        .unwrap();
        assert_eq!(tags.len(), 2);
        assert_eq!(tags[1].source, "inherited from tank/a");
    }

    #[test]
    fn pool_is_the_first_component() {
        assert_eq!(pool_of("tank/a/b"), "tank");
        assert_eq!(pool_of("tank@s"), "tank");
        assert_eq!(pool_of("tank"), "tank");
    }
}
