#!/bin/bash
# vm-tests bench: measures zfs-snap (command and libzetta backends), borgmatic's own
# ZFS hook and the floor (one `zfs snapshot`, mount(2) each, umount2(2) each, one
# `zfs destroy -r`) on one pool with N tagged datasets, in one boot. Writes raw data
# to /share/bench-out; `vm-tests bench` turns it into docs/benchmarks.md.
#
# Processes are counted with BSD process accounting (acct(2), one record per process
# at exit, with pid and parent pid): nothing is shimmed, so nothing slows the tools.
# borg is run through a timing wrapper (bash, $EPOCHREALTIME) by every tool alike:
# borg's own time is the wrapper's create call; overhead = wall time - that.
set -u
out=/share/bench-out
w=/tmp/bench
mkdir -p "$out" "$w/logs" "$w/json" "$w/floor" "$w/mem"
zs=${ZFS_SNAP_BIN:-/share/bin/zfs-snap}
NS=${BENCH_NS:-1 10 100 500}
FILES=${BENCH_FILES:-3}
SECOND=${BENCH_SECOND_FILES:-3000}
MEM_N=${BENCH_MEM_N:-500}
export BORG_PASSPHRASE= BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes BORG_RELOCATED_REPO_ACCESS_IS_OK=yes
# zfs-snap runs with a user's defaults: each run recorded for monitoring
# (counted in its overhead), `--json` added to the create (borg's own work,
# inside borg's time), no borg process of its own (docs/benchmarks.md).
unset ZFS_SNAP_METRICS_INFO
log() { echo "bench: [$(cut -d' ' -f1 /proc/uptime)s] $*"; }
reps_for() { if [ "$1" -le 10 ]; then echo "${BENCH_REPS_SMALL:-3}"; elif [ "$1" -le 100 ]; then echo "${BENCH_REPS_MID:-2}"; else echo "${BENCH_REPS_BIG:-1}"; fi; }

# --- what the guest is -------------------------------------------------------
{
    echo "kernel=$(uname -r)"
    echo "zfs=$(zfs version | head -n1)"
    echo "zfs_kmod=$(zfs version | sed -n 2p)"
    echo "borg=$(borg --version)"
    echo "borgmatic=$(ls -d /opt/borgmatic/borgmatic-*.dist-info | sed 's/.*borgmatic-//; s/.dist-info//')"
    echo "python=$(python3 --version)"
    echo "cpus=$(nproc)"
    echo "mem_kb=$(awk '/MemTotal/ {print $2}' /proc/meminfo)"
    echo "cpu_model=$(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)"
    echo "arc_max=$(cat /sys/module/zfs/parameters/zfs_arc_max)"
    echo "files_per_dataset=$FILES"
    echo "second_files=$SECOND"
} >"$out/guest.txt"
cat "$out/guest.txt"

# --- helpers -----------------------------------------------------------------
cat >"$w/borg-timed" <<'EOF'
#!/bin/bash
# borg, timed: logs pid, parent, start, end, the parent's peak RSS and the arguments.
s=$EPOCHREALTIME
args="$*"
create=0
for a in "$@"; do [ "$a" = create ] && create=1 && break; done
if [ "$create" = 1 ] && [ -n "${BENCH_LIST-}" ]; then
    # Statuses of every file (A added, M modified, U unchanged), for the second-backup test.
    new=()
    for a in "$@"; do new+=("$a"); [ "$a" = create ] && new+=(--list --filter=AMUE); done
    /usr/bin/borg "${new[@]}" 2>>"$BENCH_LIST"
    rc=$?
else
    /usr/bin/borg "$@"
    rc=$?
fi
e=$EPOCHREALTIME
hwm=
while read -r k v _; do [ "$k" = VmHWM: ] && hwm=$v; done </proc/$PPID/status
printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$$" "$PPID" "$s" "$e" "$hwm" "$args" >>/tmp/bench/borg-calls.tsv
exit $rc
EOF
chmod 755 "$w/borg-timed"

