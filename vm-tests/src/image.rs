//! Builds (once) and caches the guest: a Debian bookworm kernel, OpenZFS modules
//! built from bookworm-backports' zfs-dkms, and a minimal Debian rootfs used directly
//! as the initramfs.
//!
//! Cache layout (`$ZFS_SNAP_VM_CACHE`, default `/var/cache/zfs-snap-vm`):
//!   kernel-<pkgver>-<recipe>/    vmlinuz, vmlinux (if extractable), modules/ (the whole tree)
//!   zfs-<zfsver>-k<pkgver>-<recipe>/  ko/*.ko (stripped), build.log
//!   pylib-borgmatic-<ver>-<recipe>/   site/ (pip --target)
//!   rootfs-<key>/                rootfs/ (mmdebstrap: the packages, nothing of ours)
//!   image-<key>/                 kernel, initramfs.cpio, manifest.json
//! Every stage is built in `<name>.tmp` and renamed into place when complete (a
//! `.done` marker inside), so an interrupted build is never mistaken for a cached one.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};

use crate::util::{cmd, fmt_dur, output, run, run_logged, sha256_hex, step};

pub const INIT_SH: &str = include_str!("guest/init.sh");

/// Bump to force a rebuild of everything when the recipe changes in a way the
/// hashed constants below do not capture.
const RECIPE_VERSION: &str = "1";

/// Debian packages in the guest, besides the Essential:yes set.
const GUEST_PACKAGES: &[&str] = &[
    "kmod",
    "mount",
    "procps",
    "python3",
    "zfsutils-linux",
    "borgbackup",
    // For the guest that boots systemd as PID 1 (`vmtests.systemd=1`):
    // borgmatic's upstream unit runs systemd-inhibit, which asks logind
    // over D-Bus.
    "systemd",
    "dbus",
    // The seed's host: an SSH repository served by a real sshd, and
    // PostgreSQL dumped by borgmatic's database hook.
    "openssh-server",
    "postgresql",
];
/// Source packages pinned to bookworm-backports inside the guest (OpenZFS 2.3, borg 1.4).
const BACKPORTS_SOURCES: &[&str] = &["zfs-linux", "borgbackup"];
const BACKPORTS_SUITE: &str = "bookworm-backports";
/// Kernel modules the guest loads (plus their dependencies, plus spl and zfs).
const MODULES: &[&str] = &["virtio_pci", "virtio_blk", "9pnet_virtio", "9p", "loop"];
const ZFS_CONFIGURE: &[&str] = &["--with-config=kernel"];
const MMDEBSTRAP_OPTS: &[&str] = &[
    "--variant=essential",
    "--mode=root",
    "--dpkgopt=path-exclude=/usr/share/doc/*",
    "--dpkgopt=path-exclude=/usr/share/man/*",
    "--dpkgopt=path-exclude=/usr/share/info/*",
    "--dpkgopt=path-exclude=/usr/share/locale/*",
    "--dpkgopt=path-include=/usr/share/locale/locale.alias",
    // PostgreSQL's JIT (LLVM and the solver it links, 130 MB): a server
    // without it plans and runs every query, and the guest's RAM holds
    // the whole rootfs.
    "--dpkgopt=path-exclude=/usr/lib/x86_64-linux-gnu/libLLVM-*",
    "--dpkgopt=path-exclude=/usr/lib/x86_64-linux-gnu/libz3.so*",
    "--dpkgopt=path-exclude=/usr/lib/postgresql/*/lib/llvmjit*",
    "--dpkgopt=path-exclude=/usr/lib/postgresql/*/lib/bitcode/*",
];
const PIP_PACKAGES: &[&str] = &["borgmatic"];
const PIP_OPTS: &[&str] = &[
    "--python-version",
    "3.11",
    "--only-binary=:all:",
    "--platform",
    "manylinux2014_x86_64",
    "--implementation",
    "cp",
];
const BORGMATIC_WRAPPER: &str = "#!/bin/sh\n\
# borgmatic from PyPI, installed by vm-tests into /opt/borgmatic\n\
PYTHONPATH=/opt/borgmatic${PYTHONPATH:+:$PYTHONPATH} exec python3 -c 'import sys; from borgmatic.commands.borgmatic import main; sys.argv[0] = \"borgmatic\"; sys.exit(main())' \"$@\"\n";

/// What a boot needs.
#[derive(Debug, Clone)]
pub struct Image {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub key: String,
}

pub fn cache_dir() -> PathBuf {
    match std::env::var_os("ZFS_SNAP_VM_CACHE") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => PathBuf::from("/var/cache/zfs-snap-vm"),
    }
}

