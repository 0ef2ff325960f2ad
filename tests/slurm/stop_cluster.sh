#!/usr/bin/env bash
# Stops the one-node SLURM of tests/slurm/start_cluster.sh by its pid files (slurmd, then
# slurmctld); running jobs are cancelled first. munged is left running (other tools may use it).
set -uo pipefail

STATE_DIR="${FACRNN_SLURM_DIR:-/tmp/facrnn-slurm}"
export SLURM_CONF="$STATE_DIR/slurm.conf"

[ -f "$SLURM_CONF" ] && command -v scancel >/dev/null && scancel --quiet --full --user="$(id -un)" 2>/dev/null || true

stop() {  # stop NAME: TERM the pid in STATE_DIR/NAME.pid, wait up to 10 s, then KILL
    local pidfile="$STATE_DIR/$1.pid" pid
    [ -s "$pidfile" ] || return 0
    pid="$(cat "$pidfile")"
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid"
        for _ in $(seq 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
        kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
        echo "stop_cluster: stopped $1 ($pid)" >&2
    fi
    rm -f "$pidfile"
}

stop slurmd
stop slurmctld
exit 0
