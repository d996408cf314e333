# Sourced by scripts that need a stack of their own (fuzz.sh, console-test.sh): starts it
# as `make run` does (borough-dev run, debug build), on ports moved by 100 (beside a
# running `make run`; 200, then 300, if one of them is taken), in a data directory of its
# own (fresh each time), and stops it when the script exits.
#
#   dev_stack_start NAME DATA [VAR=VALUE...]   extra variables for the stack
#
# Then $gateway and $gateway_admin are its URLs, $BOROUGH_ADMIN_TOKEN (made here, random)
# its admin token and $BOROUGH_API_KEY the demo tenant's key. Every ports lies in the
# kernel's ephemeral range, where any client socket may hold one for a while: hence the
# retries.

dev_stack_pid=
dev_stack_stop() {
  if [ -n "$dev_stack_pid" ]; then
    kill -TERM "$dev_stack_pid" 2>/dev/null || true
    wait "$dev_stack_pid" 2>/dev/null || true
    dev_stack_pid=
  fi
}

# One try at `offset`: 0 once it serves, 1 if it exited, 2 if a port was taken.
dev_stack_try() {
  local data=$1 offset=$2
  shift 2
  gateway="http://127.0.0.1:$((8080 + offset))"
  gateway_admin="http://127.0.0.1:$((9460 + offset))"
  rm -rf "$data"
  mkdir -p "$data"
  env BOROUGH_DEV_DATA="$data" BOROUGH_DEV_PG_PORT=$((55432 + offset)) \
    BOROUGH_DEV_PORT_OFFSET="$offset" RUST_LOG=warn "$@" \
    ./target/debug/borough-dev run > "$data/stack.log" 2>&1 &
  dev_stack_pid=$!
  for _ in $(seq 1 600); do
    if [ -s "$data/demo-api-key" ] && curl -sf "$gateway_admin/readyz" > /dev/null; then
      return 0
    fi
    if ! kill -0 "$dev_stack_pid" 2>/dev/null; then
      wait "$dev_stack_pid" 2>/dev/null || true
      dev_stack_pid=
      if grep -q "Address already in use" "$data/stack.log"; then
        return 2
      fi
      return 1
    fi
    sleep 0.2
  done
  return 1
}

dev_stack_start() {
  local name=$1 data=$2 started=1 offset
  shift 2
  cargo build --quiet --bin borough-config --bin borough-user --bin borough-query \
    --bin borough-gateway --bin borough-dev
  export BOROUGH_ADMIN_TOKEN BOROUGH_API_KEY
  BOROUGH_ADMIN_TOKEN="$name-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
  trap dev_stack_stop EXIT
  for offset in 100 200 300; do
    dev_stack_try "$data" "$offset" "$@" && { started=0; break; } || started=$?
    if [ "$started" -eq 2 ]; then
      echo "$name: a port of offset $offset was taken; trying offset $((offset + 100))" >&2
      continue
    fi
    break
  done
  if [ "$started" -ne 0 ]; then
    echo "$name: the stack did not start:" >&2
    tail -30 "$data/stack.log" >&2
    return 1
  fi
  BOROUGH_API_KEY=$(cat "$data/demo-api-key")
}