/// Versions looked up at build time: they move with Debian (security) updates and
/// PyPI releases, and each of them is part of the cache key.
#[derive(Debug)]
struct Resolved {
    /// e.g. 6.1.0-56-amd64 (uname -r in the guest)
    kabi: String,
    /// e.g. 6.1.192-2 (the linux-image package version)
    kernel_pkg: String,
    /// e.g. 2.3.2-2~bpo12+2
    zfs_pkg: String,
    /// e.g. 2.3.2
    zfs_upstream: String,
    /// guest package -> candidate version
    packages: BTreeMap<String, String>,
    /// pip package -> version
    pip: BTreeMap<String, String>,
}

/// `apt-cache show --no-all-versions` of several packages in one call (each call
/// costs about half a second): Package name -> fields of the candidate's stanza.
fn apt_show(specs: &[String]) -> Result<BTreeMap<String, BTreeMap<String, String>>> {
    let text = output(cmd("apt-cache").args(["show", "--no-all-versions"]).args(specs))
        .with_context(|| {
            format!("apt-cache cannot show {specs:?}: run .ci/vm-image-deps.sh (it enables contrib and bookworm-backports and runs apt-get update)")
        })?;
    let all = parse_stanzas(&text);
    for spec in specs {
        let name = spec.split(['/', '=']).next().unwrap();
        if !all.contains_key(name) {
            bail!("apt-cache show: no candidate for {spec}");
        }
    }
    Ok(all)
}

/// Debian control stanzas -> Package -> fields (the first stanza of each package).
fn parse_stanzas(text: &str) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut all = BTreeMap::new();
    for stanza in text.split("\n\n") {
        let mut fields: BTreeMap<String, String> = BTreeMap::new();
        let mut last: Option<String> = None;
        for line in stanza.lines() {
            if line.starts_with(' ') {
                if let Some(v) = last.as_ref().and_then(|k| fields.get_mut(k)) {
                    v.push('\n');
                    v.push_str(line.trim());
                }
                continue;
            }
            if let Some((k, v)) = line.split_once(':') {
                fields.insert(k.to_string(), v.trim().to_string());
                last = Some(k.to_string());
            }
        }
        if let (Some(p), true) = (
            fields.get("Package").cloned(),
            fields.contains_key("Version"),
        ) {
            all.entry(p).or_insert(fields);
        }
    }
    all
}

fn resolve() -> Result<Resolved> {
    // The guest kernel: whatever bookworm's (or bookworm-security's) linux-image-amd64
    // depends on right now.
    let mut specs = vec![
        "linux-image-amd64".to_string(),
        format!("zfs-dkms/{BACKPORTS_SUITE}"),
    ];
    for p in GUEST_PACKAGES {
        specs.push(if is_backports_pkg(p) {
            format!("{p}/{BACKPORTS_SUITE}")
        } else {
            p.to_string()
        });
    }
    let shown = apt_show(&specs)?;
    let meta = &shown["linux-image-amd64"];
    let version = &meta["Version"];
    if version.contains("bpo") {
        bail!("linux-image-amd64 candidate {version} is from backports: vm-tests wants bookworm's kernel (is backports pinned up?)");
    }
    let depends = meta.get("Depends").cloned().unwrap_or_default();
    let dep = depends
        .split(',')
        .map(str::trim)
        .find(|d| d.starts_with("linux-image-"))
        .ok_or_else(|| anyhow!("linux-image-amd64 depends on no linux-image-*: {depends}"))?;
    let (name, ver) = match dep.split_once(' ') {
        Some((n, v)) => (
            n,
            v.trim_matches(|c| c == '(' || c == ')' || c == '=' || c == ' ')
                .to_string(),
        ),
        None => (dep, String::new()),
    };
    let kabi = name.trim_start_matches("linux-image-").to_string();
    let kernel_pkg = if ver.is_empty() {
        apt_show(&[name.to_string()])?[name]["Version"].clone()
    } else {
        ver
    };

    let zfs_pkg = shown["zfs-dkms"]["Version"].clone();
    let zfs_upstream = zfs_pkg
        .split_once('-')
        .map(|(u, _)| u)
        .unwrap_or(&zfs_pkg)
        .to_string();

    let packages: BTreeMap<String, String> = GUEST_PACKAGES
        .iter()
        .map(|p| (p.to_string(), shown[*p]["Version"].clone()))
        .collect();

    let mut pip = BTreeMap::new();
    for p in PIP_PACKAGES {
        pip.insert(p.to_string(), pypi_latest(p)?);
    }
    Ok(Resolved {
        kabi,
        kernel_pkg,
        zfs_pkg,
        zfs_upstream,
        packages,
        pip,
    })
}

fn is_backports_pkg(p: &str) -> bool {
    // zfsutils-linux is built from zfs-linux.
    matches!(p, "zfsutils-linux" | "borgbackup")
}

