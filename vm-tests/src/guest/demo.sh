#!/bin/sh
# vm-tests demo: zfs-snap on a throwaway loopback pool.
set -eu
zfs_snap=${ZFS_SNAP_BIN:-/share/bin/zfs-snap}
say() { printf '\n### %s\n' "$*"; }
show() { printf '$ %s\n' "$*"; "$@"; }

say "A pool on a file vdev, with two datasets and some files"
truncate -s 1G /var/tmp/demo-pool.img
show zpool create -f -o cachefile=none -O compression=lz4 tank /var/tmp/demo-pool.img
show zfs create tank/home
show zfs create -o mountpoint=/srv/www tank/www
mkdir -p /tank/home/alice
echo "alice's notes" >/tank/home/alice/notes.txt
seq 1 10000 >/tank/home/alice/numbers.txt
echo "<h1>hello</h1>" >/srv/www/index.html
show zfs list -o name,mountpoint,used

say "A borg repository"
export BORG_PASSPHRASE= BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes BORG_RELOCATED_REPO_ACCESS_IS_OK=yes
show borg init -e none /var/tmp/repo

say "Back up through zfs-snap: borg reads one atomic snapshot of both datasets"
show "$zfs_snap" wrap -- borg create --stats /var/tmp/repo::demo /tank/home /srv/www

say "The archive holds the original paths"
show borg list /var/tmp/repo::demo

say "Nothing is left behind"
show zfs list -t snapshot
printf '$ grep @ /proc/self/mounts\n'
grep @ /proc/self/mounts || echo "(no snapshot mounted)"
