#!/usr/bin/env bash
# berth against a local 3-member etcd and a one-node Slurm, in one run on one machine.
#
#   bench/compare.sh [JOBS_PER_LEVEL]        (run as root on Debian 12; default 400)
#
# Installs what is missing from Debian's packages (etcd-server, etcd-client, slurm-wlm,
# munge), starts a 3-member etcd and a one-node Slurm (munged, slurmctld, slurmd) on
# loopback, and measures in the same session:
#   - replicated writes: etcd's own `etcdctl check perf` against berth's
#     `submit_load --replicas 3` (three berthd replicas, every submit durable on a quorum);
#   - the sbatch process path: JOBS_PER_LEVEL held jobs submitted by 1, 8 and 64 shell
#     loops running `sbatch`, against Slurm's `sbatch` and against berth's (`berth dev`).
# and prints one table of ratios. Everything it starts is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
JOBS=${1:-400}
LEVELS=(1 8 64)
WORK=$(mktemp -d /tmp/berth-compare.XXXXXX)
chmod 755 "$WORK" # munged runs as munge and must reach its files here
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    pkill -f "slurmctld -f $WORK" 2>/dev/null || true
    pkill -f "slurmd -f $WORK" 2>/dev/null || true
    wait 2>/dev/null || true
}
trap cleanup EXIT
say() { echo "compare: $*" >&2; }