cat >"$w/floor.py" <<'EOF'
# The floor: what any tool must do at least. One `zfs snapshot` of every name,
# mount(2) of each snapshot (parents first), umount2(2) of each (children first),
# one `zfs destroy -r pool@name`. Timed inside the process (Python's own start-up
# is not part of the floor).
import ctypes, json, os, subprocess, sys, time
out, pool, name, root, listing = sys.argv[1:6]
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
libc = ctypes.CDLL(None, use_errno=True)
libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p]
libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
datasets = [l.split("\t") for l in open(listing).read().splitlines() if l]
datasets.sort(key=lambda d: d[1])
t0 = time.monotonic()
subprocess.run(["zfs", "snapshot"] + [f"{d}@{name}" for d, _ in datasets], check=True)
t1 = time.monotonic()
made = []
targets = []
for d, mp in datasets:
    target = (root + mp).encode()
    if not os.path.isdir(target):
        os.makedirs(target, mode=0o700)
        made.append(target)
    if libc.mount(f"{d}@{name}".encode(), target, b"zfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, None) != 0:
        e = ctypes.get_errno()
        sys.exit(f"mount {d}@{name} {target}: {os.strerror(e)}")
    targets.append(target)
t2 = time.monotonic()
for target in reversed(targets):
    if libc.umount2(target, 0) != 0:
        e = ctypes.get_errno()
        sys.exit(f"umount2 {target}: {os.strerror(e)}")
for target in reversed(made):
    os.rmdir(target)
t3 = time.monotonic()
subprocess.run(["zfs", "destroy", "-r", f"{pool}@{name}"], check=True)
t4 = time.monotonic()
ms = lambda a, b: (b - a) * 1000.0
json.dump({"datasets": len(datasets), "snapshot_ms": ms(t0, t1), "mount_ms": ms(t1, t2),
           "umount_ms": ms(t2, t3), "destroy_ms": ms(t3, t4), "total_ms": ms(t0, t4)},
          open(out, "w"))
EOF

# acct(2) on for the whole run (needs an existing file).
: >"$w/pacct"
python3 -c 'import ctypes, sys; l = ctypes.CDLL(None, use_errno=True); sys.exit(0 if l.acct(sys.argv[1].encode()) == 0 else "acct: errno %d" % ctypes.get_errno())' "$w/pacct" \
    || log "process accounting unavailable: process counts will be missing"

# measure ID CMD...: runs CMD in the background (so its pid is known), waits,
# records id, pid, start, end, exit code.
measure() {
    local id=$1 s e rc pid
    shift
    s=$EPOCHREALTIME
    "$@" >"$w/logs/$id.log" 2>&1 &
    pid=$!
    if [ -n "${SAMPLE_MEM-}" ]; then
        # Peak RSS (VmHWM) while it runs, up to its last moments.
        local st=R
        while [ -e /proc/$pid ] && [ "$st" != Z ]; do
            while read -r k v _; do
                case $k in VmHWM:) echo "$v" ;; State:) st=$v ;; esac
            done </proc/$pid/status 2>/dev/null
            sleep 0.05
        done >"$w/mem/$id.txt"
    fi
    wait "$pid"
    rc=$?
    e=$EPOCHREALTIME
    printf '%s\t%s\t%s\t%s\t%s\n' "$id" "$pid" "$s" "$e" "$rc" >>"$w/runs.tsv"
    if [ "$rc" -ne 0 ]; then
        log "$id: exit $rc; its output:"
        tail -n 30 "$w/logs/$id.log"
    fi
    return 0
}

zs_run() { # backend id repo source...
    local b=$1 id=$2 repo=$3
    shift 3
    measure "$id" "$zs" --backend "$b" --timings-json "$w/json/$id.json" wrap -- "$w/borg-timed" create "$repo::$id" "$@"
}

bm_config() { # file repo zfs(yes|no) source...
    local f=$1 repo=$2 zfs=$3
    shift 3
    {
        echo "source_directories:"
        for s in "$@"; do echo "    - $s"; done
        echo "repositories:"
        echo "    - path: $repo"
        echo "      label: bench"
        echo "local_path: $w/borg-timed"
        echo "unknown_unencrypted_repo_access_is_ok: true"
        echo "relocated_repo_access_is_ok: true"
        echo "store_config_files: false"
        [ "$zfs" = yes ] && echo "zfs: {}"
    } >"$f"
}

bm_run() { # id config
    measure "$1" borgmatic --config "$2" create
}

floor_run() { # id pool listing
    measure "$1" python3 "$w/floor.py" "$w/floor/$1.json" "$2" "bench-floor-$1" "$w/floor-root" "$3"
}

new_repo() {
    borg init -e none "$1" >/dev/null 2>&1 || log "borg init $1 failed"
}

leftovers() {
    local s m
    s=$(zfs list -H -t snapshot -o name | wc -l)
    m=$(grep -c '@' /proc/self/mounts)
    if [ "$s" != 0 ] || [ "$m" != 0 ]; then
        log "LEFTOVERS after $1: $s snapshots, $m snapshot mounts"
        zfs list -H -t snapshot -o name | head
    fi
}

# --- the pool ----------------------------------------------------------------
truncate -s 1536M /var/tmp/bench.img
zpool create -f -o cachefile=none -O atime=off bench /var/tmp/bench.img
for r in zs-command zs-libzetta bm bm-nozfs; do new_repo "/var/tmp/repo-$r"; done
bm_config "$w/bm.yaml" /var/tmp/repo-bm yes /bench
bm_config "$w/bm-nozfs.yaml" /var/tmp/repo-bm-nozfs no /bench

have=0
grow_to() {
    local n=$1 i d f s e
    s=$EPOCHREALTIME
    for ((i = have + 1; i <= n; i++)); do
        d=$(printf 'd%03d' "$i")
        zfs create -o org.torsion.borgmatic:backup=auto "bench/$d"
        for ((f = 1; f <= FILES; f++)); do echo "file $f of $d" >"/bench/$d/f$f.txt"; done
    done
    e=$EPOCHREALTIME
    printf '%s\t%s\t%s\t%s\n' "$have" "$n" "$s" "$e" >>"$w/create.tsv"
    have=$n
}

