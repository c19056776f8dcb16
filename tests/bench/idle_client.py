"""idle_client.py PORT N: opens N TCP connections to 127.0.0.1:PORT, prints
"connected N" on stdout, then holds them, idle, until its stdin ends (the
caller closes it); exiting closes them. The client side of idle_conns.lua,
in its own process so that its memory is not counted."""
import socket
import sys

port, n = int(sys.argv[1]), int(sys.argv[2])
conns = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(n)]
print("connected", len(conns), flush=True)
sys.stdin.read()
