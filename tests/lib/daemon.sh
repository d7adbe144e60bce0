# Shared by tests/pylxd_integration.sh and tests/schemathesis.sh (sourced): talk to a bivy
# daemon made for the run, and take it down with everything it made. The caller sets DAEMON_DIR
# (the daemon's BIVY_DIR), DAEMON_PID (empty until it runs) and LOG (its log).

daemon_spawn() { # start "$BIVY daemon" on DAEMON_DIR in a network namespace of its own, so the
  # networks a run makes (bridges, nftables rules, DHCP and DNS) never touch the host's; sets
  # DAEMON_PID (unshare execs the shell, which execs the daemon: one pid)
  mkdir -p "$DAEMON_DIR"
  BIVY_DIR=$DAEMON_DIR unshare --net -- sh -c 'ip link set lo up && exec "$0" daemon' "$BIVY" \
    </dev/null >"$LOG" 2>&1 &
  DAEMON_PID=$!
}

in_daemon_netns() { # CMD...: run CMD in the daemon's network namespace (to reach its HTTPS port)
  nsenter --net="/proc/$DAEMON_PID/ns/net" -- "$@"
}

api() { # METHOD PATH [BODY]: one REST call on the daemon's socket, JSON out
  curl -sS --max-time 120 --unix-socket "$DAEMON_DIR/unix.socket" -X "$1" \
    ${3:+-H 'Content-Type: application/json' --data "$3"} "http://bivy$2"
}

unmount_below() { # DIR: every mount at or below DIR, deepest first
  awk -v d="$1" '$5 == d || index($5, d "/") == 1 { print $5 }' /proc/self/mountinfo |
    sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done
}

daemon_teardown() { # stop and delete what the run made, stop the daemon, remove its directory
  if [ -n "$DAEMON_PID" ] && kill -0 "$DAEMON_PID" 2>/dev/null; then
    # Containers outlive the daemon: stop and delete them, then the extra pools.
    for url in $(api GET /1.0/instances | jq -r '.metadata[]?' 2>/dev/null); do
      api PUT "$url/state" '{"action":"stop","force":true,"timeout":-1}' | jq -r '.operation // empty' |
        while read -r op; do [ -n "$op" ] && api GET "$op/wait?timeout=60" >/dev/null; done
      api DELETE "$url" | jq -r '.operation // empty' |
        while read -r op; do [ -n "$op" ] && api GET "$op/wait?timeout=60" >/dev/null; done
    done
    for url in $(api GET /1.0/storage-pools | jq -r '.metadata[]?' 2>/dev/null); do
      [ "$url" = /1.0/storage-pools/default ] || api DELETE "$url" >/dev/null || true
    done
    kill -TERM "$DAEMON_PID" 2>/dev/null || true
    for _ in $(seq 200); do kill -0 "$DAEMON_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$DAEMON_PID" 2>/dev/null || true
    wait "$DAEMON_PID" 2>/dev/null || true
  fi
  if [ -d "$DAEMON_DIR" ]; then
    unmount_below "$DAEMON_DIR"
    rm -rf "$DAEMON_DIR"
  fi
}

show_log_on_failure() { # RC: the daemon's log tail when the run failed
  if [ "$1" != 0 ] && [ -f "$LOG" ]; then
    echo "--- bivy daemon log (last 100 lines) ---" >&2
    tail -n 100 "$LOG" >&2
  fi
}
