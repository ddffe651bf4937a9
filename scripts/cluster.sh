#!/usr/bin/env bash
# The test cluster for people: a real control plane (etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler, built from Go modules) and the test kubelet, on loopback.
#
#   scripts/cluster.sh up [--chart]   # build what is missing, start in the background, print KUBECONFIG
#   scripts/cluster.sh down           # stop it
#   scripts/cluster.sh status
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
RUN=$ROOT/build/cluster/run
PID=$RUN/cluster.pid
PY=${PYTHON:-$ROOT/.venv/bin/python}
cmd=${1:-}
shift || true
case $cmd in
  up)
    if [[ -f $PID ]] && kill -0 "$(cat "$PID")" 2>/dev/null; then
      echo "already up (pid $(cat "$PID")): export KUBECONFIG=$RUN/admin.kubeconfig"; exit 0
    fi
    "$ROOT/scripts/build-cluster.sh"
    rm -rf "$RUN" && mkdir -p "$RUN"
    (cd "$ROOT" && nohup "$PY" -m tests.cluster --root "$RUN" "$@" >"$RUN/cluster.out" 2>&1 & echo $! >"$PID")
    for _ in $(seq 1 240); do
      grep -q "cluster up" "$RUN/cluster.out" 2>/dev/null && { cat "$RUN/cluster.out"; exit 0; }
      kill -0 "$(cat "$PID")" 2>/dev/null || { cat "$RUN/cluster.out" >&2; exit 1; }
      sleep 0.5
    done
    echo "cluster.sh: not up within 120 s; see $RUN/cluster.out" >&2; exit 1 ;;
  down)
    [[ -f $PID ]] && kill "$(cat "$PID")" 2>/dev/null && echo "stopping (pid $(cat "$PID"))" || echo "not running"
    rm -f "$PID" ;;
  status)
    [[ -f $PID ]] && kill -0 "$(cat "$PID")" 2>/dev/null && echo "up: export KUBECONFIG=$RUN/admin.kubeconfig" \
      || echo "down" ;;
  *) echo "usage: scripts/cluster.sh up [--chart] | down | status" >&2; exit 2 ;;
esac
