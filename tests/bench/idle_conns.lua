-- idle_conns.lua: resident memory per idle TCP connection. Serves
-- 127.0.0.1:<free port> with one task per connection that waits in
-- conn:read() (nothing is ever sent); measures the server's VmRSS (from
-- /proc/self/status, after a full garbage collection) with 0 connections,
-- then has idle_client.py (in a process of its own) open N connections,
-- waits until all N handler tasks wait in read, and measures again. Prints
-- RESULT conns=N rss0_kib= rssN_kib= bytes_per_conn=(rssN - rss0) * 1024 / N
-- lua_bytes_per_conn= (the part of it in Lua's heap, from
-- collectgarbage("count")), then lets the client go and checks that every
-- handler saw the end.
-- Each process needs N + a few descriptors:
--   sh -c 'ulimit -n 20000 && build/tulua tests/bench/idle_conns.lua [N=10000]'
local tulua = require "tulua"
local net = require "tulua.net"
local process = require "tulua.process"

local N = math.tointeger(tonumber(arg[1] or 10000))
local PYTHON = os.getenv("PYTHON") or "/usr/bin/python3"
local here = arg[0]:match("^(.*)/[^/]*$") or "."

local function status_kib(field)
  local f = assert(io.open("/proc/self/status"))
  local s = f:read("a")
  f:close()
  return tonumber(s:match(field .. ":%s*(%d+) kB"))
end

local function max_files()
  local f = assert(io.open("/proc/self/limits"))
  local s = f:read("a")
  f:close()
  return tonumber(s:match("Max open files%s+(%d+)"))
end
assert(N and N > 0, "usage: idle_conns.lua [N]")
assert(max_files() >= N + 50, ("need %d open files: run under ulimit -n %d"):format(N + 50, N + 100))

-- Waits (bounded) until cond() holds.
local function wait_until(cond, what)
  local deadline = tulua.now() + 60
  while not cond() do
    assert(tulua.now() < deadline, "timed out waiting for " .. what)
    tulua.sleep(0.01)
  end
end

local reading, ended = 0, 0
local server = assert(net.serve("127.0.0.1", 0, function(conn)
  reading = reading + 1
  local data = conn:read()         -- waits: the client never sends
  reading = reading - 1
  assert(data == nil, "the client sent something")
  ended = ended + 1
end, {backlog = 4096}))
local _, port = server:address()

-- Returns VmRSS and the size of Lua's heap, in KiB, after a full collection.
local function rss()
  collectgarbage()
  collectgarbage()
  return status_kib("VmRSS"), collectgarbage("count")
end

local rss0, lua0 = rss()
local client = assert(process.spawn({PYTHON, here .. "/idle_client.py", port, N}, {stdin = "pipe", stdout = "pipe"}))
assert(client.stdout:read_line() == "connected " .. N, "the client could not connect")
wait_until(function() return reading == N end, "the handlers")
tulua.sleep(0.2)                   -- let the loop settle
local rssN, luaN = rss()
print(("RESULT conns=%d rss0_kib=%d rssN_kib=%d bytes_per_conn=%.0f lua_bytes_per_conn=%.0f")
  :format(N, rss0, rssN, (rssN - rss0) * 1024 / N, (luaN - lua0) * 1024 / N))

assert(client:close() == 0)        -- closes its stdin: it exits, closing its connections
wait_until(function() return ended == N end, "the handlers to end")
server:close()
server:wait_closed()
