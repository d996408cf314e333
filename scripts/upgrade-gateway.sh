#!/usr/bin/env bash
# In-place upgrade of a gateway on one host, with rollback.
#
#   scripts/upgrade-gateway.sh OLD_PID NEW_BINARY [NEW_ADMIN_ADDR]
#
# The old gateway must have been started with BOROUGH_REUSE_PORT=true. The new one is
# started with the old one's environment (read from /proc), this shell's BOROUGH_*,
# OTEL_* and RUST_LOG on top, BOROUGH_REUSE_PORT=true and its admin port on
# NEW_ADMIN_ADDR (default 127.0.0.1:9470, so that its readiness can be told apart from
# the old one's):
#
# NEW's output is appended to BOROUGH_UPGRADE_LOG (default ./gateway.log).
#
# 1. start NEW: it binds the same HTTP port beside OLD (SO_REUSEPORT);
# 2. wait up to BOROUGH_UPGRADE_TIMEOUT seconds (30) for NEW's /readyz to answer 200;
# 3. ready: SIGTERM OLD, which fails its readiness, serves through its grace period,
#    stops accepting, finishes in-flight requests and exits. NEW's pid is printed;
#    not ready (or exited): NEW is stopped and OLD keeps serving untouched. Exit 1.
set -euo pipefail

old_pid=${1:?usage: upgrade-gateway.sh OLD_PID NEW_BINARY [NEW_ADMIN_ADDR]}
new_bin=${2:?usage: upgrade-gateway.sh OLD_PID NEW_BINARY [NEW_ADMIN_ADDR]}
new_admin=${3:-127.0.0.1:9470}
timeout=${BOROUGH_UPGRADE_TIMEOUT:-30}

# Running (not exited, nor an exited child its parent has not reaped yet).
alive() { [ -e "/proc/$1/stat" ] && [ "$(sed 's/.*) //' "/proc/$1/stat" | cut -d' ' -f1)" != Z ]; }

alive "$old_pid" || { echo "upgrade: no process $old_pid to upgrade" >&2; exit 2; }
[ -x "$new_bin" ] || { echo "upgrade: $new_bin is not an executable" >&2; exit 2; }

# When the old process closes its listener, connections still in its accept queue would be
# reset; with net.ipv4.tcp_migrate_req=1 (Linux >= 5.14, per network namespace) the kernel
# moves them to the new listener instead. Set it when allowed, unless told not to.
migrate=/proc/sys/net/ipv4/tcp_migrate_req
if [ -r "$migrate" ] && [ "$(cat "$migrate")" != 1 ]; then
    if [ "${BOROUGH_UPGRADE_SET_SYSCTL:-true}" = true ] && { echo 1 > "$migrate"; } 2>/dev/null; then
        echo "upgrade: set net.ipv4.tcp_migrate_req=1 (queued connections move to the new process)" >&2
    else
        echo "upgrade: warning: net.ipv4.tcp_migrate_req is 0: connections queued on the old process as it closes will be reset" >&2
    fi
fi

# The new process outlives this script: its output goes to a log file, not our pipes.
log=${BOROUGH_UPGRADE_LOG:-gateway.log}
# The new process runs with the old one's environment (its settings: admin token, backend
# URLs, config service…), with this shell's BOROUGH_*, OTEL_* and RUST_LOG on top.
settings=()
if [ -r "/proc/$old_pid/environ" ]; then
    while IFS= read -r -d '' kv; do settings+=("$kv"); done < "/proc/$old_pid/environ"
fi
while IFS= read -r -d '' kv; do
    case $kv in BOROUGH_*|OTEL_*|RUST_LOG=*) settings+=("$kv") ;; esac
done < <(env -0)
env -i "${settings[@]}" BOROUGH_REUSE_PORT=true BOROUGH_ADMIN_ADDR="$new_admin" \
    nohup "$new_bin" >>"$log" 2>&1 </dev/null &
new_pid=$!
echo "upgrade: started $new_bin as $new_pid (admin $new_admin, log $log); waiting for it to be ready" >&2

deadline=$((SECONDS + timeout))
until curl -fsS -o /dev/null "http://$new_admin/readyz" 2>/dev/null; do
    if ! alive "$new_pid" || [ "$SECONDS" -ge "$deadline" ]; then
        echo "upgrade: the new gateway did not become ready in ${timeout}s: rolling back" >&2
        kill -TERM "$new_pid" 2>/dev/null || true
        wait "$new_pid" 2>/dev/null || true
        echo "upgrade: $old_pid keeps serving" >&2
        exit 1
    fi
    sleep 0.1
done

echo "upgrade: $new_pid is ready; draining $old_pid" >&2
kill -TERM "$old_pid"
while alive "$old_pid"; do sleep 0.1; done
echo "upgrade: done; the gateway is now $new_pid" >&2
echo "$new_pid"