fn python() -> String {
    std::env::var("ZFS_SNAP_VM_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// The current release of a PyPI package. The answer is kept for a few hours in the
/// cache (so a cached run does not wait for PyPI), and a stale answer is used when
/// PyPI cannot be reached.
fn pypi_latest(name: &str) -> Result<String> {
    const FRESH_SECS: u64 = 6 * 3600;
    let memo = cache_dir().join(format!("pypi-{name}.version"));
    let age = fs::metadata(&memo)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok());
    let remembered = fs::read_to_string(&memo)
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty());
    if let (Some(v), Some(age)) = (&remembered, age) {
        if age.as_secs() < FRESH_SECS {
            return Ok(v.clone());
        }
    }
    match pypi_query(name) {
        Ok(v) => {
            let _ = fs::write(&memo, format!("{v}\n"));
            Ok(v)
        }
        Err(e) => match remembered {
            Some(v) => {
                eprintln!("vm-tests: warning: {e:#}; using the last known {name} {v}");
                Ok(v)
            }
            None => Err(e),
        },
    }
}

fn pypi_query(name: &str) -> Result<String> {
    let text = output(
        cmd(python())
            .args(["-m", "pip", "index", "versions", name])
            .env("PIP_DISABLE_PIP_VERSION_CHECK", "1"),
    )
    .with_context(|| format!("cannot ask PyPI for the current {name} release"))?;
    // "borgmatic (2.1.10)"
    let line = text
        .lines()
        .find(|l| l.starts_with(name))
        .ok_or_else(|| anyhow!("unexpected `pip index versions {name}` output: {text}"))?;
    let v = line
        .split_once('(')
        .and_then(|(_, r)| r.split_once(')'))
        .map(|(v, _)| v.trim().to_string())
        .ok_or_else(|| anyhow!("unexpected `pip index versions {name}` output: {line}"))?;
    Ok(v)
}

fn short(h: &str) -> &str {
    &h[..12]
}

struct Keys {
    kernel: String,
    zfs: String,
    pylib: String,
    /// The Debian rootfs as mmdebstrap makes it (packages only).
    rootfs: String,
    image: String,
    inputs: serde_json::Value,
}

fn keys(r: &Resolved) -> Keys {
    let kernel_recipe = sha256_hex(&[
        RECIPE_VERSION,
        "kernel: apt-get download, dpkg-deb -x, extract vmlinux",
    ]);
    let kernel = format!("kernel-{}-{}", r.kernel_pkg, &kernel_recipe[..8]);
    let zfs_recipe = sha256_hex(&[
        RECIPE_VERSION,
        &ZFS_CONFIGURE.join(" "),
        "make, strip --strip-debug",
    ]);
    let zfs = format!("zfs-{}-k{}-{}", r.zfs_pkg, r.kernel_pkg, &zfs_recipe[..8]);
    let pip_list: Vec<String> = r.pip.iter().map(|(k, v)| format!("{k}=={v}")).collect();
    let py_recipe = sha256_hex(&[
        RECIPE_VERSION,
        &PIP_OPTS.join(" "),
        "byte-compiled by pip",
        "sample/systemd from the sdist",
    ]);
    let pylib = format!("pylib-{}-{}", pip_list.join("-"), &py_recipe[..8]);
    let pkg_list: Vec<String> = r.packages.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let rootfs_recipe = sha256_hex(&[
        RECIPE_VERSION,
        &pkg_list.join(" "),
        &MMDEBSTRAP_OPTS.join(" "),
        &BACKPORTS_SOURCES.join(" "),
        &pin_file(),
    ]);
    let rootfs = format!("rootfs-{}", short(&rootfs_recipe));
    let recipe = sha256_hex(&[
        RECIPE_VERSION,
        INIT_SH,
        BORGMATIC_WRAPPER,
        &MODULES.join(" "),
        "rootfs copied from its stage, owners kept",
    ]);
    let image_hash = sha256_hex(&[&kernel, &zfs, &pylib, &rootfs, &recipe]);
    let image = format!("image-{}", short(&image_hash));
    let inputs = serde_json::json!({
        "kernel_abi": r.kabi,
        "kernel_package": format!("linux-image-{}={}", r.kabi, r.kernel_pkg),
        "zfs_dkms": r.zfs_pkg,
        "packages": pkg_list,
        "pip": pip_list,
        "recipe_hash": short(&recipe),
        "stages": [&kernel, &zfs, &pylib, &rootfs],
        "image": &image,
    });
    Keys {
        kernel,
        zfs,
        pylib,
        rootfs,
        image,
        inputs,
    }
}

fn pin_file() -> String {
    let sources: Vec<String> = BACKPORTS_SOURCES
        .iter()
        .map(|s| format!("src:{s}"))
        .collect();
    format!(
        "Package: {}\nPin: release n={BACKPORTS_SUITE}\nPin-Priority: 990\n",
        sources.join(" ")
    )
}

