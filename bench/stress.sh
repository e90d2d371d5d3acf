#!/usr/bin/env bash
# Real stress tools on a mount of one running daemon: stress-ng's file system
# stressors and fio's random read/write with checksummed verification.
#
#   bench/stress.sh                      every stressor, 20 s each
#   SECONDS_EACH=5 bench/stress.sh dir rename   just these stressors
#
# Prints each tool's outcome (exit status, failures, its own metrics) and the
# daemon's warnings; asserts nothing about time. Needs root, /dev/fuse,
# `make setup`, and `apt-get install stress-ng fio`. Leaves nothing behind.
set -u
cd "$(dirname "$0")/.."
REPO=$PWD
SECONDS_EACH=${SECONDS_EACH:-20}
STRESSORS=("$@")
if [ ${#STRESSORS[@]} -eq 0 ]; then
    STRESSORS=(dir dentry rename open hdd link symlink fallocate xattr filename chmod utime readahead seek io lockf
        fiemap flock getdent mknod fstat rmap fio)
fi

BASE=$(mktemp -d /tmp/realizefs-stress-XXXXXX)
chmod 755 "$BASE"
mkdir -p "$BASE/real" "$BASE/mnt"
cat > "$BASE/realizefs.toml" <<EOF
[node]
name = "stress"
data_dir = "$BASE/data"
mountpoint = "$BASE/mnt"

[consensus]
rest = "1s"

[[arena]]
name = "a"
root = "$BASE/real"
EOF

"$REPO/.venv/bin/realizefs" --config "$BASE/realizefs.toml" > "$BASE/daemon.log" 2>&1 &
DAEMON=$!
cleanup() {
    kill -TERM "$DAEMON" 2>/dev/null && wait "$DAEMON"
    mountpoint -q "$BASE/mnt" && umount -l "$BASE/mnt"
    rm -rf "$BASE"
}
trap cleanup EXIT
for _ in $(seq 200); do
    [ -e "$BASE/mnt/.realize/status" ] && break
    sleep 0.1
done
MNT="$BASE/mnt/a"
echo "daemon $DAEMON, mount $MNT, backing $BASE/real, ${SECONDS_EACH}s per stressor"
echo

declare -A RESULT
run_fio() {
    local dir="$MNT/fio"
    mkdir -p "$dir"
    local rc=0
    # random writes over the whole file, then every block read back and checked
    fio --name=randwrite --directory="$dir" --rw=randwrite --bs=4k --size=16m --numjobs=2 --ioengine=psync \
        --verify=crc32c --verify_fatal=1 --verify_state_save=0 --do_verify=1 --group_reporting 2>&1 || rc=$?
    # mixed random reads and writes, each written block checked soon after
    fio --name=randrw --directory="$dir" --rw=randrw --bs=4k --size=64m --numjobs=2 --ioengine=psync \
        --verify=crc32c --verify_fatal=1 --verify_state_save=0 --verify_backlog=1024 --do_verify=1 \
        --time_based --runtime="$SECONDS_EACH" --group_reporting 2>&1 || rc=$?
    # the same through mmap
    fio --name=mmap --directory="$dir" --rw=randrw --bs=4k --size=16m --ioengine=mmap \
        --verify=crc32c --verify_fatal=1 --verify_state_save=0 --verify_backlog=256 --do_verify=1 \
        --time_based --runtime="$SECONDS_EACH" --group_reporting 2>&1 || rc=$?
    rm -rf "$dir"
    return $rc
}

for s in "${STRESSORS[@]}"; do
    echo "=== $s"
    if [ "$s" = fio ]; then
        run_fio > "$BASE/out.txt"
        rc=$?
    else
        work="$MNT/stress-$s"
        mkdir -p "$work"
        stress-ng --"$s" 2 --temp-path "$work" --timeout "${SECONDS_EACH}s" --verify --metrics-brief \
            --oomable > "$BASE/out.txt" 2>&1
        rc=$?
        rm -rf "$work"
    fi
    grep -v -E "setting to a|dispatching hogs|defaulting to|cache allocate|^ *(lat|clat|slat|cpu|IO depths|submit|complete|issued|latency|[|]|bw \(|clat percentiles|[0-9.]+th)" \
        "$BASE/out.txt" | head -60
    echo "--- exit status $rc"
    RESULT[$s]=$rc
    if ! kill -0 "$DAEMON" 2>/dev/null; then
        echo "the daemon died"
        break
    fi
done

echo
echo "=== summary (stress-ng: 0 ok, 2 a stressor failed, 3 out of resources, 4 not implemented)"
for s in "${STRESSORS[@]}"; do
    printf '%-12s %s\n' "$s" "${RESULT[$s]:-not run}"
done
echo
echo "=== index after the run: .realize/status"
cat "$BASE/mnt/.realize/status"
echo "=== daemon warnings and errors"
grep -E " WARNING | ERROR |Traceback" "$BASE/daemon.log" | sort | uniq -c | sort -rn | head -40 || true
