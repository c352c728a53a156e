#!/usr/bin/env bash
# systemd-analyze verify of every unit in systemd/, and of borgmatic's
# upstream unit with our drop-in. The units name /usr/local/bin/zfs-snap;
# verify checks that executables exist, so the copies it reads name the
# zfs-snap just built instead (the only change made to them).
# Usage: .ci/verify-units.sh ZFS_SNAP_BINARY
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$(realpath "$1")
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT

# borgmatic's own units, from its current release's sdist.
python3 -m pip download --quiet --disable-pip-version-check --no-deps --no-binary :all: --dest "$dir/sdist" borgmatic
tar -xzf "$dir"/sdist/borgmatic-*.tar.gz -C "$dir/sdist" --wildcards '*/sample/systemd/*'
cp "$dir"/sdist/borgmatic-*/sample/systemd/borgmatic.{service,timer} "$dir/"
cp -r systemd/. "$dir/"
find "$dir" -maxdepth 2 -name '*.service' -o -maxdepth 2 -name '*.timer' -o -maxdepth 2 -name '*.conf' |
    xargs sed -i "s#/usr/local/bin/zfs-snap#$bin#g"
units=(borgmatic.service borgmatic.timer)
for u in systemd/*.service systemd/*.timer; do units+=("$(basename "$u")"); done
# verify only warns about a line it cannot parse (and ignores it): any
# output at all fails the check.
said=$(cd "$dir" && SYSTEMD_UNIT_PATH="$dir:" systemd-analyze verify --man=no "${units[@]}" 2>&1) || {
    echo "$said" >&2
    exit 1
}
if [ -n "$said" ]; then
    echo "$said" >&2
    exit 1
fi
echo "verified: ${units[*]} (+ borgmatic.service.d/zfs-snap.conf)"
