#!/bin/sh
# Proves the guest can do what zfs-snap's tests need: a pool on a file vdev,
# datasets, snapshots, mounting a snapshot, borg and borgmatic.
set -eu
echo "smoke: $(zfs version | tr '\n' ' ')"
# SMOKE_QUICK=1 (vm-tests test): ZFS only; borg and borgmatic cost ~10 s under TCG.
quick=${SMOKE_QUICK:-0}
[ "$quick" = 1 ] || echo "smoke: $(borg --version), borgmatic $(borgmatic --version)"

truncate -s 512M /var/tmp/smoke.img
zpool create -f -o cachefile=none smoke /var/tmp/smoke.img
zfs create smoke/data
zfs set org.torsion.borgmatic:backup=auto smoke/data
echo hello >/smoke/data/hello.txt
zfs snapshot smoke/data@snap1
echo changed >/smoke/data/hello.txt
mkdir -p /mnt/snap
mount -t zfs smoke/data@snap1 /mnt/snap
test "$(cat /mnt/snap/hello.txt)" = hello
zfs list -H -p -t filesystem -o name,mountpoint,canmount,org.torsion.borgmatic:backup

if [ "$quick" != 1 ]; then
    export BORG_PASSPHRASE= BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes
    borg init -e none /var/tmp/repo
    borg create /var/tmp/repo::smoke /mnt/snap/./hello.txt
    borg list --short /var/tmp/repo::smoke | grep -qx hello.txt
    rm -rf /var/tmp/repo
fi
umount /mnt/snap
zfs destroy smoke/data@snap1
zpool destroy smoke
rm -f /var/tmp/smoke.img
echo "smoke: OK"
