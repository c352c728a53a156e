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

mkdir -p /share
if grep -qw vmtests.systemd=1 /proc/cmdline; then
    # The systemd guest: systemd becomes PID 1 and runs the job as a unit
    # (its output on the console), which powers the machine off at the end.
    mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000,cache=loose share /share ||
        echo "vm-tests init: cannot mount the 9p share" >&2
    mkdir -p /etc/systemd/system/multi-user.target.wants
    cat >/etc/systemd/system/vm-tests-job.service <<'UNIT'
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
    ln -sf ../vm-tests-job.service /etc/systemd/system/multi-user.target.wants/vm-tests-job.service
    for unit in serial-getty@ttyS0.service getty@tty1.service console-getty.service; do
        ln -sf /dev/null "/etc/systemd/system/$unit"
    done
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