/// Builds a stage into `<cache>/<name>.tmp` and renames it into place; reuses a
/// complete one.
fn stage(
    cache: &Path,
    name: &str,
    what: &str,
    build: impl FnOnce(&Path) -> Result<()>,
) -> Result<PathBuf> {
    let dir = cache.join(name);
    if dir.join(".done").exists() {
        eprintln!("vm-tests: {what}: cached ({})", dir.display());
        return Ok(dir);
    }
    let tmp = cache.join(format!("{name}.tmp"));
    if tmp.exists() {
        fs::remove_dir_all(&tmp).with_context(|| format!("cannot remove {}", tmp.display()))?;
    }
    fs::create_dir_all(&tmp)?;
    step(&format!("{what} [{name}]"), || build(&tmp))?;
    fs::write(tmp.join(".done"), "")?;
    if dir.exists() {
        fs::remove_dir_all(&dir)?;
    }
    fs::rename(&tmp, &dir)?;
    Ok(dir)
}

/// Ensures the image exists (building what is missing) and returns it.
pub fn ensure(force: bool) -> Result<Image> {
    let t0 = Instant::now();
    let cache = cache_dir();
    fs::create_dir_all(&cache).with_context(|| {
        format!(
            "cannot create the image cache {} (set ZFS_SNAP_VM_CACHE to use another directory)",
            cache.display()
        )
    })?;
    let lock = fs::File::create(cache.join(".lock"))?;
    if lock.try_lock().is_err() {
        eprintln!(
            "vm-tests: another build holds {}; waiting",
            cache.join(".lock").display()
        );
        lock.lock()?;
    }

    let r = step("resolve versions (apt-cache, PyPI)", resolve)?;
    let k = keys(&r);
    eprintln!(
        "vm-tests: image key inputs: {}",
        serde_json::to_string(&k.inputs).unwrap()
    );
    let image_dir = cache.join(&k.image);
    if force && image_dir.exists() {
        for d in [&k.kernel, &k.zfs, &k.pylib, &k.rootfs, &k.image] {
            let _ = fs::remove_dir_all(cache.join(d));
        }
    }
    if !image_dir.join(".done").exists() {
        let kernel_dir = stage(&cache, &k.kernel, "guest kernel", |d| build_kernel(&r, d))?;
        let zfs_dir = stage(&cache, &k.zfs, "OpenZFS kernel modules", |d| {
            build_zfs(&r, d)
        })?;
        let py_dir = stage(&cache, &k.pylib, "borgmatic (pip)", |d| build_pylib(&r, d))?;
        let rootfs_dir = stage(&cache, &k.rootfs, "Debian rootfs (mmdebstrap)", |d| {
            build_rootfs(&r, d)
        })?;
        stage(&cache, &k.image, "guest initramfs", |d| {
            build_image(&r, &k, &kernel_dir, &zfs_dir, &py_dir, &rootfs_dir, d)
        })?;
    } else {
        eprintln!("vm-tests: image: cached ({})", image_dir.display());
    }
    eprintln!("vm-tests: image ready in {}", fmt_dur(t0.elapsed()));
    load(&image_dir, &k.image)
}

fn load(dir: &Path, key: &str) -> Result<Image> {
    let kernel = dir.join("kernel");
    let initrd = dir.join("initramfs.cpio");
    for p in [&kernel, &initrd] {
        if !p.exists() {
            bail!(
                "{} is missing: remove {} and build again",
                p.display(),
                dir.display()
            );
        }
    }
    Ok(Image {
        kernel,
        initrd,
        key: key.to_string(),
    })
}

fn apt_download(dir: &Path, spec: &str) -> Result<PathBuf> {
    fs::create_dir_all(dir)?;
    // apt's sandbox user cannot write into a root-owned 0700 cache; let it.
    let _ = cmd("chown")
        .args(["_apt", &dir.to_string_lossy()])
        .stderr(Stdio::null())
        .status();
    run(cmd("apt-get")
        .args(["download", "-q", spec])
        .current_dir(dir)
        .stdout(Stdio::null()))?;
    let name = spec.split(['=', '/']).next().unwrap();
    for e in fs::read_dir(dir)? {
        let p = e?.path();
        let f = p.file_name().unwrap().to_string_lossy().into_owned();
        if f.starts_with(&format!("{name}_")) && f.ends_with(".deb") {
            return Ok(p);
        }
    }
    bail!("apt-get download {spec}: no .deb in {}", dir.display())
}

