#!/bin/sh
# http_wrk.sh: scripts/demo/http_server.lua under wrk against Node's http
# module (http_node.js), on loopback, keep-alive, "Hello, World!". Each round
# starts each server afresh, pinned to BENCH_CPU, gives it a 1 s wrk warm-up
# (unmeasured: Node's JIT), then runs `wrk -t1 -c$CONNS -d$DURATION` pinned to
# CLIENT_CPU and keeps its Requests/sec, and the server's CPU time (user +
# system, /proc/PID/stat) per request and its busy share (1.0 = its core is
# saturated). Prints every round and the medians.
#   sh tests/bench/http_wrk.sh [rounds=3]
# Environment: TULUA (default build/tulua), NODE (node), BENCH_CPU (1),
# CLIENT_CPU (0), CONNS (50), DURATION (5s).
set -eu
here=$(cd "$(dirname "$0")/../.." && pwd)
rounds=${1:-3}
TULUA=${TULUA:-$here/build/tulua}
NODE=${NODE:-node}
BENCH_CPU=${BENCH_CPU:-1}
CLIENT_CPU=${CLIENT_CPU:-0}
CONNS=${CONNS:-50}
DURATION=${DURATION:-5s}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# CPU ticks (user + system) of process $1.
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# run_peer NAME CMD...: one round of one server; prints "req/s cpu_us_per_req busy".
run_peer() {
  name=$1
  shift
  timeout 60 taskset -c "$BENCH_CPU" "$@" 0 >"$tmp/$name.out" 2>&1 &
  pid=$!
  port=""
  for _ in $(seq 100); do # up to 5 s for the "listening on" line
    port=$(sed -n 's|^listening on http://127.0.0.1:\([0-9]*\)/$|\1|p' "$tmp/$name.out")
    [ -z "$port" ] || break
    sleep 0.05
  done
  [ -n "$port" ] || { cat "$tmp/$name.out" >&2; kill "$pid"; echo "http_wrk.sh: $name did not start" >&2; exit 1; }
  url=http://127.0.0.1:$port/
  [ "$(curl -s "$url")" = "Hello, World!" ] || { kill "$pid"; echo "http_wrk.sh: $name answers wrongly" >&2; exit 1; }
  spid=$(ps -o pid= --ppid "$pid" | tr -d ' ') # the server (taskset exec'd it)
  taskset -c "$CLIENT_CPU" wrk -t1 -c"$CONNS" -d1s "$url" >/dev/null
  t0=$(ticks "$spid")
  taskset -c "$CLIENT_CPU" wrk -t1 -c"$CONNS" -d"$DURATION" "$url" >"$tmp/$name.wrk"
  t1=$(ticks "$spid")
  kill "$pid"
  wait "$pid" 2>/dev/null || true
  if grep -q "Non-2xx\|Socket errors" "$tmp/$name.wrk"; then
    cat "$tmp/$name.wrk" >&2
    echo "http_wrk.sh: $name had errors" >&2
    exit 1
  fi
  awk -v t="$((t1 - t0))" -v hz="$(getconf CLK_TCK)" '
    /^ *[0-9]+ requests in / {n = $1; secs = $4; sub("s,", "", secs)}
    /^Requests\/sec:/ {printf "%s %.2f %.2f\n", $2, t / hz * 1e6 / n, t / hz / secs}' "$tmp/$name.wrk"
}

median() { sort -n | awk '{v[NR] = $1} END {print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }

for r in $(seq "$rounds"); do
  t=$(run_peer tulua "$TULUA" "$here/scripts/demo/http_server.lua")
  n=$(run_peer node "$NODE" "$here/tests/bench/http_node.js")
  echo "$t" >>"$tmp/tulua.all"
  echo "$n" >>"$tmp/node.all"
  echo "round $r: tulua $t, node $n (req/s, server CPU us/req, busy)" >&2
done
echo "wrk -t1 -c$CONNS -d$DURATION, $rounds rounds, server on CPU $BENCH_CPU, wrk on CPU $CLIENT_CPU; medians:"
for p in tulua node; do
  printf '%-6s %10.0f req/s  %5.2f us CPU/req  busy %.2f\n' "$p" \
    "$(cut -d' ' -f1 "$tmp/$p.all" | median)" "$(cut -d' ' -f2 "$tmp/$p.all" | median)" \
    "$(cut -d' ' -f3 "$tmp/$p.all" | median)"
done
awk -v a="$(cut -d' ' -f1 "$tmp/tulua.all" | median)" -v b="$(cut -d' ' -f1 "$tmp/node.all" | median)" \
  'BEGIN {printf "req/s ratio tulua / node: %.2fx\n", a / b}'
