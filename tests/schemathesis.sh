#!/bin/bash
# LXD's own REST spec, fuzzed: schemathesis generates requests from LXD 5.0.2's swagger spec
# (tests/schemathesis/lxd-5.0.2-rest-api.yaml, `doc/rest-api.yaml` at tag lxd-5.0.2, unmodified;
# the small patch it needs is in tests/schemathesis/hooks.py) against a bivy daemon made for the
# run. Fails on any 5xx other than 501, on a request that times out, or if the daemon dies.
#
#   tests/schemathesis.sh [BIVY_BINARY [SCHEMATHESIS_ARGS...]]   (default: target/debug/bivy), as root
#
# Extra arguments go to `schemathesis run` (e.g. `--include-path-regex '^/1.0/instances'`).
# Work files go to target/schemathesis/ (venv, daemon dir and log, junit report).
# SCHEMATHESIS_MAX_EXAMPLES (default 25) caps the examples per operation; SCHEMATHESIS_SEED
# (default 1) makes a run repeatable.
set -euo pipefail
cd "$(dirname "$0")/.."

BIVY=$(realpath "${1:-target/debug/bivy}")
[ $# -gt 0 ] && shift
HERE=$PWD/tests/schemathesis
WORK=$PWD/target/schemathesis
PY=${SCHEMATHESIS_PYTHON:-/usr/bin/python3}
# schemathesis 3.x; hypothesis pinned to a version that works with it.
SCHEMATHESIS_VERSION=3.39.16
HYPOTHESIS_VERSION=6.129.0

[ "$(id -u)" = 0 ] || { echo "schemathesis: must run as root (real containers)" >&2; exit 1; }
[ -x "$BIVY" ] || { echo "schemathesis: no bivy binary at $BIVY" >&2; exit 1; }

mkdir -p "$WORK"
DAEMON_DIR=$WORK/bivy
LOG=$WORK/daemon.log
DAEMON_PID=
FORWARD_PID=

# shellcheck source=tests/lib/daemon.sh
. tests/lib/daemon.sh # (the script runs from the repo root)

cleanup() {
  local rc=$?
  if [ -n "$FORWARD_PID" ]; then
    kill -TERM "$FORWARD_PID" 2>/dev/null || true
    wait "$FORWARD_PID" 2>/dev/null || true
  fi
  daemon_teardown
  show_log_on_failure "$rc"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
# Nothing may be left over from an interrupted run (no daemon runs yet: only the directory).
daemon_teardown

VENV=$WORK/venv
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
  "schemathesis==$SCHEMATHESIS_VERSION" "hypothesis==$HYPOTHESIS_VERSION"

daemon_spawn
for _ in $(seq 200); do
  [ -S "$DAEMON_DIR/unix.socket" ] && api GET /1.0 >/dev/null 2>&1 && break
  kill -0 "$DAEMON_PID" 2>/dev/null || { echo "schemathesis: bivy daemon exited" >&2; exit 1; }
  sleep 0.1
done
api GET /1.0 | jq -e '.metadata.api_version == "1.0"' >/dev/null

# schemathesis speaks TCP; the daemon listens on its unix socket only.
rm -f "$WORK/port"
PYTHONDONTWRITEBYTECODE=1 "$VENV/bin/python" "$HERE/unix_forward.py" "$DAEMON_DIR/unix.socket" "$WORK/port" &
FORWARD_PID=$!
for _ in $(seq 100); do [ -s "$WORK/port" ] && break; sleep 0.1; done
PORT=$(cat "$WORK/port")

rc=0
(
  # From the work dir: hypothesis and python leave their caches in the current directory.
  cd "$WORK"
  PYTHONPATH=$HERE PYTHONDONTWRITEBYTECODE=1 SCHEMATHESIS_HOOKS=hooks "$VENV/bin/schemathesis" run \
    "$HERE/lxd-5.0.2-rest-api.yaml" \
    --base-url "http://127.0.0.1:$PORT" \
    --checks no_server_error_but_501 \
    --validate-schema false \
    --hypothesis-max-examples "${SCHEMATHESIS_MAX_EXAMPLES:-25}" \
    --hypothesis-seed "${SCHEMATHESIS_SEED:-1}" \
    --hypothesis-database none \
    --hypothesis-suppress-health-check all \
    --request-timeout 60000 \
    --no-color \
    --junit-xml "$WORK/junit.xml" \
    "$@"
) || rc=$?

# The daemon must have survived it all and still answer.
if ! kill -0 "$DAEMON_PID" 2>/dev/null; then
  echo "schemathesis: the bivy daemon died during the run" >&2
  exit 1
fi
api GET /1.0 | jq -e '.metadata.api_version == "1.0"' >/dev/null ||
  { echo "schemathesis: the bivy daemon no longer answers GET /1.0" >&2; exit 1; }
exit "$rc"