fn build_kernel(r: &Resolved, d: &Path) -> Result<()> {
    let deb = apt_download(
        &d.join("debs"),
        &format!("linux-image-{}={}", r.kabi, r.kernel_pkg),
    )?;
    let root = d.join("root");
    run(cmd("dpkg-deb").arg("-x").arg(&deb).arg(&root))?;
    fs::rename(
        root.join(format!("boot/vmlinuz-{}", r.kabi)),
        d.join("vmlinuz"),
    )?;
    let moddir = root.join(format!("lib/modules/{}", r.kabi));
    let moddir = if moddir.exists() {
        moddir
    } else {
        root.join(format!("usr/lib/modules/{}", r.kabi))
    };
    fs::rename(&moddir, d.join("modules"))?;
    fs::remove_dir_all(&root)?;
    fs::remove_dir_all(d.join("debs"))?;
    // An uncompressed vmlinux boots a few seconds faster under TCG (PVH entry).
    match extract_vmlinux(&d.join("vmlinuz")) {
        Ok(Some(elf)) => {
            fs::write(d.join("vmlinux"), elf)?;
            eprintln!("vm-tests: extracted vmlinux from the bzImage");
        }
        Ok(None) => eprintln!("vm-tests: no vmlinux found inside the bzImage; booting the bzImage"),
        Err(e) => eprintln!("vm-tests: cannot extract vmlinux ({e:#}); booting the bzImage"),
    }
    Ok(())
}

