#!/usr/bin/env bash
# Programs the tests run besides the Python packages and the Go-built cluster: Prometheus and
# promtool (tests/monitoring, tests/chart/test_alerts.py), from Debian's packages.
set -euo pipefail
if command -v prometheus >/dev/null && command -v promtool >/dev/null; then
  exit 0
fi
echo "[install-test-tools] installing Debian's prometheus (prometheus, promtool)"
sudo=""
[[ $(id -u) -eq 0 ]] || sudo="sudo"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends prometheus >/dev/null
command -v promtool >/dev/null || { echo "install-test-tools: promtool still missing" >&2; exit 1; }
