#!/usr/bin/env bash
# The current borg 1.4.x release from PyPI, the differential test's second
# oracle next to Debian's (borg 1.4.5 changed what is stored at the `/./`
# point; users have both). PyPI ships borgbackup as an sdist only, so it is
# built here, into a venv: $1 (default /opt/zfs-snap-borg-pypi).
set -euo pipefail
prefix=${1:-/opt/zfs-snap-borg-pypi}
if [[ -x $prefix/bin/borg ]] && "$prefix/bin/borg" --version | grep -q '^borg 1\.4\.'; then
    "$prefix/bin/borg" --version
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -qq build-essential pkg-config python3-dev python3-venv \
    libssl-dev libacl1-dev liblz4-dev libzstd-dev libxxhash-dev >/dev/null
rm -rf "$prefix"
python3 -m venv "$prefix"
"$prefix/bin/pip" install -q --disable-pip-version-check 'borgbackup>=1.4,<1.5'
"$prefix/bin/borg" --version
