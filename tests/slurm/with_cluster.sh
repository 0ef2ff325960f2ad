#!/usr/bin/env bash
# Run a command with the one-node SLURM of tests/slurm/start_cluster.sh up, and stop the
# cluster afterwards if this script started it (docs/scale.md).
#
#   tests/slurm/with_cluster.sh make test                        # .ci/run: SLURM tests join the suite when a cluster can start
#   tests/slurm/with_cluster.sh --required .venv/bin/python -m pytest tests/slurm   # make test-slurm
#
# Without --required a cluster that cannot start (not root, no apt-get, no packages) is one
# line on stderr and the command runs anyway: the SLURM tests then skip with the reason.
# The command's exit status is this script's.
set -uo pipefail

REQUIRED=0
if [ "${1:-}" = "--required" ]; then REQUIRED=1; shift; fi
[ "$#" -ge 1 ] || { echo "usage: $0 [--required] COMMAND [ARG...]" >&2; exit 2; }

HERE="$(cd "$(dirname "$0")" && pwd)"
STATE_DIR="${FACRNN_SLURM_DIR:-/tmp/facrnn-slurm}"
started=0
if [ -s "$STATE_DIR/slurmctld.pid" ] && kill -0 "$(cat "$STATE_DIR/slurmctld.pid")" 2>/dev/null; then
    already=1
else
    already=0
fi

if "$HERE/start_cluster.sh" >/dev/null; then
    export SLURM_CONF="$STATE_DIR/slurm.conf"
    [ "$already" -eq 1 ] || started=1
    echo "with_cluster: SLURM up ($SLURM_CONF)" >&2
elif [ "$REQUIRED" -eq 1 ]; then
    echo "with_cluster: could not start a SLURM cluster (see the lines above); expected root and apt-get or slurm-wlm+munge installed" >&2
    exit 1
else
    echo "with_cluster: no SLURM cluster (see the lines above): tests/slurm will skip" >&2
fi

"$@"
status=$?
[ "$started" -eq 1 ] && "$HERE/stop_cluster.sh"
exit "$status"
