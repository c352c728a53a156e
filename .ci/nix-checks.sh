#!/usr/bin/env bash
# The NixOS module's checks, offline and without nixpkgs (Debian's nix-bin 2.8):
#  1. every .nix file parses (nix-instantiate --parse);
#  2. nix/core.nix, builtins only, evaluated for each of the seed's README
#     examples (nix/tests/core-checks.nix): no assertion fires on them, each
#     refused example is refused with its message, and the units it generates,
#     given the paths of the VM suite's systemd guest, are the repository's
#     systemd/borgmatic.service.d/zfs-snap.conf and systemd/zfs-snap-exporter.service
#     (every key with the same values in the same order): the files
#     integration/tests/systemd.rs boots under systemd on real ZFS; and the
#     seedHost example's borgmatic settings are integration/tests/seedhost-config.json,
#     the configuration integration/tests/seedhost.rs runs borgmatic with;
#  3. each example's borgmatic configuration passes borgmatic's own
#     `config validate` (borgmatic from PyPI, in a venv);
#  4. with NIXPKGS_LIB=/path/to/nixpkgs.lib (nix-community/nixpkgs.lib): the
#     real module through lib.evalModules (nix/tests/module-eval.nix); without
#     it, a loud skip.
# As root it installs what is missing (nix-bin, the borgmatic venv).
# Usage: .ci/nix-checks.sh
set -euo pipefail
cd "$(dirname "$0")/.."
borgmatic_version=2.1.10
venv=${ZFS_SNAP_BORGMATIC_VENV:-/opt/zfs-snap-borgmatic}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
say() { echo "nix-checks: $*"; }

if ! command -v nix-instantiate >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nix-bin >/dev/null
fi
nix-instantiate --version

# 1. Every .nix file parses.
mapfile -t files < <(find . -name '*.nix' -not -path './target/*' -not -path './.git/*' | sort)
for f in "${files[@]}"; do
    nix-instantiate --parse "$f" >/dev/null
done
say "parsed ${#files[@]} files: ${files[*]}"

# 2. The core, for the seed's examples.
nix-instantiate --eval --strict --json nix/tests/core-checks.nix >"$work/core.json"
python3 - "$work" <<'PY'
import json, pathlib, subprocess, sys
work = pathlib.Path(sys.argv[1])
d = json.loads((work / "core.json").read_text())
for name, m in d["mirror"].items():
    if m["same"]:
        print(f"nix-checks: {name}: the generated unit is the file, key by key")
    else:
        (work / "generated").write_text(m["generated"])
        (work / "shipped").write_text(m["shipped"])
        print(f"nix-checks: {name} differs from the generated unit (keys sorted as NixOS writes them):")
        subprocess.run(["diff", "-u", "--label", f"{name} (shipped)", "--label", "nix/core.nix (generated)",
                        str(work / "shipped"), str(work / "generated")])
for name, r in d["refused"].items():
    print(f"nix-checks: refused {name}: {r['failed'][0].splitlines()[0] if r['failed'] else '(nothing)'}")
(work / "configs").mkdir()
for name, e in d["examples"].items():
    # JSON is YAML: borgmatic reads it as it reads the module's config.yaml.
    (work / "configs" / f"{name}.yaml").write_text(json.dumps(e["settings"], indent=2))
    for w in e["warnings"]:
        print(f"nix-checks: example {name}: warning: {w}")
# The seed host's borgmatic configuration in the VM suite is the module's.
booted = pathlib.Path("integration/tests/seedhost-config.json")
generated = json.dumps(d["examples"]["seedHost"]["settings"], indent=2, sort_keys=True) + "\n"
if booted.read_text() == generated:
    print(f"nix-checks: {booted}: the seedHost example's borgmatic settings, as generated")
else:
    (work / "generated.json").write_text(generated)
    subprocess.run(["diff", "-u", "--label", f"{booted} (committed)", "--label", "seedHost (generated)",
                    str(booted), str(work / "generated.json")])
    d["problems"].append(f"{booted} is not the seedHost example's settings (diff above); "
                         "regenerate it from nix/tests/core-checks.nix")
if d["problems"]:
    print("nix-checks: FAILED:", *d["problems"], sep="\n  ", file=sys.stderr)
    sys.exit(1)
print(f"nix-checks: {len(d['examples'])} examples evaluated, {len(d['refused'])} refused as they must be")
PY

# 3. borgmatic validates each generated configuration.
if ! "$venv/bin/borgmatic" --version 2>/dev/null | grep -qx "$borgmatic_version"; then
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check "borgmatic==$borgmatic_version"
fi
# One call: a directory is every .yaml file in it; the output names a refused one.
if ! out=$("$venv/bin/borgmatic" -c "$work/configs" config validate 2>&1); then
    echo "$out" >&2
    say "FAILED: borgmatic $borgmatic_version refuses a generated configuration (above); they are:" >&2
    for f in "$work"/configs/*.yaml; do echo "== $f"; cat "$f"; done >&2
    exit 1
fi
say "borgmatic $borgmatic_version config validate: $(cd "$work/configs" && echo *.yaml) valid"

# 4. The module itself, with nixpkgs' lib.
if [[ -z ${NIXPKGS_LIB:-} ]]; then
    printf '\n!!!!!!!! SKIPPED nix/tests/module-eval.nix: needs nixpkgs'"'"' lib; missing: NIXPKGS_LIB; to get it: git clone https://github.com/nix-community/nixpkgs.lib and set NIXPKGS_LIB to it !!!!!!!!\n\n' >&2
    exit 0
fi
nix-instantiate --eval --strict --json nix/tests/module-eval.nix --arg nixpkgsLib "$NIXPKGS_LIB" >"$work/module.json"
python3 - "$work/module.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
for name, files in d["rendered"].items():
    for path, text in files.items():
        print(f"--- {name}: {path}")
        print(text if isinstance(text, str) else json.dumps(text, indent=2, sort_keys=True))
for name, r in d["refused"].items():
    print(f"--- refused {name}:", *r["failed"], sep="\n")
print("--- grafana dashboard:", "provisioned" if d["dashboard"]["present"] else
      "no monitoring/grafana/zfs-snap-borg.json in this checkout: none provisioned (a warning)")
if d["problems"]:
    print("nix-checks: FAILED:", *d["problems"], sep="\n  ", file=sys.stderr)
    sys.exit(1)
print(f"nix-checks: module-eval: {len(d['rendered'])} examples render the expected units; "
      f"{len(d['refused'])} refused with their messages")
PY