# Warm-up (not recorded in the tables): borg's version check is cached by zfs-snap
# in its runtime root; page cache for every program.
grow_to 1
zfs list -H -o name,mountpoint -r bench >"$w/datasets-warm.tsv"
zs_run command warm-zs-command /var/tmp/repo-zs-command /bench
zs_run libzetta warm-zs-libzetta /var/tmp/repo-zs-libzetta /bench
bm_run warm-bm "$w/bm.yaml"
floor_run warm-floor bench "$w/datasets-warm.tsv"
leftovers warm-up

for n in $NS; do
    log "growing the pool to $n datasets"
    grow_to "$n"
    zfs list -H -o name,mountpoint -r bench >"$w/datasets-$n.tsv"
    reps=$(reps_for "$n")
    for ((rep = 1; rep <= reps; rep++)); do
        log "N=$n rep $rep/$reps"
        zs_run command "zs-command-$n-$rep" /var/tmp/repo-zs-command /bench
        zs_run libzetta "zs-libzetta-$n-$rep" /var/tmp/repo-zs-libzetta /bench
        bm_run "bm-$n-$rep" "$w/bm.yaml"
        floor_run "floor-$n-$rep" bench "$w/datasets-$n.tsv"
        if [ "$rep" = 1 ]; then bm_run "bm-nozfs-$n-$rep" "$w/bm-nozfs.yaml"; fi
        leftovers "N=$n rep $rep"
    done
    if [ "$n" = "$MEM_N" ]; then
        log "N=$n peak memory"
        SAMPLE_MEM=1 zs_run command "mem-zs-command-$n" /var/tmp/repo-zs-command /bench
        SAMPLE_MEM=1 zs_run libzetta "mem-zs-libzetta-$n" /var/tmp/repo-zs-libzetta /bench
        leftovers "memory runs"
    fi
done
zpool destroy bench
rm -f /var/tmp/bench.img /var/tmp/repo-* -r

# --- second backup of unchanged files ----------------------------------------
# Two data sets of $SECOND files each, in their own datasets:
#   tiny:  one line per file (borg's per-file work is all there is to do);
#   mixed: sizes 1 KiB, 2 KiB, ... 1 MiB in turn (random, incompressible content),
#          where reading a file again costs something, as on a real host.
# Each tool backs a set up, nothing changes, it backs it up again; plain borg over the
# live path is the reference (what borg alone does, no snapshot at all).
log "second-backup test: $SECOND files per set"
truncate -s 2G /var/tmp/bench2.img
zpool create -f -o cachefile=none -O atime=off bench2 /var/tmp/bench2.img
zfs create bench2/tiny
zfs create bench2/mixed
python3 - "$SECOND" <<'PY'
import os, sys
n = int(sys.argv[1])
for i in range(n):
    for s in ("tiny", "mixed"):
        d = f"/bench2/{s}/dir{i // 100}"
        os.makedirs(d, exist_ok=True)
        with open(f"{d}/f{i}", "wb") as f:
            f.write(f"small file {i}\n".encode() if s == "tiny" else os.urandom(1024 << (i % 11)))
PY
du -sb /bench2/tiny /bench2/mixed | tee "$w/second-sizes.tsv"
# borg does not remember files whose timestamps are as new as the newest it saw.
sleep 2
plain_run() { # id repo source...: borg alone, through the same timing wrapper
    local id=$1 repo=$2
    shift 2
    # `; exit` keeps bash from exec'ing, so the wrapper's parent is the measured pid.
    measure "$id" bash -c '"$@"; exit $?' _ "$w/borg-timed" create "$repo::$id" "$@"
}
for set in tiny mixed; do
    for r in zs-command zs-libzetta bm borg; do new_repo "/var/tmp/repo2-$set-$r"; done
    bm_config "$w/bm2-$set.yaml" "/var/tmp/repo2-$set-bm" yes "/bench2/$set"
    for run in 1 2; do
        for t in zs-command zs-libzetta; do
            BENCH_LIST="$w/list-second-$set-$t-$run.txt" zs_run "${t#zs-}" "second-$set-$t-$run" "/var/tmp/repo2-$set-$t" "/bench2/$set"
        done
        BENCH_LIST="$w/list-second-$set-bm-$run.txt" bm_run "second-$set-bm-$run" "$w/bm2-$set.yaml"
        BENCH_LIST="$w/list-second-$set-borg-$run.txt" plain_run "second-$set-borg-$run" "/var/tmp/repo2-$set-borg" "/bench2/$set"
    done
    leftovers "second-backup test ($set)"
    rm -rf /var/tmp/repo2-"$set"-*
done
zpool destroy bench2
rm -f /var/tmp/bench2.img

python3 -c 'import ctypes; ctypes.CDLL(None).acct(None)'
cp -r "$w"/. "$out"/
log "done"