need=()
command -v etcd >/dev/null || need+=(etcd-server)
command -v etcdctl >/dev/null || need+=(etcd-client)
command -v slurmctld >/dev/null || need+=(slurm-wlm)
command -v munged >/dev/null || need+=(munge)
if ((${#need[@]})); then
    say "installing ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
# Debian starts the packaged services; this run uses its own, on its own ports.
systemctl stop slurmctld slurmd etcd 2>/dev/null || true

say "building berth (release)"
cargo build --release --locked -q -p berth-cli -p berth-scheduler -p berth-agent
cargo build --release --locked -q -p berth-bench --bin submit_load
BERTH=$PWD/target/release/berth

# --- etcd: three members on loopback -------------------------------------------------
cluster="e1=http://127.0.0.1:23801,e2=http://127.0.0.1:23802,e3=http://127.0.0.1:23803"
for i in 1 2 3; do
    etcd --name "e$i" --data-dir "$WORK/etcd$i" \
        --listen-peer-urls "http://127.0.0.1:2380$i" \
        --initial-advertise-peer-urls "http://127.0.0.1:2380$i" \
        --listen-client-urls "http://127.0.0.1:2379$i" \
        --advertise-client-urls "http://127.0.0.1:2379$i" \
        --initial-cluster "$cluster" --initial-cluster-state new \
        >"$WORK/etcd$i.log" 2>&1 &
    PIDS+=($!)
done
endpoints="127.0.0.1:23791,127.0.0.1:23792,127.0.0.1:23793"
for _ in $(seq 50); do
    ETCDCTL_API=3 etcdctl --endpoints "$endpoints" endpoint health >/dev/null 2>&1 && break
    sleep 0.2
done
say "etcdctl check perf --load=l (60 s)"
perf=$(ETCDCTL_API=3 etcdctl --endpoints "$endpoints" check perf --load=l 2>&1 || true)
# etcdctl prints `PASS: Throughput is N writes/s`, or `FAIL: Throughput too low: N writes/s`
# when N is under 90 % of the load's target (l: 8,000); N is the measure either way.
etcd_wps=$(grep -oE 'Throughput (is|too low:) [0-9]+ writes/s' <<<"$perf" | grep -oE '[0-9]+' | head -1)
if [ -z "$etcd_wps" ]; then
    echo "compare.sh: etcdctl check perf printed no throughput:" >&2
    echo "$perf" | tail -20 >&2
    etcd_wps=0
fi
for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
wait 2>/dev/null || true
PIDS=()

# --- berth: three replicas, replicated submits ----------------------------------------
say "submit_load --replicas 3"
load=$(target/release/submit_load 4000 1,8,64,256 --replicas 3 2>&1)
# Its table rows read `| clients | submits/s | p50 | p99 |`.
berth_wps=$(awk -F'|' '/^\| [0-9]/ { r = $3 + 0; if (r > best) best = r } END { print best + 0 }' <<<"$load")

# --- the sbatch loop ------------------------------------------------------------------
# loop TOOL_DIR N: N shell loops, JOBS/N held jobs each, through TOOL_DIR/sbatch; jobs/s.
loop() {
    local dir=$1 n=$2 each=$((JOBS / $2)) start end
    start=$(date +%s.%N)
    for _ in $(seq "$n"); do
        (for _ in $(seq "$each"); do
            "$dir/sbatch" -H -o /dev/null --wrap true >/dev/null || exit 1
        done) &
    done
    wait
    end=$(date +%s.%N)
    echo "$start $end $((each * n))" | awk '{ printf "%.0f", $3 / ($2 - $1) }'
}

say "one-node Slurm on loopback"
mkdir -p "$WORK/slurm/state" "$WORK/slurm/spool" "$WORK/munge"
dd if=/dev/urandom of="$WORK/munge/munge.key" bs=1024 count=1 status=none
chown -R munge:munge "$WORK/munge" 2>/dev/null || true
chmod 700 "$WORK/munge"
chmod 400 "$WORK/munge/munge.key"
mkdir -p /run/munge && chown munge:munge /run/munge 2>/dev/null || true
sudo_munge() { if id munge >/dev/null 2>&1; then runuser -u munge -- "$@"; else "$@"; fi; }
sudo_munge munged --key-file "$WORK/munge/munge.key" --socket "$WORK/munge/sock" \
    --pid-file "$WORK/munge/pid" --log-file "$WORK/munge/log" --seed-file "$WORK/munge/seed" -f
cat >"$WORK/slurm.conf" <<EOF
ClusterName=compare
SlurmctldHost=localhost
SlurmctldPort=26817
SlurmdPort=26818
AuthType=auth/munge
AuthInfo=socket=$WORK/munge/sock
SlurmUser=root
StateSaveLocation=$WORK/slurm/state
SlurmdSpoolDir=$WORK/slurm/spool
SlurmctldPidFile=$WORK/slurm/ctld.pid
SlurmdPidFile=$WORK/slurm/d.pid
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
MaxJobCount=1000000
NodeName=localhost CPUs=$(nproc) State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
export SLURM_CONF=$WORK/slurm.conf
slurmctld -f "$WORK/slurm.conf" -L "$WORK/slurm/ctld.log"
slurmd -f "$WORK/slurm.conf" -L "$WORK/slurm/d.log"
for _ in $(seq 50); do scontrol ping 2>/dev/null | grep -q UP && break; sleep 0.2; done
slurm_bin=$(dirname "$(command -v sbatch)")
declare -A slurm_rate berth_rate
for n in "${LEVELS[@]}"; do
    slurm_rate[$n]=$(loop "$slurm_bin" "$n")
    say "slurm sbatch, $n loops: ${slurm_rate[$n]} jobs/s"
done
unset SLURM_CONF
pkill -f "slurmctld -f $WORK" || true
pkill -f "slurmd -f $WORK" || true

say "berth dev"
"$BERTH" dev --state-dir "$WORK/berth" >"$WORK/berth-dev.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do
    grep -q "berth dev: ready" "$WORK/berth-dev.log" 2>/dev/null && break
    sleep 0.2
done
export "$(grep -oE 'BERTH_SERVER=[^;]+' "$WORK/berth-dev.log" | head -1)"
mkdir -p "$WORK/berth-bin"
ln -sf "$BERTH" "$WORK/berth-bin/sbatch"
for n in "${LEVELS[@]}"; do
    berth_rate[$n]=$(loop "$WORK/berth-bin" "$n")
    say "berth sbatch, $n loops: ${berth_rate[$n]} jobs/s"
done

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f×", a / b; else print "n/a" }'; }
echo
echo "$(date -u +%F), $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
echo
echo "| measure | berth | reference | berth / reference |"
echo "|---|---:|---:|---:|"
echo "| replicated writes/s, 3 members (best level) | $berth_wps | etcd $etcd_wps (check perf l) | $(ratio "$berth_wps" "$etcd_wps") |"
for n in "${LEVELS[@]}"; do
    echo "| sbatch jobs/s, $n loop(s) | ${berth_rate[$n]} | Slurm ${slurm_rate[$n]} | $(ratio "${berth_rate[$n]}" "${slurm_rate[$n]}") |"
done
