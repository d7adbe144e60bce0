#!/bin/bash
# pylxd's own integration suite (integration/ in the pylxd 2.4.2 sdist), unmodified, against a
# bivy daemon made for the run. Its authors wrote it against LXD; it is an outside check of wire
# compatibility. Fails on any failure or error; pylxd's own skips (extensions bivy does not
# claim) are fine.
#
#   tests/pylxd_integration.sh [BIVY_BINARY]      (default: target/debug/bivy), as root
#
# Setup as upstream's integration/run-integration-tests gives LXD: the client talks to the
# daemon's unix socket through LXD_DIR; a `default` dir pool holds the default profile's root
# disk (bivy makes both at start). As upstream, the daemon listens on 127.0.0.1:8443 with
# core.trust_password `password`, and the client's certificate and the server's pinned one are
# where pylxd looks (~/.config/lxc, with HOME pointed into the work directory). Nothing is
# deselected.
#
# Work files go to target/pylxd-integration/ (sdist, venv, daemon dir, junit report).
set -euo pipefail
cd "$(dirname "$0")/.."

BIVY=$(realpath "${1:-target/debug/bivy}")
PYLXD_VERSION=2.4.2
PYTEST_VERSION=9.2.0
WORK=$PWD/target/pylxd-integration
PY=${PYLXD_PYTHON:-/usr/bin/python3}

[ "$(id -u)" = 0 ] || { echo "pylxd_integration: must run as root (real containers)" >&2; exit 1; }
[ -x "$BIVY" ] || { echo "pylxd_integration: no bivy binary at $BIVY" >&2; exit 1; }
for tool in busybox xz curl openssl; do
  command -v "$tool" >/dev/null || { echo "pylxd_integration: needs $tool" >&2; exit 1; }
done


mkdir -p "$WORK"
# A fresh daemon dir each run; anything left by an earlier run that was killed is cleaned first.
DAEMON_DIR=$WORK/lxd
LOG=$WORK/daemon.log
DAEMON_PID=

# shellcheck source=tests/lib/daemon.sh
. tests/lib/daemon.sh # (the script runs from the repo root)

cleanup() {
  local rc=$?
  daemon_teardown
  show_log_on_failure "$rc"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
# Nothing may be left over from an interrupted run (no daemon runs yet: only the directory).
daemon_teardown

# The sdist, as a new user would get it.
VENV=$WORK/venv
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
# pylxd's dependencies come with its wheel; the tests import the sdist's own pylxd/ (same
# version), as pytest puts the sdist root first on sys.path.
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
  "pylxd==$PYLXD_VERSION" "pytest==$PYTEST_VERSION"
SDIST_DIR=$WORK/pylxd-$PYLXD_VERSION
if [ ! -d "$SDIST_DIR/integration" ]; then
  rm -rf "$SDIST_DIR" "$WORK"/pylxd-*.tar.gz
  "$VENV/bin/python" -m pip download --quiet --disable-pip-version-check \
    --no-deps --no-binary :all: "pylxd==$PYLXD_VERSION" -d "$WORK"
  tar -xzf "$WORK/pylxd-$PYLXD_VERSION.tar.gz" -C "$WORK"
fi

# The daemon for the run.
daemon_spawn
for _ in $(seq 200); do
  [ -S "$DAEMON_DIR/unix.socket" ] && api GET /1.0 >/dev/null 2>&1 && break
  kill -0 "$DAEMON_PID" 2>/dev/null || { echo "pylxd_integration: bivy daemon exited" >&2; exit 1; }
  sleep 0.1
done
api GET /1.0 | jq -e '.metadata.api_version == "1.0"' >/dev/null
# Upstream's runner makes sure of a `default` pool holding the default profile's root disk.
api GET /1.0/profiles/default | jq -e '.metadata.devices.root.pool == "default"' >/dev/null ||
  { echo "pylxd_integration: the default profile has no root disk on pool default" >&2; exit 1; }

# The network side, as upstream's runner sets it up for LXD.
api PATCH /1.0 '{"config":{"core.https_address":"127.0.0.1:8443","core.trust_password":"password"}}' |
  jq -e '.type == "sync"' >/dev/null ||
  { echo "pylxd_integration: could not listen on 127.0.0.1:8443" >&2; exit 1; }
# pylxd reads its client certificate and the server's from ~/.config/lxc (a home of the run's
# own, so the user's is never touched).
export HOME=$WORK/home
rm -rf "$HOME"
mkdir -p "$HOME/.config/lxc/servercerts"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:secp384r1 -nodes -days 30 \
  -subj /CN=pylxd-integration -keyout "$HOME/.config/lxc/client.key" \
  -out "$HOME/.config/lxc/client.crt" 2>/dev/null
cp "$DAEMON_DIR/server.crt" "$HOME/.config/lxc/servercerts/127.0.0.1.crt"

# requests lets these override pylxd's pinned server certificate (see issue 20).
cd "$SDIST_DIR"
# In the daemon's network namespace: 127.0.0.1:8443 is its listener there.
in_daemon_netns env -u REQUESTS_CA_BUNDLE -u CURL_CA_BUNDLE LXD_DIR="$DAEMON_DIR" \
  "$VENV/bin/python" -m pytest integration -p no:cacheprovider -rA -v \
  --junitxml="$WORK/junit.xml"
