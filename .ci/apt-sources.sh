#!/usr/bin/env bash
# Enables Debian contrib and bookworm-backports, which zfs-snap's tests need
# (borgbackup 1.4, zfs-dkms, zfsutils-linux, qemu-system-x86).
# The mirror is read from this machine's own apt sources: no host name of a
# package mirror is written into the repository.
set -euo pipefail

main_sources=/etc/apt/sources.list.d/debian.sources
extra=/etc/apt/sources.list.d/zfs-snap-extra.sources

if [[ -f $extra ]]; then
    exit 0
fi

uri=""
signed_by=/usr/share/keyrings/debian-archive-keyring.gpg
if [[ -f $main_sources ]]; then
    # First stanza whose Suites include plain "bookworm" (not -security).
    uri=$(awk '
        /^URIs:/ { u = $2 }
        /^Suites:/ { for (i = 2; i <= NF; i++) if ($i == "bookworm") { print u; exit } }
    ' "$main_sources")
fi
if [[ -z $uri && -f /etc/apt/sources.list ]]; then
    uri=$(awk '$1 == "deb" && $3 == "bookworm" { print $2; exit }' /etc/apt/sources.list)
fi
if [[ -z $uri ]]; then
    echo "apt-sources.sh: found no bookworm mirror in $main_sources or /etc/apt/sources.list" >&2
    exit 1
fi

cat >"$extra" <<SOURCES
Types: deb
URIs: $uri
Suites: bookworm-backports
Components: main contrib
Signed-By: $signed_by

Types: deb
URIs: $uri
Suites: bookworm
Components: contrib
Signed-By: $signed_by
SOURCES
echo "apt-sources.sh: enabled contrib and bookworm-backports from $uri"
