#!/usr/bin/env bash
# A real one-node SLURM on this machine, for tests/slurm (docs/scale.md).
#
#   tests/slurm/start_cluster.sh        # install (if missing), configure, start; waits for an idle node
#   export SLURM_CONF=/tmp/facrnn-slurm/slurm.conf   # what it prints last: sinfo/sbatch find the cluster
#   tests/slurm/stop_cluster.sh
#
# Needs root (slurmd runs jobs as their user; munged and the daemons run as root here).
# Installs Debian's slurm-wlm and munge with apt-get when they are missing. Idempotent: a
# cluster that is already up is left running. State (slurm.conf, pid files, spool, logs) lives
# in $FACRNN_SLURM_DIR (default /tmp/facrnn-slurm).
set -euo pipefail

STATE_DIR="${FACRNN_SLURM_DIR:-/tmp/facrnn-slurm}"
CONF="$STATE_DIR/slurm.conf"
TIMEOUT_S="${FACRNN_SLURM_TIMEOUT_S:-60}"
export SLURM_CONF="$CONF"

say() { echo "start_cluster: $*" >&2; }
die() { say "$*"; exit 1; }

[ "$(id -u)" -eq 0 ] || die "needs root (slurmd, munged); expected to run as uid 0, got $(id -u)"

running() {  # running PIDFILE: the process named in PIDFILE is alive
    [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null
}

node_idle() {
    sinfo -h -N -o '%T' 2>/dev/null | grep -qE '^(idle|mixed|allocated)'
}

# ---------------------------------------------------------------- already up?
if running "$STATE_DIR/slurmctld.pid" && running "$STATE_DIR/slurmd.pid" && node_idle; then
    say "already running ($CONF)"
    echo "export SLURM_CONF=$CONF"
    exit 0
fi

# ---------------------------------------------------------------- packages
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null; then
    command -v apt-get >/dev/null || die "slurm-wlm/munge missing and no apt-get to install them"
    say "installing slurm-wlm and munge (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null \
        || die "apt-get install slurm-wlm munge failed"
fi

# ---------------------------------------------------------------- munge
if [ ! -s /etc/munge/munge.key ]; then
    say "creating /etc/munge/munge.key"
    mkdir -p /etc/munge
    if command -v mungekey >/dev/null; then
        mungekey -c -f -k /etc/munge/munge.key
    else
        dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
    fi
    chmod 400 /etc/munge/munge.key
fi
mkdir -p /run/munge /var/log/munge /var/lib/munge
chmod 755 /run/munge
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    say "starting munged"
    munged --force
    for _ in $(seq 20); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.25; done
    munge -n | unmunge >/dev/null 2>&1 || die "munged does not answer (see /var/log/munge/munged.log)"
fi

# ---------------------------------------------------------------- slurm.conf
HOST="$(hostname)"
CPUS="$(nproc)"
MEM_MB="$(free -m | awk '/^Mem:/ {print int($2 * 0.9)}')"
mkdir -p "$STATE_DIR"/{spool/ctld,spool/d,log}
cat > "$CONF" <<CONF
# one-node SLURM written by tests/slurm/start_cluster.sh
ClusterName=facrnn
SlurmctldHost=$HOST
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
SlurmctldPidFile=$STATE_DIR/slurmctld.pid
SlurmdPidFile=$STATE_DIR/slurmd.pid
StateSaveLocation=$STATE_DIR/spool/ctld
SlurmdSpoolDir=$STATE_DIR/spool/d
SlurmctldLogFile=$STATE_DIR/log/slurmctld.log
SlurmdLogFile=$STATE_DIR/log/slurmd.log
SlurmctldPort=${FACRNN_SLURMCTLD_PORT:-6817}
SlurmdPort=${FACRNN_SLURMD_PORT:-6818}
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
MinJobAge=300
Waittime=0
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=1,sched_interval=1
NodeName=$HOST CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
CONF

# ---------------------------------------------------------------- daemons
running "$STATE_DIR/slurmctld.pid" || { say "starting slurmctld"; slurmctld -f "$CONF" -c; }
running "$STATE_DIR/slurmd.pid" || { say "starting slurmd"; slurmd -f "$CONF"; }

deadline=$((SECONDS + TIMEOUT_S))
until node_idle; do
    if [ "$SECONDS" -ge "$deadline" ]; then
        sinfo -N -l >&2 || true
        tail -n 20 "$STATE_DIR/log/slurmctld.log" "$STATE_DIR/log/slurmd.log" >&2 || true
        die "node $HOST not idle after ${TIMEOUT_S}s; expected sinfo to show it idle (logs in $STATE_DIR/log)"
    fi
    sleep 0.5
done
say "node $HOST idle: $CPUS CPUs, ${MEM_MB} MB ($CONF)"
echo "export SLURM_CONF=$CONF"
