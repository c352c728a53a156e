//! Excludes and patterns under snapshotted paths exclude exactly what they
//! exclude for plain borg over the live paths.

use integration::*;

#[test]
fn excludes_and_patterns_match_plain_borg() {
    let fx = require_zfs!();
    let p = &fx.pool;
    p.dataset("data", &[]);
    p.dataset("data/kid", &[]);
    for (rel, content) in [
        ("data/a.txt", "a"),
        ("data/b.log", "b"),
        ("data/c.tmp", "c"),
        ("data/sub/d.txt", "d"),
        ("data/sub/e.log", "e"),
        ("data/cache/x", "x"),
        ("data/cache/y.tmp", "y"),
        ("data/keep/z.log", "z"),
        ("data/keep/w.txt", "w"),
        ("data/kid/k.log", "k"),
        ("data/kid/k.txt", "k"),
    ] {
        p.write(rel, content);
    }
    let d = p.path("data").display().to_string();
    let rel = p.ds("data");
    let ex_file = write_file(
        &fx.work.join("excludes"),
        &format!("# a comment\n{d}/cache\nsh:**/*.log\nre:^{rel}/kid/k\\.txt$\n"),
    );
    let pat_file = write_file(
        &fx.work.join("patterns"),
        &format!(
            "R {d}\nP sh\n+ {d}/keep/**\n- **/*.log\n! {d}/cache\n- re:\\.tmp$\nP fm\n- {d}/sub/d.txt\n"
        ),
    );
    let ex_file = ex_file.display().to_string();
    let pat_file = pat_file.display().to_string();

    let all = {
        fx.repo.create_plain(&[&fx.repo.at("all"), &d]).success();
        fx.repo.list("all")
    };
    let cases: Vec<(&str, Vec<String>, bool)> = vec![
        ("fm-default", vec!["--exclude".into(), "*.log".into()], true),
        (
            "fm-absolute",
            vec!["-e".into(), format!("fm:{d}/cache")],
            true,
        ),
        (
            "sh",
            vec![
                "-e".into(),
                format!("sh:{d}/**/*.tmp"),
                "-e".into(),
                "sh:**/e.log".into(),
            ],
            true,
        ),
        (
            "pp",
            vec![
                "-e".into(),
                format!("pp:{d}/sub"),
                "-e".into(),
                format!("pp:{d}/kid/k.log"),
            ],
            true,
        ),
        (
            "re-anchored",
            vec!["-e".into(), format!("re:^{rel}/(sub|kid)/")],
            true,
        ),
        (
            "re-unanchored",
            vec![
                "-e".into(),
                "re:\\.tmp$".into(),
                "-e".into(),
                "re:keep/w".into(),
            ],
            true,
        ),
        (
            "exclude-from",
            vec!["--exclude-from".into(), ex_file.clone()],
            true,
        ),
        (
            "patterns-from",
            vec!["--patterns-from".into(), pat_file.clone()],
            false,
        ),
        (
            "pattern",
            vec![
                "--pattern".into(),
                format!("+ {d}/keep/w.txt"),
                "--pattern".into(),
                format!("- {d}/keep"),
            ],
            true,
        ),
    ];
    let mut failures = Vec::new();
    for (i, (name, options, with_path)) in cases.iter().enumerate() {
        let mut args: Vec<String> = vec!["create".into()];
        args.extend(options.iter().cloned());
        let wrapped = fx.repo.at(&format!("w{i}"));
        let plain = fx.repo.at(&format!("p{i}"));
        let mut wrap_args = args.clone();
        wrap_args.push(wrapped);
        let mut plain_args: Vec<String> = options.clone();
        plain_args.push(plain);
        if *with_path {
            wrap_args.push(d.clone());
            plain_args.push(d.clone());
        }
        let refs: Vec<&str> = wrap_args.iter().map(String::as_str).collect();
        let out = fx.wrap(&[], &refs);
        if out.code() != 0 {
            failures.push(format!("case {name}: the wrapper failed\n{}", out.dump()));
            continue;
        }
        fx.repo.create_plain(&plain_args).success();
        let got = fx.repo.list(&format!("w{i}"));
        let want = fx.repo.list(&format!("p{i}"));
        if want == all {
            failures.push(format!(
                "case {name}: excluded nothing even for plain borg (a broken case)"
            ));
        }
        if got != want {
            let missing: Vec<&String> = want.iter().filter(|p| !got.contains(p)).collect();
            let extra: Vec<&String> = got.iter().filter(|p| !want.contains(p)).collect();
            failures.push(format!(
                "case {name} ({options:?}): wrapper vs plain borg differ\n  missing: {missing:?}\n  extra: {extra:?}"
            ));
        }
        fx.assert_clean();
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
