#!/bin/sh
# PID 1 of the vm-tests guest (the image's /init; the rootfs is the initramfs).
# Mounts the basics, loads the modules, mounts the 9p share and runs the job the
# harness left in it (/share/.vm/run.sh). Always powers the machine off at the end,
# so that qemu (-no-reboot) exits.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root

mount -t proc -o nosuid,nodev,noexec proc /proc
mount -t sysfs -o nosuid,nodev,noexec sysfs /sys
mount -t devtmpfs -o mode=0755,nosuid devtmpfs /dev
exec </dev/console >/dev/console 2>&1
mkdir -p /dev/pts /dev/shm
mount -t devpts -o gid=5,mode=0620,ptmxmode=0666 devpts /dev/pts
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /dev/shm
mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /run
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /tmp
# File vdevs live here: size from the kernel command line (vmtests.vartmp=), default 2G.
vartmp=2G
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        vmtests.vartmp=*) vartmp=${arg#vmtests.vartmp=} ;;
    esac
done
mkdir -p /var/tmp
mount -t tmpfs -o mode=1777,size="$vartmp" tmpfs /var/tmp
hostname vm-tests 2>/dev/null

# Module options (e.g. zfs.zfs_arc_max=) come from the kernel command line.
for m in virtio_pci 9pnet_virtio 9p loop spl zfs; do
    modprobe "$m" || echo "vm-tests init: modprobe $m failed" >&2
done

# The seed's host (`vmtests.seedhost=1`, with systemd): root on ZFS. A pool
# whose vdev is a file in a tmpfs under /run (an initramfs has no udev to
# make a whole disk's partition nodes, and the guest's disk would be thrown
# away anyway), datasets laid out as the OpenZFS root-on-ZFS guide does
# (rpool/ROOT/debian on /, rpool/var/lib, rpool/home; /etc, /tmp and
# /var/tmp's parent on the root dataset), this rootfs copied in, then
# systemd started from it with switch_root, as an initramfs boots a real
# host. File vdevs of the tests' own pools stay in a /var/tmp tmpfs.
root=
if grep -qw vmtests.seedhost=1 /proc/cmdline; then
    root=/newroot
    t0=$(cut -d' ' -f1 /proc/uptime)
    mkdir -p /newroot /run/rpool
    mount -t tmpfs -o mode=0700,size=2G tmpfs /run/rpool
    truncate -s 2G /run/rpool/vdev
    zpool create -f -o ashift=12 -o cachefile=none -O compression=lz4 -O atime=off \
        -O xattr=sa -O acltype=posixacl -O mountpoint=none -O canmount=off \
        -R /newroot rpool /run/rpool/vdev &&
        zfs create -o canmount=off -o mountpoint=none rpool/ROOT &&
        zfs create -o canmount=noauto -o mountpoint=/ rpool/ROOT/debian &&
        zfs mount rpool/ROOT/debian &&
        zfs create -o mountpoint=/home rpool/home &&
        zfs create -o canmount=off -o mountpoint=/var rpool/var &&
        zfs create rpool/var/lib ||
        echo "vm-tests init: cannot make the root pool" >&2
    # Everything but the mounts (proc, sys, dev, run, tmp, var/tmp).
    tar -C / --one-file-system --exclude=./newroot --exclude=./init -cf - . |
        tar -C /newroot -xpf - || echo "vm-tests init: cannot copy the rootfs" >&2
    zfs umount -a && zpool export rpool && zpool import -N -f -o cachefile=none -d /run/rpool rpool ||
        echo "vm-tests init: cannot import the root pool" >&2
    mount -t zfs -o zfsutil rpool/ROOT/debian /newroot &&
        mount -t zfs -o zfsutil rpool/var/lib /newroot/var/lib &&
        mount -t zfs -o zfsutil rpool/home /newroot/home ||
        echo "vm-tests init: cannot mount the root datasets" >&2
    umount /var/tmp /tmp
    mkdir -p /newroot/var/tmp /newroot/share
    chmod 1777 /newroot/tmp /newroot/var/tmp
    mount -t tmpfs -o mode=1777,size="$vartmp" tmpfs /newroot/var/tmp
    echo "vm-tests init: root on ZFS (rpool) in $(cut -d' ' -f1 /proc/uptime) s (from $t0 s)"
fi

mkdir -p $root/share
if grep -qw vmtests.systemd=1 /proc/cmdline; then
    # The systemd guest: systemd becomes PID 1 and runs the job as a unit
    # (its output on the console), which powers the machine off at the end.
    mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000,cache=loose share $root/share ||
        echo "vm-tests init: cannot mount the 9p share" >&2
    mkdir -p $root/etc/systemd/system/multi-user.target.wants
    cat >$root/etc/systemd/system/vm-tests-job.service <<'UNIT'
[Unit]
Description=vm-tests job
After=basic.target dbus.socket

[Service]
Type=oneshot
ExecStart=/bin/sh -c 'if [ -x /share/.vm/run.sh ]; then /share/.vm/run.sh; else echo "vm-tests init: no /share/.vm/run.sh" >&2; fi; sync; umount /share; echo o >/proc/sysrq-trigger'
StandardOutput=tty
StandardError=tty
TTYPath=/dev/console
UNIT
    ln -sf ../vm-tests-job.service $root/etc/systemd/system/multi-user.target.wants/vm-tests-job.service
    for unit in serial-getty@ttyS0.service getty@tty1.service console-getty.service; do
        ln -sf /dev/null "$root/etc/systemd/system/$unit"
    done
    if [ -n "$root" ]; then
        exec switch_root "$root" /lib/systemd/systemd --log-level=warning
    fi
    exec /lib/systemd/systemd --log-level=warning
fi
if ! mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000,cache=loose share /share; then
    echo "vm-tests init: cannot mount the 9p share" >&2
elif [ -x /share/.vm/run.sh ]; then
    /share/.vm/run.sh
else
    echo "vm-tests init: no /share/.vm/run.sh: nothing to do" >&2
fi

sync
umount /share 2>/dev/null
echo o >/proc/sysrq-trigger
sleep 10
# Not reached unless sysrq is unavailable; the kernel panics when PID 1 exits
# (panic=-1 + qemu -no-reboot: qemu exits).
exit 1
