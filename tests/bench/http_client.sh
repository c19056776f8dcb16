#!/bin/sh
# The HTTP client benchmark (issue 13, ours, outside the ruler): N
# sequential keep-alive GETs of "Hello, World!" from one local nginx (one
# process, pinned to CPU 1, as the ruler's W7 nginx), by each client peer
# of tests/bench/http_client/ in turn (pinned to CPU 0), ROUNDS rounds
# interleaved; prints each run's RESULT line, then each peer's median
# requests per second and its ratio to tulua's.
#   sh tests/bench/http_client.sh                 # N=10000 ROUNDS=3, build/tulua
#   TULUA=build-rel/tulua N=20000 ROUNDS=5 sh tests/bench/http_client.sh
set -eu
here=$(cd "$(dirname "$0")/../.." && pwd)
peers=$here/tests/bench/http_client
TULUA=${TULUA:-$here/build/tulua}
PYTHON=${PYTHON:-/usr/bin/python3}
N=${N:-10000} ROUNDS=${ROUNDS:-3}
d=$(mktemp -d)
trap 'kill "$srv" 2>/dev/null; wait 2>/dev/null; rm -rf "$d"' EXIT
port=$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat >"$d/nginx.conf" <<CONF
worker_processes 1;
daemon off;
master_process off;
pid $d/nginx.pid;
error_log $d/error.log;
events { worker_connections 1024; }
http {
  access_log off;
  keepalive_requests 1000000;
  client_body_temp_path $d/body; proxy_temp_path $d/proxy; fastcgi_temp_path $d/fcgi;
  uwsgi_temp_path $d/uwsgi; scgi_temp_path $d/scgi;
  server {
    listen 127.0.0.1:$port;
    location / { default_type text/plain; return 200 "Hello, World!"; }
  }
}
CONF
taskset -c 1 nginx -p "$d" -c "$d/nginx.conf" &
srv=$!
for _ in $(seq 50); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done 2>/dev/null ||
  "$PYTHON" -c "import socket,time
for _ in range(50):
    try: socket.create_connection(('127.0.0.1', $port)); break
    except OSError: time.sleep(0.1)"
url=http://127.0.0.1:$port/
for r in $(seq "$ROUNDS"); do
  for p in tulua py_aiohttp_uvloop node_fetch; do
    case $p in
      tulua) cmd="$TULUA $peers/tulua.lua" ;;
      py_*) cmd="$PYTHON $peers/$p.py" ;;
      node_*) cmd="node $peers/$p.js" ;;
    esac
    line=$(taskset -c 0 timeout 120 $cmd "$url" "$N" | grep '^RESULT' || echo "RESULT failed=1")
    echo "round $r $p $line"
    echo "$p $line" >>"$d/results"
  done
done
"$PYTHON" - "$d/results" <<'PY'
import statistics, sys
rps = {}
for line in open(sys.argv[1]):
    peer, *fields = line.split()
    kv = dict(f.split("=", 1) for f in fields[1:] if "=" in f)
    if "rps" in kv: rps.setdefault(peer, []).append(float(kv["rps"]))
med = {p: statistics.median(v) for p, v in rps.items()}
for p, m in med.items():
    ratio = med["tulua"] / m if "tulua" in med else float("nan")
    print("%-20s median %10.1f req/s   tulua / %s = %.2f" % (p, m, p, ratio))
PY
