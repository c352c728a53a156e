//! What a snapshot cannot give borg, on real ZFS: with `--read-special`,
//! named pipes are read live (a pipe in a snapshot has no writer:
//! borgmatic streams its database dumps through pipes in its runtime
//! directory, which may be on ZFS); and a source root made after a
//! session's snapshots were taken (borgmatic's runtime directory of a
//! later repository's create) is read live. Real borg over the live tree
//! is the oracle.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use integration::*;

/// A writer that opens `pipe` and writes `text` into it, again for each
/// reader (one at a time), until killed: a database dump as borgmatic
/// streams it.
fn writer(pipe: &Path, text: &str) -> Child {
    Command::new("sh")
        .args([
            "-c",
            &format!(
                // SIGPIPE ignored: a reader that closes early must not end
                // the writer (printf is the shell's own); a pause after each
                // close, for the reader to see its end.
                "trap '' PIPE; while :; do printf %s {} > {}; sleep 1; done",
                sh_quote(text),
                sh_quote(pipe)
            ),
        ])
        .spawn()
        .expect("start the pipe's writer")
}

fn stop(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// `/tank/x/./dir`-style roots as borgmatic gives its runtime directory.
fn marked(root: &Path, below: &str) -> String {
    format!("{}/./{below}", root.display())
}

#[test]
fn a_pipe_borg_reads_with_read_special_is_read_live() {
    let fx = require_zfs!();
    let p = &fx.pool;
    p.dataset("run", &[]);
    p.write("run/borgmatic-x/borgmatic/manifest.json", "{}\n");
    let dumps = p.path("run/borgmatic-x/borgmatic/postgresql_databases/localhost");
    std::fs::create_dir_all(&dumps).unwrap();
    let pipe = dumps.join("app");
    mkfifo(&pipe);
    // A symlink to the pipe, relative: from the snapshot it would lead to
    // the snapshot's pipe.
    std::os::unix::fs::symlink("app", dumps.join("app-link")).unwrap();
    let root = marked(&p.path("run/borgmatic-x"), "borgmatic");
    let dump = "-- PostgreSQL database dump\nSELECT 1;\n";
    let w = writer(&pipe, dump);

    let cmd = fx.wrap_command(
        &[],
        &["create", "--read-special", &fx.repo.at("snap"), &root],
    );
    // A pipe read from the snapshot would block borg for ever.
    let out = fx.spawn(cmd).wait(Duration::from_secs(300));
    assert_eq!(out.code(), 0, "{}", out.dump());
    out.expect_stderr("read live (--read-special)");
    let plain = fx
        .repo
        .create_plain(&["--read-special", &fx.repo.at("plain"), &root]);
    stop(w);
    assert_eq!(plain.code(), 0, "{}", plain.dump());

    assert_eq!(
        fx.repo.list("snap"),
        fx.repo.list("plain"),
        "the same paths as plain borg"
    );
    let dest = fx.work.join("snap");
    fx.repo.extract("snap", &dest);
    let stored = dest.join("borgmatic/postgresql_databases/localhost");
    assert_eq!(
        read_file(&stored.join("app")),
        dump,
        "the dump, read from the live pipe"
    );
    assert_eq!(read_file(&stored.join("app-link")), dump);
    fx.assert_clean();
}

#[test]
fn a_root_made_after_the_sessions_snapshots_is_read_live() {
    let fx = require_zfs!();
    let p = &fx.pool;
    p.dataset("data", &[]);
    p.write("data/a.txt", "a\n");
    let later = p.path("data/borgmatic-later");
    let link = fx.work.join("bin/borg");
    std::fs::create_dir_all(link.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(zfs_snap_bin(), &link).expect("symlink borg -> zfs-snap");
    // The second create's root appears after the first create froze the
    // dataset, as borgmatic's runtime directory for its second repository.
    let script = fx.script(
        "two-creates",
        &format!(
            "set -e\n\
             {link} create {one} {data}\n\
             mkdir -p {later}/borgmatic\n\
             echo dump > {later}/borgmatic/dump\n\
             {link} create {two} {later_root}\n",
            link = sh_quote(&link),
            one = sh_quote(fx.repo.at("one")),
            two = sh_quote(fx.repo.at("two")),
            data = sh_quote(p.path("data")),
            later = sh_quote(&later),
            later_root = sh_quote(marked(&later, "borgmatic")),
        ),
    );
    let mut cmd = fx.zfs_snap();
    cmd.args(["session", "--"]).arg(&script);
    let out = run(&mut cmd);
    assert_eq!(out.code(), 0, "{}", out.dump());
    out.expect_stderr("is not in the snapshot (made after it was taken); borg reads it live");
    assert_eq!(
        fx.repo.list("two"),
        vec!["borgmatic".to_owned(), "borgmatic/dump".to_owned()]
    );
    let dest: PathBuf = fx.work.join("two");
    fx.repo.extract("two", &dest);
    assert_eq!(read_file(&dest.join("borgmatic/dump")), "dump\n");
    assert_eq!(p.snapshots_made().len(), 1, "one snapshot set");
    fx.assert_clean();
}