/// Finds the compressed kernel inside a bzImage and decompresses it (like the
/// kernel's scripts/extract-vmlinux).
fn extract_vmlinux(bz: &Path) -> Result<Option<Vec<u8>>> {
    let data = fs::read(bz)?;
    let formats: [(&[u8], &str, &[&str]); 3] = [
        (b"\xfd7zXZ\x00", "xz", &["-dc", "--single-stream"]),
        (b"\x28\xb5\x2f\xfd", "zstd", &["-dcq"]),
        (b"\x1f\x8b\x08", "gzip", &["-dc"]),
    ];
    for (magic, prog, args) in formats {
        let mut tries = 0;
        let mut pos = 0;
        while let Some(off) = find(&data[pos..], magic).map(|o| o + pos) {
            pos = off + 1;
            tries += 1;
            if tries > 4 {
                break;
            }
            let mut child = match cmd(prog)
                .args(args)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
            {
                Ok(c) => c,
                Err(_) => break, // tool not installed
            };
            let mut stdin = child.stdin.take().unwrap();
            let payload = data[off..].to_vec();
            let writer = std::thread::spawn(move || {
                let _ = stdin.write_all(&payload);
            });
            let mut out = Vec::new();
            child.stdout.take().unwrap().read_to_end(&mut out)?;
            let _ = child.wait();
            let _ = writer.join();
            if out.starts_with(b"\x7fELF") {
                return Ok(Some(out));
            }
        }
    }
    Ok(None)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn build_zfs(r: &Resolved, d: &Path) -> Result<()> {
    let obj = PathBuf::from(format!("/usr/src/linux-headers-{}", r.kabi));
    if !obj.join("Makefile").exists() {
        eprintln!("vm-tests: installing linux-headers-{} (apt-get)", r.kabi);
        run(cmd("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .arg(format!("linux-headers-{}={}", r.kabi, r.kernel_pkg))
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
    }
    // Debian splits headers into <abi>-<flavour> (the build tree) and <abi>-common.
    let common = r
        .kabi
        .rsplit_once('-')
        .map(|(abi, _)| PathBuf::from(format!("/usr/src/linux-headers-{abi}-common")))
        .filter(|p| p.exists())
        .unwrap_or_else(|| obj.clone());

    let deb = apt_download(&d.join("debs"), &format!("zfs-dkms={}", r.zfs_pkg))?;
    let x = d.join("x");
    run(cmd("dpkg-deb").arg("-x").arg(&deb).arg(&x))?;
    let src = x.join(format!("usr/src/zfs-{}", r.zfs_upstream));
    if !src.join("configure").exists() {
        bail!("{} has no configure script", src.display());
    }
    let log = d.join("build.log");
    eprintln!(
        "vm-tests: building OpenZFS {} for {} (log: {})",
        r.zfs_upstream,
        r.kabi,
        log.display()
    );
    run_logged(
        cmd("./configure")
            .args(ZFS_CONFIGURE)
            .arg(format!("--with-linux={}", common.display()))
            .arg(format!("--with-linux-obj={}", obj.display()))
            .current_dir(&src),
        &log,
    )?;
    let jobs = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    run_logged(cmd("make").arg(format!("-j{jobs}")).current_dir(&src), &log)?;
    let ko_dir = d.join("ko");
    fs::create_dir_all(&ko_dir)?;
    let mut kos = Vec::new();
    walk(&src.join("module"), &mut |p| {
        if p.extension().is_some_and(|e| e == "ko") {
            kos.push(p.to_path_buf());
        }
    })?;
    if kos.is_empty() {
        bail!("the OpenZFS build produced no .ko (see {})", log.display());
    }
    for ko in &kos {
        let dst = ko_dir.join(ko.file_name().unwrap());
        fs::copy(ko, &dst)?;
        run(cmd("strip").arg("--strip-debug").arg(&dst))?;
    }
    fs::remove_dir_all(&x)?;
    fs::remove_dir_all(d.join("debs"))?;
    Ok(())
}

fn build_pylib(r: &Resolved, d: &Path) -> Result<()> {
    let site = d.join("site");
    let specs: Vec<String> = r.pip.iter().map(|(k, v)| format!("{k}=={v}")).collect();
    run(cmd(python())
        .args(["-m", "pip", "install", "--quiet", "--target"])
        .arg(&site)
        .args(PIP_OPTS)
        .args(&specs)
        .env("PIP_DISABLE_PIP_VERSION_CHECK", "1")
        .env("PIP_BREAK_SYSTEM_PACKAGES", "1")
        .env("PIP_ROOT_USER_ACTION", "ignore"))?;
    // borgmatic's upstream systemd units ship only in its sdist.
    let sdist = d.join("sdist");
    run(cmd(python())
        .args([
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--no-binary",
            ":all:",
            "--dest",
        ])
        .arg(&sdist)
        .args(&specs)
        .env("PIP_DISABLE_PIP_VERSION_CHECK", "1"))?;
    let units = d.join("systemd");
    fs::create_dir_all(&units)?;
    for e in fs::read_dir(&sdist)?.flatten() {
        run(cmd("tar")
            .arg("-xzf")
            .arg(e.path())
            .arg("-C")
            .arg(&sdist)
            .args(["--wildcards", "*/sample/systemd/*"]))?;
    }
    walk(&sdist, &mut |p| {
        if p.parent().is_some_and(|d| d.ends_with("sample/systemd")) {
            let _ = fs::copy(p, units.join(p.file_name().unwrap()));
        }
    })?;
    if !units.join("borgmatic.service").exists() {
        bail!("borgmatic's sdist has no sample/systemd/borgmatic.service");
    }
    // Console scripts carry the host interpreter's path; the image has its own wrapper.
    let _ = fs::remove_dir_all(site.join("bin"));
    // pip byte-compiled the modules with this machine's python. That is only of use
    // when it is 3.11 like the guest's (then borgmatic starts ~4 s faster under TCG);
    // otherwise the .pyc files are ignored by the guest.
    let v =
        output(cmd(python()).args(["-c", "import sys; print('%d.%d' % sys.version_info[:2])"]))?;
    if v.trim() != "3.11" {
        eprintln!("vm-tests: warning: host python is {}, not 3.11: borgmatic in the guest is not byte-compiled", v.trim());
    }
    Ok(())
}

fn walk(dir: &Path, f: &mut dyn FnMut(&Path)) -> Result<()> {
    for e in fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
        let e = e?;
        let ft = e.file_type()?;
        if ft.is_dir() {
            walk(&e.path(), f)?;
        } else if ft.is_file() {
            f(&e.path());
        }
    }
    Ok(())
}

fn mod_name(p: &Path) -> Option<String> {
    let f = p.file_name()?.to_str()?;
    let stem = f
        .strip_suffix(".ko")
        .or_else(|| f.strip_suffix(".ko.xz"))
        .or_else(|| f.strip_suffix(".ko.zst"))
        .or_else(|| f.strip_suffix(".ko.gz"))?;
    Some(stem.replace('-', "_"))
}

/// The modules to put into the image: `(source file, path under lib/modules/<abi>)`,
/// the wanted ones plus everything they depend on (`modinfo -F depends`).
fn module_closure(moddir: &Path, zfs_ko: &Path) -> Result<Vec<(PathBuf, PathBuf)>> {
    let mut index: BTreeMap<String, (PathBuf, PathBuf)> = BTreeMap::new();
    let kernel = moddir.join("kernel");
    walk(&kernel, &mut |p| {
        if let Some(n) = mod_name(p) {
            let rel = p.strip_prefix(moddir).unwrap().to_path_buf();
            index.insert(n, (p.to_path_buf(), rel));
        }
    })?;
    walk(zfs_ko, &mut |p| {
        if let Some(n) = mod_name(p) {
            let rel = Path::new("extra/zfs").join(p.file_name().unwrap());
            index.insert(n, (p.to_path_buf(), rel));
        }
    })?;
    let builtin: BTreeSet<String> = fs::read_to_string(moddir.join("modules.builtin"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| mod_name(Path::new(l)))
        .collect();

    let mut queue: VecDeque<String> = MODULES
        .iter()
        .chain(["spl", "zfs"].iter())
        .map(|s| s.to_string())
        .collect();
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    while let Some(name) = queue.pop_front() {
        if !seen.insert(name.clone()) || builtin.contains(&name) {
            continue;
        }
        let (src, rel) = index
            .get(&name)
            .ok_or_else(|| {
                anyhow!(
                    "kernel module {name} is neither built in nor in {}",
                    moddir.display()
                )
            })?
            .clone();
        let deps = output(cmd("modinfo").args(["-F", "depends"]).arg(&src))?;
        for dep in deps.trim().split(',').filter(|s| !s.is_empty()) {
            queue.push_back(dep.replace('-', "_"));
        }
        out.push((src, rel));
    }
    Ok(out)
}

/// The Debian rootfs: mmdebstrap with the guest's packages, checked.
fn build_rootfs(r: &Resolved, d: &Path) -> Result<()> {
    let rootfs = d.join("rootfs");
    let log = d.join("mmdebstrap.log");

    // Mirrors: this machine's own apt sources (never a host name in the repository).
    let mut mirrors: Vec<PathBuf> = Vec::new();
    for f in [
        "/etc/apt/sources.list.d/debian.sources",
        "/etc/apt/sources.list.d/zfs-snap-extra.sources",
    ] {
        if Path::new(f).exists() {
            mirrors.push(f.into());
        }
    }
    if !mirrors.iter().any(|m| m.ends_with("debian.sources"))
        && Path::new("/etc/apt/sources.list").exists()
    {
        mirrors.insert(0, "/etc/apt/sources.list".into());
    }
    if !mirrors
        .iter()
        .any(|m| m.ends_with("zfs-snap-extra.sources"))
    {
        bail!("bookworm-backports/contrib are not enabled: run .ci/vm-image-deps.sh first");
    }
    let pin = pin_file();
    let hook = format!(
        "mkdir -p \"$1/etc/apt/preferences.d\" && printf '%s' '{}' > \"$1/etc/apt/preferences.d/zfs-snap-vm.pref\"",
        pin.replace('\'', "")
    );
    let t = Instant::now();
    run_logged(
        cmd("mmdebstrap")
            .args(MMDEBSTRAP_OPTS)
            .arg(format!("--include={}", GUEST_PACKAGES.join(",")))
            .arg(format!("--setup-hook={hook}"))
            .arg("bookworm")
            .arg(&rootfs)
            .args(&mirrors),
        &log,
    )?;
    eprintln!("vm-tests:   mmdebstrap: {}", fmt_dur(t.elapsed()));

    // Check what got installed where it matters.
    let status = fs::read_to_string(rootfs.join("var/lib/dpkg/status"))?;
    for p in ["zfsutils-linux", "borgbackup"] {
        let want = &r.packages[p];
        let stanza = status
            .split("\n\n")
            .find(|s| s.lines().next() == Some(&format!("Package: {p}")))
            .ok_or_else(|| anyhow!("{p} is not installed in the rootfs"))?;
        if !stanza.contains(&format!("\nVersion: {want}\n")) {
            bail!("{p} in the rootfs is not {want}:\n{stanza}");
        }
    }
    Ok(())
}

fn build_image(
    r: &Resolved,
    k: &Keys,
    kernel_dir: &Path,
    zfs_dir: &Path,
    py_dir: &Path,
    rootfs_dir: &Path,
    d: &Path,
) -> Result<()> {
    let rootfs = d.join("rootfs");
    let t = Instant::now();
    run(cmd("cp")
        .arg("-a")
        .arg(rootfs_dir.join("rootfs"))
        .arg(&rootfs))?;
    // borgmatic from PyPI.
    run(cmd("cp")
        .arg("-a")
        .arg(py_dir.join("site"))
        .arg(rootfs.join("opt/borgmatic")))?;
    let wrapper = rootfs.join("usr/local/bin/borgmatic");
    fs::create_dir_all(wrapper.parent().unwrap())?;
    fs::write(&wrapper, BORGMATIC_WRAPPER)?;
    chmod(&wrapper, 0o755)?;
    // Its upstream units, where a user who downloaded them would keep them.
    run(cmd("cp")
        .arg("-a")
        .arg(py_dir.join("systemd"))
        .arg(rootfs.join("usr/local/share/borgmatic-systemd")))?;

    // Kernel modules.
    let modroot = rootfs.join(format!("lib/modules/{}", r.kabi));
    let moddir = kernel_dir.join("modules");
    let mods = module_closure(&moddir, &zfs_dir.join("ko"))?;
    for (src, rel) in &mods {
        let dst = modroot.join(rel);
        fs::create_dir_all(dst.parent().unwrap())?;
        fs::copy(src, &dst)?;
    }
    for f in [
        "modules.builtin",
        "modules.builtin.modinfo",
        "modules.order",
    ] {
        if moddir.join(f).exists() {
            fs::copy(moddir.join(f), modroot.join(f))?;
        }
    }
    run(cmd("depmod").arg("-b").arg(&rootfs).arg(&r.kabi))?;
    let names: Vec<String> = mods.iter().filter_map(|(s, _)| mod_name(s)).collect();
    eprintln!("vm-tests:   modules: {}", names.join(" "));

    // PID 1.
    fs::write(rootfs.join("init"), INIT_SH)?;
    chmod(&rootfs.join("init"), 0o755)?;
    for dir in ["share", "root", "var/tmp"] {
        fs::create_dir_all(rootfs.join(dir))?;
    }
    fs::write(rootfs.join("etc/hostname"), "vm-tests\n")?;
    let _ = fs::remove_dir_all(rootfs.join("var/cache/apt"));
    let _ = fs::remove_dir_all(rootfs.join("var/lib/apt/lists"));
    fs::create_dir_all(rootfs.join("var/lib/apt/lists/partial"))?;
    eprintln!("vm-tests:   customise: {}", fmt_dur(t.elapsed()));

    // The rootfs is the initramfs, uncompressed: qemu loads it as is and the kernel
    // unpacks it without spending emulated CPU time on decompression. Owners as
    // the packages made them: PostgreSQL will not start on a data directory
    // root owns.
    let t = Instant::now();
    let cpio = d.join("initramfs.cpio");
    let out = fs::File::create(&cpio)?;
    run(cmd("sh")
        .args(["-c", "find . -mindepth 1 -print0 | LC_ALL=C sort -z | cpio --null --create --format=newc --quiet"])
        .current_dir(&rootfs)
        .stdout(Stdio::from(out)))?;
    let size = fs::metadata(&cpio)?.len();
    eprintln!(
        "vm-tests:   initramfs: {} MiB in {}",
        size >> 20,
        fmt_dur(t.elapsed())
    );
    fs::remove_dir_all(&rootfs)?;

    let kernel_src = if kernel_dir.join("vmlinux").exists() {
        kernel_dir.join("vmlinux")
    } else {
        kernel_dir.join("vmlinuz")
    };
    crate::util::link_or_copy(&kernel_src, &d.join("kernel"))?;
    let mut manifest = k.inputs.clone();
    manifest["kernel_file"] = serde_json::json!(kernel_src.file_name().unwrap().to_string_lossy());
    manifest["modules"] = serde_json::json!(names);
    manifest["initramfs_bytes"] = serde_json::json!(size);
    fs::write(
        d.join("manifest.json"),
        serde_json::to_string_pretty(&manifest)? + "\n",
    )?;
    Ok(())
}

fn chmod(p: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(p, fs::Permissions::from_mode(mode))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stanzas_are_parsed_with_continuation_lines() {
        let text = "Package: linux-image-amd64\nVersion: 6.1.192-2\nDepends: linux-image-6.1.0-56-amd64 (= 6.1.192-2)\nDescription: x\n more\n\nPackage: zfs-dkms\nVersion: 2.3.2-2~bpo12+2\n";
        let m = parse_stanzas(text);
        assert_eq!(
            m["linux-image-amd64"]["Depends"],
            "linux-image-6.1.0-56-amd64 (= 6.1.192-2)"
        );
        assert_eq!(m["linux-image-amd64"]["Description"], "x\nmore");
        assert_eq!(m["zfs-dkms"]["Version"], "2.3.2-2~bpo12+2");
    }

    #[test]
    fn module_names_are_normalised() {
        assert_eq!(
            mod_name(Path::new("a/9pnet_virtio.ko")).as_deref(),
            Some("9pnet_virtio")
        );
        assert_eq!(
            mod_name(Path::new("a/virtio-rng.ko.xz")).as_deref(),
            Some("virtio_rng")
        );
        assert_eq!(mod_name(Path::new("a/readme.txt")), None);
    }

    fn resolved() -> Resolved {
        Resolved {
            kabi: "6.1.0-56-amd64".into(),
            kernel_pkg: "6.1.192-2".into(),
            zfs_pkg: "2.3.2-2~bpo12+2".into(),
            zfs_upstream: "2.3.2".into(),
            packages: [("borgbackup".to_string(), "1.4.0-4~bpo12+1".to_string())].into(),
            pip: [("borgmatic".to_string(), "2.1.10".to_string())].into(),
        }
    }

    #[test]
    fn every_version_is_part_of_the_image_key() {
        let base = keys(&resolved()).image;
        assert_eq!(base, keys(&resolved()).image, "the key is stable");
        let mut r = resolved();
        r.kernel_pkg = "6.1.193-1".into();
        assert_ne!(keys(&r).image, base);
        let mut r = resolved();
        r.zfs_pkg = "2.3.3-1~bpo12+1".into();
        assert_ne!(keys(&r).image, base);
        let mut r = resolved();
        r.packages
            .insert("borgbackup".into(), "1.4.1-1~bpo12+1".into());
        assert_ne!(keys(&r).image, base);
        let mut r = resolved();
        r.pip.insert("borgmatic".into(), "2.1.11".into());
        assert_ne!(keys(&r).image, base);
    }

    #[test]
    fn pin_covers_zfs_and_borg() {
        let p = pin_file();
        assert!(
            p.contains("src:zfs-linux") && p.contains("src:borgbackup"),
            "{p}"
        );
        assert!(p.contains("n=bookworm-backports"), "{p}");
    }
}
