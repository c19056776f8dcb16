-- tulua.net: streams over TCP (127.0.0.1 and ::1) and unix sockets, the
-- servers that accept them, and real peers no one here wrote: curl, nc,
-- python3, redis-server and wrk. Servers listen on loopback addresses or on
-- a socket in a fresh temporary directory. Bodies that wait on a peer run
-- in a task of their own that is cancelled after 10 s, so that a hang fails
-- one spec instead of the whole run.
local tulua = require("tulua")
local timer = require("tulua.timer")
local fs = require("tulua.fs")
local net = require("tulua.net")
local process = require("tulua.process")
local asyncio = require("asyncio")

package.path = (debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or ".") .. "/?.lua;" .. package.path
local support = require("support")
local eventually = support.eventually
local fd_count = support.fd_count
local TULUA = support.TULUA

local MiB = 1024 * 1024
local CANNOT_YIELD = " inside a function called from C that cannot yield"
  .. " (such as a 'table.sort' comparator or a 'string.gsub' callback)"

-- ---- helpers ----

local bounded = support.bounded

-- Runs fn(...) in a task, cancelled if it has not ended after secs;
-- returns what pcall(task.join, task) returns.
local function within(secs, fn, ...)
  local task = tulua.spawn(fn, ...)
  local guard = timer.after(secs, function() task:cancel("timed out after " .. secs .. " s") end)
  local r = table.pack(pcall(task.join, task))
  guard:close()
  return table.unpack(r, 1, r.n)
end

local function status_is(task, status)
  return function() return task:status() == status end
end

-- Joins a task that must end with the cancellation error; returns it.
local function cancelled_error(task)
  local ok, err = pcall(task.join, task)
  assert.is_false(ok)
  assert.are.equal("table", type(err))
  assert.are.equal("ECANCELED", err.code)
  return err
end

-- The results of a call, with their count (so that one nil is told
-- from none).
local function pack(...)
  return table.pack(...)
end

-- The resident memory of this process, in bytes.
local function rss()
  local f = assert(io.open("/proc/self/statm"))
  local pages = tonumber(f:read("a"):match("^%d+ (%d+)"))
  f:close()
  return pages * 4096
end

-- n bytes (a multiple of 16) of numbered 16-byte lines, so that a lost,
-- doubled or reordered chunk shows.
local function pattern(n)
  local lines = {}
  for i = 1, n // 16 do
    lines[i] = string.format("%015d\n", i)
  end
  return table.concat(lines)
end

-- Clean-ups registered by the spec that runs, run in reverse order after
-- it (busted's finally keeps only one function per spec).
local cleanups = {}

local function defer(fn)
  cleanups[#cleanups + 1] = fn
end

local dir -- a fresh temporary directory for each spec
local sockets = 0

local function socket_path()
  sockets = sockets + 1
  return dir .. "/" .. sockets .. ".sock"
end

-- Closes srv and waits (at most 5 s) for its connections to end.
local function close_server(srv)
  srv:close()
  within(5, srv.wait_closed, srv)
end

-- A stream handler that echoes lines until the end of the stream or an
-- error (it never raises: an uncaught handler error would fail the run).
local function echo_lines(s)
  while true do
    local line = s:read_line()
    if not line or not s:write(line .. "\n") then return end
  end
end

-- A stream handler that echoes bytes until the end of the stream.
local function echo_bytes(s)
  while true do
    local data = s:read()
    if not data or not s:write(data) then return end
  end
end

-- The transports every stream spec runs over.
local TRANSPORTS = {
  {name = "TCP on 127.0.0.1", kind = "tcp", host = "127.0.0.1"},
  {name = "TCP on ::1", kind = "tcp", host = "::1"},
  {name = "a unix socket", kind = "pipe"},
}

-- Starts a server of transport t that runs handler; returns it and a
-- function that connects a new client to it. The server is closed when
-- the spec ends.
local function listen(t, handler)
  local srv, connect
  if t.host then
    srv = assert(net.serve(t.host, 0, handler))
    local _, port = srv:address()
    connect = function() return net.connect(t.host, port) end
  else
    local path = socket_path()
    srv = assert(net.serve_unix(path, handler))
    connect = function() return net.connect_unix(path) end
  end
  defer(function() close_server(srv) end)
  return srv, connect
end

-- Connects a client to a new server of transport t; returns the client's
-- stream, the server's side of that connection (whose handler waits until
-- the spec ends) and the server. All are closed when the spec ends.
local function pair(t)
  local accepted, release = asyncio.Queue(), asyncio.Event()
  local srv, connect = listen(t, function(s)
    accepted:put(s)
    release:wait()
  end)
  local c = assert(connect())
  defer(function()
    c:close()
    release:set()
  end)
  return c, accepted:get(), srv
end

-- Starts python3 running code with args; returns the Process and the
-- first line it prints. It is killed when the spec ends.
local function python(code, ...)
  local p = assert(process.spawn({"python3", "-c", code, ...}, {stdin = "pipe", stdout = "pipe"}))
  defer(function()
    p:kill("SIGKILL")
    within(5, p.wait, p)
  end)
  return p, p.stdout:read_line()
end

-- A listener whose accept queue is full and which never accepts: a
-- connect to it waits until its timeout. Returns its port.
local STUCK = [[
import socket, sys
host = sys.argv[1]
fam = socket.AF_INET6 if ":" in host else socket.AF_INET
s = socket.socket(fam)
s.bind((host, 0))
s.listen(0)
port = s.getsockname()[1]
fillers = []
for _ in range(4):
    f = socket.socket(fam)
    f.setblocking(False)
    f.connect_ex((host, port))
    fillers.append(f)
print(port, flush=True)
sys.stdin.read()
]]

local function stuck_listener(host)
  local _, port = python(STUCK, host)
  return math.tointeger(tonumber(port))
end

-- A peer that accepts one connection and resets it: "linger" sends "last
-- words", waits for a line on stdin, then closes with SO_LINGER 0;
-- "unread" waits for bytes to arrive, then closes without reading them.
-- Prints its port (or "ready" for a unix socket).
local RESETTER = [[
import socket, struct, sys
mode, addr = sys.argv[1], sys.argv[2]
if mode.startswith("unix"):
    s = socket.socket(socket.AF_UNIX)
    s.bind(addr)
else:
    s = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET)
    s.bind((addr, 0))
s.listen(1)
print("ready" if mode.startswith("unix") else s.getsockname()[1], flush=True)
c, _ = s.accept()
if mode == "linger":
    c.sendall(b"last words")
    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sys.stdin.readline()
else:
    c.recv(1, socket.MSG_PEEK)
c.close()
sys.stdin.read()
]]

-- A free TCP port on 127.0.0.1 (free when this returns; a program started
-- right after takes it).
local function free_port()
  local srv = assert(net.serve("127.0.0.1", 0, function() end))
  local _, port = srv:address()
  srv:close()
  tulua.sleep(0) -- the port is released when the loop closes the handle
  return port
end

-- ---- specs ----

describe("tulua.net", function()
  before_each(function()
    dir = assert(fs.mkdtemp("/tmp/tulua-net-XXXXXX"))
  end)

  after_each(function()
    local first_err
    for i = #cleanups, 1, -1 do
      local ok, err = pcall(cleanups[i])
      if not ok and first_err == nil then first_err = err end
      cleanups[i] = nil
    end
    for name in assert(fs.scandir(dir)) do
      assert(fs.unlink(dir .. "/" .. name))
    end
    assert(fs.rmdir(dir))
    if first_err ~= nil then error(first_err, 0) end
  end)

  it("gathers the network: the dns and udp modules and the lookups", function()
    assert.are.equal(require("tulua.dns"), net.dns)
    assert.are.equal(require("tulua.udp"), net.udp)
    assert.are.equal(net.dns.getaddrinfo, net.getaddrinfo)
    assert.are.equal(net.dns.getnameinfo, net.getnameinfo)
  end)

  describe("net.serve and net.connect", function()
    it("serve 127.0.0.1 on a free port for port 0 and connect to it", bounded(function()
      local srv = assert(net.serve("127.0.0.1", 0, function(s) s:write("hi\n") end))
      defer(function() close_server(srv) end)
      local host, port = srv:address()
      assert.are.equal("127.0.0.1", host)
      assert.is_true(math.type(port) == "integer" and port > 0 and port < 65536)
      assert.are.equal("tulua.server", getmetatable(srv).__name)
      assert.are.equal("server (listening)", tostring(srv))
      assert.is_false(srv:is_closed())
      local c <close> = assert(net.connect("127.0.0.1", port))
      assert.are.equal("tulua.tcp", getmetatable(c).__name)
      assert.are.equal("tcp stream (open)", tostring(c))
      assert.is_false(c:is_closed())
      assert.are.equal("hi", c:read_line())
      assert.are.same({n = 1}, pack(c:read()))
    end))

    it("serve ::1 and connect to it", bounded(function()
      local srv = assert(net.serve("::1", 0, function(s) s:write("six\n") end))
      defer(function() close_server(srv) end)
      local host, port = srv:address()
      assert.are.equal("::1", host)
      local c <close> = assert(net.connect("::1", port))
      assert.are.same({"::1", port}, {c:peer_address()})
      assert.are.equal("six", c:read_line())
    end))

    it("take 'localhost' for 127.0.0.1 in serve, and resolve it in connect", bounded(function()
      local srv = assert(net.serve("localhost", 0, function(s) s:write("local\n") end))
      defer(function() close_server(srv) end)
      local host, port = srv:address()
      assert.are.equal("127.0.0.1", host)
      local c <close> = assert(net.connect("localhost", port))
      assert.are.same({"127.0.0.1", port}, {c:peer_address()})
      assert.are.equal("local", c:read_line())
    end))

    it("connect gives up after its timeout only when it has not connected", bounded(function()
      local srv = assert(net.serve("127.0.0.1", 0, function(s) s:write("in time\n") end))
      defer(function() close_server(srv) end)
      local _, port = srv:address()
      local c <close> = assert(net.connect("127.0.0.1", port, {timeout = 5}))
      assert.are.equal("in time", c:read_line())
      local d <close> = assert(net.connect("127.0.0.1", port, {timeout = 0})) -- 0: no timeout
      assert.are.equal("in time", d:read_line())
    end))

    it("serve returns nil, message and EADDRINUSE for a port in use", bounded(function()
      local srv = assert(net.serve("127.0.0.1", 0, function() end))
      defer(function() close_server(srv) end)
      local _, port = srv:address()
      assert.are.same({nil, "127.0.0.1:" .. port .. ": address already in use", "EADDRINUSE"},
        {net.serve("127.0.0.1", port, function() end)})
    end))

    -- An IPv6 address is bracketed in messages, as tulua.udp does
    -- ("[::1]:PORT: ..."); "::1:PORT" would read as an address.
    it("serve names an IPv6 address in brackets in its messages", bounded(function()
      local srv = assert(net.serve("::1", 0, function() end))
      defer(function() close_server(srv) end)
      local _, port = srv:address()
      assert.are.same({nil, "[::1]:" .. port .. ": address already in use", "EADDRINUSE"},
        {net.serve("::1", port, function() end)})
    end))

    it("connect returns nil, message and ECONNREFUSED when nothing listens", bounded(function()
      local port = free_port()
      assert.are.same({nil, "127.0.0.1:" .. port .. ": connection refused", "ECONNREFUSED"},
        {net.connect("127.0.0.1", port)})
    end))

    -- As for serve.
    it("connect names an IPv6 address in brackets in its messages", bounded(function()
      local port = free_port()
      assert.are.same({nil, "[::1]:" .. port .. ": connection refused", "ECONNREFUSED"},
        {net.connect("::1", port)})
    end))

    it("connect returns nil, message and EAI_NONAME for an unknown host", bounded(function()
      assert.are.same({nil, "nonexistent.invalid:80: unknown node or service", "EAI_NONAME"},
        {net.connect("nonexistent.invalid", 80)})
    end))

    it("connect returns nil, message and ETIMEDOUT once its timeout is over", bounded(function()
      local port = stuck_listener("127.0.0.1")
      local t0 = tulua.now()
      assert.are.same({nil, "127.0.0.1:" .. port .. ": connection timed out", "ETIMEDOUT"},
        {net.connect("127.0.0.1", port, {timeout = 0.2})})
      local elapsed = tulua.now() - t0
      -- the kernel alone would take minutes
      assert.is_true(elapsed >= 0.195 and elapsed < 30, "took " .. elapsed .. " s")
      port = stuck_listener("::1")
      t0 = tulua.now()
      assert.are.equal("ETIMEDOUT", select(3, net.connect("::1", port, {timeout = 0.2})))
      elapsed = tulua.now() - t0
      -- the kernel alone would take minutes
      assert.is_true(elapsed >= 0.195 and elapsed < 30, "took " .. elapsed .. " s")
    end))

    it("connect ends with the cancellation error when its task is cancelled", bounded(function()
      local port = stuck_listener("127.0.0.1")
      local before = fd_count()
      local t = tulua.spawn(net.connect, "127.0.0.1", port)
      assert.is_true(eventually(status_is(t, "waiting")))
      tulua.sleep(0.05) -- past the name lookup (the thread pool): in the connect itself
      assert.are.equal("waiting", t:status())
      assert.is_true(t:cancel())
      assert.are.equal("task cancelled", cancelled_error(t).message)
      assert.is_true(eventually(function() return fd_count() == before end))
    end))

    it("connect_unix ends with the cancellation error when its task is cancelled", bounded(function()
      local srv = assert(net.serve_unix(socket_path(), function() end))
      defer(function() close_server(srv) end)
      local t = tulua.spawn(net.connect_unix, srv:address())
      for _ = 1, 10 do -- the connect ends at the next turn of the loop: catch it before
        tulua.sleep(0)
        if t:status() ~= "ready" then break end
      end
      assert.are.equal("waiting", t:status())
      t:cancel()
      cancelled_error(t)
    end))

    it("raise on bad arguments", function()
      local f = function() end
      assert.has_error(function() net.connect(nil, 80) end,
        "bad argument #1 to 'connect' (string expected, got nil)")
      assert.has_error(function() net.connect("127.0.0.1") end,
        "bad argument #2 to 'connect' (number expected, got no value)")
      assert.has_error(function() net.connect("127.0.0.1", 65536) end,
        "bad argument #2 to 'connect' (port out of range)")
      assert.has_error(function() net.connect("127.0.0.1", -1) end, "bad argument #2 to 'connect' (port out of range)")
      assert.has_error(function() net.connect("127.0.0.1", 80, 5) end,
        "bad argument #3 to 'connect' (table expected, got number)")
      assert.has_error(function() net.connect("127.0.0.1", 80, {timeout = -1}) end,
        "bad argument #3 to 'connect' ('timeout' must be a non-negative number)")
      assert.has_error(function() net.connect("127.0.0.1", 80, {timeout = 0 / 0}) end,
        "bad argument #3 to 'connect' ('timeout' must be a non-negative number)")
      assert.has_error(function() net.serve("example.com", 0, f) end,
        "bad argument #1 to 'serve' (numeric address, 'localhost' or '*' expected)")
      assert.has_error(function() net.serve("127.0.0.1", 65536, f) end,
        "bad argument #2 to 'serve' (port out of range)")
      assert.has_error(function() net.serve("127.0.0.1", 0) end,
        "bad argument #3 to 'serve' (function expected, got no value)")
      assert.has_error(function() net.serve("127.0.0.1", 0, f, {backlog = 0}) end,
        "bad argument #4 to 'serve' ('backlog' must be a positive integer)")
      assert.has_error(function() net.serve("127.0.0.1", 0, f, "x") end,
        "bad argument #4 to 'serve' (table expected, got string)")
      assert.has_error(function() net.connect_unix() end,
        "bad argument #1 to 'connect_unix' (string expected, got no value)")
      assert.has_error(function() net.serve_unix("/tmp/x.sock") end,
        "bad argument #2 to 'serve_unix' (function expected, got no value)")
      assert.has_error(function() net.serve_unix("/tmp/x.sock", f, {backlog = -1}) end,
        "bad argument #3 to 'serve_unix' ('backlog' must be a positive integer)")
    end)

    -- These once said "bad argument #-1 to 'connect' (number expected, got
    -- string)": luaL_optnumber on the field at the top of the stack.
    it("name the options table in the message for an option of the wrong type", function()
      assert.has_error(function() net.connect("127.0.0.1", 80, {timeout = "soon"}) end,
        "bad argument #3 to 'connect' ('timeout' must be a number)")
      assert.has_error(function() net.serve("127.0.0.1", 0, print, {backlog = "many"}) end,
        "bad argument #4 to 'serve' ('backlog' must be a number)")
      assert.has_error(function() net.serve("127.0.0.1", 0, print, {backlog = 1.5}) end,
        "bad argument #4 to 'serve' ('backlog' must be a positive integer)")
      assert.has_error(function() net.serve_unix("/tmp/x.sock", print, {backlog = true}) end,
        "bad argument #3 to 'serve_unix' ('backlog' must be a number)")
    end)

    it("raise where no wait is possible", function()
      assert.has_error(function()
        table.sort({1, 2}, function() net.connect("127.0.0.1", 80) end)
      end, "attempt to wait in 'net.connect'" .. CANNOT_YIELD)
      assert.has_error(function()
        table.sort({1, 2}, function() net.connect_unix("/tmp/x.sock") end)
      end, "attempt to wait in 'net.connect_unix'" .. CANNOT_YIELD)
    end)
  end)

  describe("net.serve_unix and net.connect_unix", function()
    it("serve a unix socket at a path and connect to it", bounded(function()
      local path = socket_path()
      local srv = assert(net.serve_unix(path, function(s) s:write("unix\n") end))
      defer(function() close_server(srv) end)
      assert.are.equal(path, srv:address())
      assert.are.equal("socket", assert(fs.stat(path)).type)
      local c <close> = assert(net.connect_unix(path))
      assert.are.equal("tulua.pipe", getmetatable(c).__name)
      assert.are.equal("pipe stream (open)", tostring(c))
      assert.are.equal(path, c:peer_name())
      assert.are.equal("unix", c:read_line())
    end))

    it("give the server's side an empty peer name (the client has no path)", bounded(function()
      local c, s, srv = pair(TRANSPORTS[3])
      assert.are.equal("", s:peer_name())
      assert.are.equal(srv:address(), c:peer_name())
    end))

    it("remove the socket file when the server closes, so the path can serve again", bounded(function()
      local path = socket_path()
      local srv = assert(net.serve_unix(path, function() end))
      srv:close()
      assert.are.same({nil, path .. ": no such file or directory", "ENOENT"}, {fs.stat(path)})
      local again = assert(net.serve_unix(path, function() end))
      close_server(again)
    end))

    it("serve_unix returns nil, message and EADDRINUSE for a path in use", bounded(function()
      local path = socket_path()
      local srv = assert(net.serve_unix(path, function() end))
      defer(function() close_server(srv) end)
      assert.are.same({nil, path .. ": address already in use", "EADDRINUSE"}, {net.serve_unix(path, function() end)})
    end))

    it("connect_unix returns nil, message and ENOENT for a missing path", bounded(function()
      local path = dir .. "/missing.sock"
      assert.are.same({nil, path .. ": no such file or directory", "ENOENT"}, {net.connect_unix(path)})
    end))

    it("connect_unix returns nil, message and ECONNREFUSED for a file that is not a socket", bounded(function()
      local path = dir .. "/plain"
      support.write_file(path, "not a socket")
      assert.are.same({nil, path .. ": connection refused", "ECONNREFUSED"}, {net.connect_unix(path)})
    end))
  end)

  for _, t in ipairs(TRANSPORTS) do
    local KIND = t.kind .. " stream" -- as messages name it: "tcp stream"

    describe("streams over " .. t.name, function()
      describe("read", function()
        it("returns what has arrived, at most n bytes, and leaves the rest", bounded(function()
          local c, s = pair(t)
          assert.is_true(c:write("hello world"))
          assert.are.equal("hello", s:read(5))
          assert.are.equal(" world", s:read())
        end))

        it("waits until bytes come", bounded(function()
          local c, s = pair(t)
          local reader = tulua.spawn(s.read, s)
          assert.is_true(eventually(status_is(reader, "waiting")))
          assert.is_true(c:write("late"))
          assert.are.same({"late"}, {reader:join()})
        end))

        it("returns a plain nil at the end of the stream, every time", bounded(function()
          local c, s = pair(t)
          assert.is_true(c:write("last"))
          c:close()
          assert.are.equal("last", s:read())
          assert.are.same({n = 1}, pack(s:read()))
          assert.are.same({n = 1}, pack(s:read()))
          assert.are.same({n = 1}, pack(s:read_line()))
        end))

        it("is binary-safe", bounded(function()
          local c, s = pair(t)
          local bytes = {}
          for i = 0, 255 do
            bytes[#bytes + 1] = string.char(i)
          end
          local all = table.concat(bytes)
          assert.is_true(c:write(all))
          assert.are.equal(all, s:read_exactly(256))
        end))

        it("serves bytes already read without waiting, even where no wait is possible", bounded(function()
          local c, s = pair(t)
          assert.is_true(c:write("ab"))
          assert.are.equal("a", s:read(1)) -- "b" came in the same chunk
          local got
          table.sort({1, 2}, function()
            got = got or s:read(1)
            return false
          end)
          assert.are.equal("b", got)
          assert.has_error(function()
            table.sort({1, 2}, function() s:read(1) end)
          end, "attempt to wait in 'read'" .. CANNOT_YIELD)
        end))
      end)

      describe("read_exactly", function()
        it("waits for exactly n bytes across several writes", bounded(function()
          local c, s = pair(t)
          local reader = tulua.spawn(s.read_exactly, s, 10)
          assert.is_true(c:write("abc"))
          assert.is_true(c:write("defg"))
          assert.is_true(eventually(status_is(reader, "waiting")))
          assert.is_true(c:write("hijkl"))
          assert.are.same({"abcdefghij"}, {reader:join()})
          assert.are.equal("kl", s:read())
        end))

        it("returns nil, message and EOF at the end, and the partial bytes stay readable", bounded(function()
          local c, s = pair(t)
          assert.is_true(c:write("abc"))
          assert.is_true(c:shutdown())
          assert.are.same({nil, KIND .. ": end of stream after 3 of 5 bytes", "EOF"}, {s:read_exactly(5)})
          assert.are.equal("ab", s:read_exactly(2))
          assert.are.same({nil, KIND .. ": end of stream after 1 of 2 bytes", "EOF"}, {s:read_exactly(2)})
          assert.are.equal("c", s:read_exactly(1))
          assert.are.same({nil, KIND .. ": end of stream after 0 of 1 bytes", "EOF"}, {s:read_exactly(1)})
        end))

        it("returns an empty string for 0 bytes at once", bounded(function()
          local _, s = pair(t)
          assert.are.equal("", s:read_exactly(0))
        end))

        it("reads more than the read-ahead limit in one call", bounded(function()
          local c, s = pair(t)
          local data = pattern(3 * MiB)
          local writer = tulua.spawn(c.write, c, data)
          assert.is_true(s:read_exactly(#data) == data)
          assert.are.same({true}, {writer:join()})
        end))
      end)

      describe("read_line", function()
        it("returns lines without their separator, empty lines too", bounded(function()
          local c, s = pair(t)
          assert.is_true(c:write("one\ntwo\r\n\nthree\n"))
          assert.are.equal("one", s:read_line())
          assert.are.equal("two", s:read_line({sep = "\r\n"}))
          assert.are.equal("", s:read_line())
          assert.are.equal("three", s:read_line({}))
        end))

        it("returns a last line without separator at the end, then nil", bounded(function()
          local c, s = pair(t)
          assert.is_true(c:write("a\nunended"))
          assert.is_true(c:shutdown())
          assert.are.equal("a", s:read_line())
          assert.are.equal("unended", s:read_line())
          assert.are.same({n = 1}, pack(s:read_line()))
        end))

        it("finds a separator of several bytes that arrives split across reads", bounded(function()
          local c, s = pair(t)
          local reader = tulua.spawn(s.read_line, s, {sep = "<END>"})
          assert.is_true(eventually(status_is(reader, "waiting")))
          for ch in ("one<EN<END_two<END>three<END>"):gmatch(".") do
            assert.is_true(c:write(ch))
            tulua.sleep(0) -- the loop polls: the byte comes alone
          end
          assert.are.same({"one<EN<END_two"}, {reader:join()})
          assert.are.equal("three", s:read_line({sep = "<END>"}))
        end))

        it("takes a separator of up to 8 bytes", bounded(function()
          local c, s = pair(t)
          assert.is_true(c:write("x12345678y12345678"))
          assert.are.equal("x", s:read_line({sep = "12345678"}))
          assert.are.equal("y", s:read_line({sep = "12345678"}))
        end))

        it("returns nil, message and ENOBUFS for a line longer than max, which stays readable", bounded(function()
          local c, s = pair(t)
          assert.is_true(c:write("12345\n123456\n"))
          assert.are.equal("12345", s:read_line({max = 5}))
          assert.are.same({nil, KIND .. ": line longer than 5 bytes", "ENOBUFS"}, {s:read_line({max = 5})})
          assert.are.equal("123456", s:read_line({max = 6}))
        end))

        it("fails as soon as more than max bytes came without a separator", bounded(function()
          local c, s = pair(t)
          local reader = tulua.spawn(s.read_line, s, {max = 4})
          assert.is_true(c:write("123"))
          assert.is_true(eventually(status_is(reader, "waiting")))
          assert.is_true(c:write("45"))
          assert.are.same({nil, KIND .. ": line longer than 4 bytes", "ENOBUFS"}, {reader:join()})
          assert.are.equal("12345", s:read())
        end))

        it("allows lines of 64 KiB by default", bounded(function()
          local c, s = pair(t)
          local line = string.rep("x", 65536)
          local writer = tulua.spawn(c.write, c, line .. "\n" .. line .. "y\n")
          assert.is_true(s:read_line() == line)
          assert.are.same({nil, KIND .. ": line longer than 65536 bytes", "ENOBUFS"}, {s:read_line()})
          assert.is_true(s:read_line({max = 65537}) == line .. "y")
          assert.are.same({true}, {writer:join()})
        end))

        it("raises on bad options", bounded(function()
          local _, s = pair(t)
          assert.has_error(function() s:read_line(5) end, "bad argument #1 to 'read_line' (table expected, got number)")
          assert.has_error(function() s:read_line({seperator = "\r\n"}) end,
            "bad argument #1 to 'read_line' (unknown option 'seperator')")
          assert.has_error(function() s:read_line({sep = ""}) end,
            "bad argument #1 to 'read_line' ('sep' must be a string of 1 to 8 bytes)")
          assert.has_error(function() s:read_line({sep = "123456789"}) end,
            "bad argument #1 to 'read_line' ('sep' must be a string of 1 to 8 bytes)")
          assert.has_error(function() s:read_line({sep = {}}) end,
            "bad argument #1 to 'read_line' ('sep' must be a string of 1 to 8 bytes)")
          assert.has_error(function() s:read_line({max = 0}) end, "bad argument #1 to 'read_line' ('max' out of range)")
          assert.has_error(function() s:read_line({max = 2 ^ 31}) end,
            "bad argument #1 to 'read_line' ('max' out of range)")
        end))
      end)

      -- Once the stream has read ahead 64 KiB while nobody waited, and
      -- stopped, a read that wants more than is buffered must start it again
      -- (it used to wait forever: the limit did not count the new reader yet).
      -- Each read is cancelled after 3 s so that a stall fails fast.
      describe("after the stream has read ahead its 64 KiB", function()
        -- A pair whose client writes data (in a task); the server's side
        -- has read its first byte and then read ahead as far as it goes.
        local function filled(data)
          local c, s = pair(t)
          local writer = tulua.spawn(c.write, c, data)
          assert.are.equal(data:sub(1, 1), s:read(1))
          tulua.sleep(0.05) -- the stream reads ahead to its limit, then stops
          return c, s, writer
        end

        -- What a read returned in within(): ok, and the length of the
        -- string (or the error) and whether it is expected.
        local function outcome(expected, ok, got)
          return {ok, type(got) == "string" and #got or tostring(got), got == expected}
        end

        it("read_exactly of 200,000 bytes gets them", bounded(function()
          local data = pattern(MiB)
          local _, s = filled(data)
          assert.are.same({true, 200000, true}, outcome(data:sub(2, 200001), within(3, s.read_exactly, s, 200000)))
        end))

        it("read_all gets everything up to the end", bounded(function()
          local data = pattern(MiB)
          local c, s, writer = filled(data)
          tulua.spawn(function()
            if writer:join() then pcall(c.shutdown, c) end
          end)
          assert.are.same({true, #data - 1, true}, outcome(data:sub(2), within(3, s.read_all, s)))
        end))

        it("read_line with a max over 64 KiB gets a long line", bounded(function()
          local data = string.rep("x", 200000) .. "\n"
          local _, s = filled(data)
          assert.are.same({true, 199999, true},
            outcome(string.rep("x", 199999), within(3, s.read_line, s, {max = 300000})))
        end))
      end)

      describe("read_all", function()
        it("returns everything up to the end of the stream, then an empty string", bounded(function()
          local c, s = pair(t)
          local reader = tulua.spawn(s.read_all, s)
          assert.is_true(c:write("abc"))
          assert.is_true(c:write("def"))
          assert.is_true(eventually(status_is(reader, "waiting")))
          assert.is_true(c:shutdown())
          assert.are.same({"abcdef"}, {reader:join()})
          assert.are.equal("", s:read_all())
        end))

        it("returns nil, message and ENOBUFS past max, and the bytes stay readable", bounded(function()
          local c, s = pair(t)
          assert.is_true(c:write("abcdef"))
          assert.is_true(c:shutdown())
          assert.are.same({nil, KIND .. ": more than 5 bytes", "ENOBUFS"}, {s:read_all(5)})
          assert.are.equal("abcdef", s:read_all(6))
        end))

        it("fails as soon as more than max bytes came, before the end", bounded(function()
          local c, s = pair(t)
          local reader = tulua.spawn(s.read_all, s, 4)
          assert.is_true(c:write("abc"))
          assert.is_true(eventually(status_is(reader, "waiting")))
          assert.is_true(c:write("de"))
          assert.are.same({nil, KIND .. ": more than 4 bytes", "ENOBUFS"}, {reader:join()})
        end))
      end)

      describe("lines", function()
        it("iterates over the lines until the end of the stream", bounded(function()
          local c, s = pair(t)
          assert.is_true(c:write("a\nb\n\nc"))
          assert.is_true(c:shutdown())
          local got = {}
          for line in s:lines() do
            got[#got + 1] = line
          end
          assert.are.same({"a", "b", "", "c"}, got)
        end))

        it("passes its options to each read_line", bounded(function()
          local c, s = pair(t)
          assert.is_true(c:write("a\r\nb\nc\r\n"))
          assert.is_true(c:shutdown())
          local got = {}
          for line in s:lines({sep = "\r\n"}) do
            got[#got + 1] = line
          end
          assert.are.same({"a", "b\nc"}, got)
        end))

        it("raises on a failed read", bounded(function()
          local c, s = pair(t)
          assert.is_true(c:write("ok\ntoo long\n"))
          local got = {}
          assert.has_error(function()
            for line in s:lines({max = 5}) do
              got[#got + 1] = line
            end
          end, KIND .. ": line longer than 5 bytes")
          assert.are.same({"ok"}, got)
        end))

        it("raises on bad options", bounded(function()
          local _, s = pair(t)
          assert.has_error(function() s:lines(5) end, "bad argument #1 to 'lines' (table expected, got number)")
        end))
      end)

      describe("write", function()
        it("returns true once the kernel has the bytes, and converts numbers", bounded(function()
          local c, s = pair(t)
          assert.is_true(c:write("n="))
          assert.is_true(c:write(42))
          assert.is_true(c:write(""))
          assert.are.equal("n=42", s:read_exactly(4))
        end))

        it("makes a writer of 8 MiB wait for a slow reader, which gets every byte in order", bounded(function()
          local c, s = pair(t)
          local data = pattern(8 * MiB)
          local writer = tulua.spawn(c.write, c, data)
          assert.is_true(eventually(status_is(writer, "waiting")))
          local got = {s:read(1)}
          tulua.sleep(0.1) -- the reader pauses: the writer must go on waiting
          assert.are.equal("waiting", writer:status())
          local n, reads = 1, 0
          while n < #data do
            local chunk = assert(s:read())
            got[#got + 1] = chunk
            n = n + #chunk
            reads = reads + 1
            if reads % 16 == 0 then tulua.sleep(0.001) end -- slowly
          end
          assert.are.same({true}, {writer:join()})
          assert.are.equal(#data, n)
          assert.is_true(table.concat(got) == data)
        end))

        it("raises on a bad argument", bounded(function()
          local c = pair(t)
          assert.has_error(function() c:write({}) end, "bad argument #1 to 'write' (string expected, got table)")
          assert.has_error(function() c:write() end, "bad argument #1 to 'write' (string expected, got no value)")
        end))
      end)

      describe("shutdown", function()
        it("ends the writing half: the peer reads the end, and can still write back", bounded(function()
          local c, s = pair(t)
          assert.is_true(c:write("bye"))
          assert.is_true(c:shutdown())
          assert.are.equal("bye", s:read_all())
          assert.is_true(s:write("still here"))
          assert.are.equal("still here", c:read_exactly(10))
          s:close()
          assert.are.same({n = 1}, pack(c:read()))
        end))

        it("waits until the queued writes are written", bounded(function()
          local c, s = pair(t)
          local data = pattern(8 * MiB)
          -- nobody reads yet: the socket fills and the write waits (with a
          -- reader already running, a fast build could finish it first)
          local writer = tulua.spawn(c.write, c, data)
          assert.is_true(eventually(status_is(writer, "waiting")))
          local reader = tulua.spawn(s.read_all, s)
          assert.is_true(c:shutdown())
          assert.are.equal("done", writer:status())
          assert.is_true(reader:join() == data)
        end))

        it("returns nil, message and ENOTCONN the second time; writes then fail with EPIPE", bounded(function()
          local c = pair(t)
          assert.is_true(c:shutdown())
          assert.are.same({nil, "shutdown: socket is not connected", "ENOTCONN"}, {c:shutdown()})
          assert.are.same({nil, "write: broken pipe", "EPIPE"}, {c:write("late")})
        end))
      end)

      describe("close", function()
        it("closes the stream once: the peer reads the end, and a second close does nothing", bounded(function()
          local c, s = pair(t)
          c:close()
          assert.is_true(c:is_closed())
          assert.are.equal(KIND .. " (closed)", tostring(c))
          c:close()
          assert.are.same({n = 1}, pack(s:read()))
        end))

        it("is what a <close> variable does", bounded(function()
          local _, s, srv = pair(t)
          local connect = t.host and function() return net.connect(t.host, select(2, srv:address())) end
            or function() return net.connect_unix(srv:address()) end
          local second
          do
            local c <close> = assert(connect())
            second = c
          end
          assert.is_true(second:is_closed())
          assert.is_false(s:is_closed())
        end))

        it("makes every other method raise", bounded(function()
          local c = pair(t)
          c:close()
          local closed = "attempt to use a closed " .. KIND
          assert.has_error(function() c:read() end, closed)
          assert.has_error(function() c:read_exactly(1) end, closed)
          assert.has_error(function() c:read_line() end, closed)
          assert.has_error(function() c:lines() end, closed)
          assert.has_error(function() c:read_all() end, closed)
          assert.has_error(function() c:write("x") end, closed)
          assert.has_error(function() c:shutdown() end, closed)
          if t.kind == "tcp" then
            assert.has_error(function() c:local_address() end, closed)
            assert.has_error(function() c:peer_address() end, closed)
            assert.has_error(function() c:set_nodelay(true) end, closed)
            assert.has_error(function() c:set_keepalive(true) end, closed)
          else
            assert.has_error(function() c:peer_name() end, closed)
          end
        end))

        it("makes a lines() iterator raise at its next step", bounded(function()
          local c, s = pair(t)
          assert.is_true(c:write("one\ntwo\n"))
          local next_line = s:lines()
          assert.are.equal("one", next_line())
          s:close()
          assert.has_error(next_line, "attempt to use a closed " .. KIND)
        end))

        -- The reader is delivered after the close callback has run: that path
        -- once said "stream closed" without the kind.
        it("wakes a waiting reader with nil, '<kind> stream closed' and ECANCELED", bounded(function()
          local _, s = pair(t)
          local reader = tulua.spawn(s.read, s)
          assert.is_true(eventually(status_is(reader, "waiting")))
          s:close()
          assert.are.same({nil, KIND .. " closed", "ECANCELED"}, {reader:join()})
        end))

        -- libuv cancels a pending write with UV_ECANCELED: once "stream closed".
        it("wakes a waiting writer with nil, '<kind> stream closed' and ECANCELED", bounded(function()
          local c = pair(t)
          local writer = tulua.spawn(c.write, c, pattern(8 * MiB))
          assert.is_true(eventually(status_is(writer, "waiting")))
          c:close()
          assert.are.same({nil, KIND .. " closed", "ECANCELED"}, {writer:join()})
        end))

        -- Once push_fail's "shutdown: operation canceled".
        it("wakes a waiting shutdown with nil, '<kind> stream closed' and ECANCELED", bounded(function()
          local c = pair(t)
          local writer = tulua.spawn(c.write, c, pattern(8 * MiB))
          assert.is_true(eventually(status_is(writer, "waiting")))
          local closer = tulua.spawn(c.shutdown, c)
          assert.is_true(eventually(status_is(closer, "waiting")))
          c:close()
          local r = {closer:join()}
          writer:join()
          assert.are.same({nil, KIND .. " closed", "ECANCELED"}, r)
        end))
      end)

      describe("reading tasks", function()
        it("read one at a time: a second reader raises", bounded(function()
          local c, s = pair(t)
          local reader = tulua.spawn(s.read, s)
          assert.is_true(eventually(status_is(reader, "waiting")))
          assert.has_error(function() s:read() end, "another task is reading this stream")
          assert.has_error(function() s:read_line() end, "another task is reading this stream")
          assert.has_error(function() s:read_exactly(1) end, "another task is reading this stream")
          assert.has_error(function() s:read_all() end, "another task is reading this stream")
          assert.is_true(c:write("first"))
          assert.are.same({"first"}, {reader:join()})
        end))

        it("do not stop another task from writing the same stream", bounded(function()
          local c, s = pair(t)
          local reader = tulua.spawn(c.read, c)
          assert.is_true(eventually(status_is(reader, "waiting")))
          assert.is_true(c:write("ping"))
          assert.are.equal("ping", s:read())
          assert.is_true(s:write("pong"))
          assert.are.same({"pong"}, {reader:join()})
        end))

        it("end with the cancellation error when cancelled, and the stream goes on", bounded(function()
          local c, s = pair(t)
          local reader = tulua.spawn(s.read, s)
          assert.is_true(eventually(status_is(reader, "waiting")))
          assert.is_true(reader:cancel())
          cancelled_error(reader)
          assert.is_true(c:write("after"))
          assert.are.equal("after", s:read())
        end))

        it("lose nothing when cancelled in the middle of a line", bounded(function()
          local c, s = pair(t)
          local reader = tulua.spawn(s.read_line, s)
          assert.is_true(c:write("par"))
          assert.is_true(eventually(status_is(reader, "waiting")))
          for _ = 1, 3 do
            tulua.sleep(0)
          end
          reader:cancel()
          cancelled_error(reader)
          assert.is_true(c:write("tial\n"))
          assert.are.equal("partial", s:read_line())
        end))

        it("keep the stream alive while they wait, though nothing else refers to it", bounded(function()
          local accepted, release = asyncio.Queue(), asyncio.Event()
          local _, connect = listen(t, function(s)
            accepted:put(s)
            release:wait()
          end)
          defer(function() release:set() end)
          local weak = setmetatable({}, {__mode = "v"})
          local reader = tulua.spawn(function()
            local c = assert(connect())
            weak[1] = c
            return c:read()
          end)
          local s = accepted:get()
          assert.is_true(eventually(status_is(reader, "waiting")))
          collectgarbage("collect")
          collectgarbage("collect")
          assert.is_not_nil(weak[1])
          assert.is_true(s:write("kept"))
          assert.are.same({"kept"}, {reader:join()})
        end))
      end)

      describe("writing tasks", function()
        it("end with the cancellation error when cancelled; the bytes still go, in order", bounded(function()
          local c, s = pair(t)
          local data = pattern(8 * MiB)
          local writer = tulua.spawn(c.write, c, data)
          assert.is_true(eventually(status_is(writer, "waiting")))
          writer:cancel()
          cancelled_error(writer)
          local reader = tulua.spawn(s.read_exactly, s, #data + 4)
          assert.is_true(c:write("tail"))
          assert.is_true(reader:join() == data .. "tail")
        end))
      end)

      describe("garbage collection", function()
        it("closes a stream that was never closed: the peer reads the end", bounded(function()
          local accepted, release = asyncio.Queue(), asyncio.Event()
          local _, connect = listen(t, function(s)
            accepted:put(s)
            release:wait()
          end)
          defer(function() release:set() end)
          local weak = setmetatable({}, {__mode = "v"})
          weak[1] = assert(connect())
          local s = accepted:get()
          collectgarbage("collect")
          collectgarbage("collect")
          assert.is_nil(weak[1])
          assert.are.same({n = 1}, pack(s:read()))
        end))
      end)

      describe("peer reset", function()
        if t.kind == "tcp" then
          it("makes read return nil, message and ECONNRESET (SO_LINGER 0), every time; write then EPIPE",
            bounded(function()
              local p, port = python(RESETTER, "linger", t.host)
              local c <close> = assert(net.connect(t.host, math.tointeger(tonumber(port))))
              assert.are.equal("last words", c:read_exactly(10))
              assert.is_true(p.stdin:write("\n"))
              assert.are.same({nil, "tcp: connection reset by peer", "ECONNRESET"}, {c:read()})
              assert.are.same({nil, "tcp: connection reset by peer", "ECONNRESET"}, {c:read_line()})
              assert.are.same({nil, "write: broken pipe", "EPIPE"}, {c:write("anyone?")})
            end))
        end

        it("makes read return nil, message and ECONNRESET when the peer closes with unread bytes", bounded(function()
          local c
          if t.host then
            local _, port = python(RESETTER, "unread", t.host)
            c = assert(net.connect(t.host, math.tointeger(tonumber(port))))
          else
            local path = socket_path()
            assert.are.equal("ready", select(2, python(RESETTER, "unix-unread", path)))
            c = assert(net.connect_unix(path))
          end
          defer(function() c:close() end)
          assert.is_true(c:write("never read"))
          assert.are.same({nil, t.kind .. ": connection reset by peer", "ECONNRESET"}, {c:read()})
        end))
      end)

      it("raise on bad arguments", bounded(function()
        local _, s = pair(t)
        assert.has_error(function() s:read(0) end, "bad argument #1 to 'read' (size out of range)")
        assert.has_error(function() s:read(2 ^ 31) end, "bad argument #1 to 'read' (size out of range)")
        assert.has_error(function() s:read("x") end, "bad argument #1 to 'read' (number expected, got string)")
        assert.has_error(function() s:read_exactly() end,
          "bad argument #1 to 'read_exactly' (number expected, got no value)")
        assert.has_error(function() s:read_exactly(-1) end, "bad argument #1 to 'read_exactly' (size out of range)")
        assert.has_error(function() s:read_all(0) end, "bad argument #1 to 'read_all' (size out of range)")
        assert.has_error(function() s.read(42) end, "bad argument #1 to 'read' (stream expected, got number)")
        assert.has_error(function() s.close({}) end, "bad argument #1 to 'close' (stream expected, got table)")
      end))
    end)
  end

  describe("options", function()
    it("raise for an unknown key", function()
      local f = function() end
      assert.has_error(function() net.serve("127.0.0.1", 0, f, {reuse_port = true}) end,
        "bad argument #4 to 'serve' (unknown option 'reuse_port')")
      assert.has_error(function() net.connect("127.0.0.1", 1, {timout = 1}) end,
        "bad argument #3 to 'connect' (unknown option 'timout')")
      assert.has_error(function() net.serve_unix(socket_path(), f, {reuseport = true}) end,
        "bad argument #3 to 'serve_unix' (unknown option 'reuseport')")
    end)

    it("reuseport lets two servers listen on one port, and not without it", bounded(function()
      local a = assert(net.serve("127.0.0.1", 0, function(s) s:write("a\n") end, {reuseport = true}))
      defer(function() close_server(a) end)
      local port = select(2, a:address())
      local b = assert(net.serve("127.0.0.1", port, function(s) s:write("b\n") end, {reuseport = true}))
      defer(function() close_server(b) end)
      assert.are.same({nil, "127.0.0.1:" .. port .. ": address already in use", "EADDRINUSE"},
        {net.serve("127.0.0.1", port, function() end)})
      local c <close> = assert(net.connect("127.0.0.1", port))
      local line = c:read_line()
      assert.is_true(line == "a" or line == "b")
    end))
  end)

  describe("at the descriptor limit", function()
    local function run(mode)
      return process.run({"sh", "-c", 'ulimit -n 64 && exec "$0" net_emfile.lua "$1"', TULUA, mode},
        {cwd = support.FIXTURES})
    end

    it("a server closes the connections it cannot accept and counts them", function()
      local status, out, err = run("plain")
      assert.are.same({0, "1\nhi\t1\n", ""}, {status, out, err})
    end)

    it("a server in debug mode warns of them", function()
      local status, out, err = run("debug")
      assert.are.same({0, "1\nhi\t1\n"}, {status, out})
      assert.matches("^Lua warning: server /[^ ]+ closed 1 connection at the descriptor limit %(EMFILE%)\n$", err)
    end)
  end)

  describe("unix-socket paths", function()
    -- sun_path holds 108 bytes with the terminating zero
    local function path_of(len)
      local p = dir .. "/"
      return p .. string.rep("a", len - #p)
    end

    it("take a path of the kernel's limit, 107 bytes", bounded(function()
      local path = path_of(107)
      local srv = assert(net.serve_unix(path, function(s) s:write("ok\n") end))
      defer(function() close_server(srv) end)
      local c <close> = assert(net.connect_unix(path))
      assert.are.equal("ok", c:read_line())
    end))

    it("fail with ENAMETOOLONG beyond it, instead of cutting the path short", bounded(function()
      local path = path_of(108)
      local msg = path .. ": name too long"
      assert.are.same({nil, msg, "ENAMETOOLONG"}, {net.serve_unix(path, function() end)})
      local short = assert(net.serve_unix(path_of(107), function() end))
      defer(function() close_server(short) end)
      assert.are.same({nil, msg, "ENAMETOOLONG"}, {net.connect_unix(path)})
    end))

    it("refuse an empty path, which would make an abstract socket", function()
      assert.has_error(function() net.serve_unix("", function() end) end,
        "bad argument #1 to 'serve_unix' (empty path)")
      assert.has_error(function() net.connect_unix("") end,
        "bad argument #1 to 'connect_unix' (empty path)")
    end)

    it("name an abstract socket only when asked, without a file", bounded(function()
      local name = "tulua-spec-" .. process.getpid() .. "-" .. socket_path():match("(%d+)%.sock$")
      local srv = assert(net.serve_unix(name, function(s) s:write("abstract\n") end, {abstract = true}))
      defer(function() close_server(srv) end)
      assert.are.equal("\0" .. name, srv:address())
      assert.are.same({nil, name .. ": no such file or directory", "ENOENT"}, {fs.stat(name)})
      local c <close> = assert(net.connect_unix(name, {abstract = true}))
      assert.are.equal("abstract", c:read_line())
      assert.are.same({nil, "@" .. name .. "x: connection refused", "ECONNREFUSED"},
        {net.connect_unix(name .. "x", {abstract = true})})
      assert.are.same({nil, name .. ": no such file or directory", "ENOENT"}, {net.connect_unix(name)})
      assert.has_error(function() net.connect_unix(name, {abstrct = true}) end,
        "bad argument #2 to 'connect_unix' (unknown option 'abstrct')")
    end))

    it("refuse a path with a zero byte instead of cutting it there", function()
      local path = socket_path()
      assert.has_error(function() net.serve_unix(path .. "\0x", function() end) end,
        "bad argument #1 to 'serve_unix' (path contains a zero byte)")
      assert.has_error(function() net.connect_unix(path .. "\0x") end,
        "bad argument #1 to 'connect_unix' (path contains a zero byte)")
    end)
  end)

  describe("tcp streams", function()
    it("give their local and peer addresses", bounded(function()
      for _, t in ipairs({TRANSPORTS[1], TRANSPORTS[2]}) do
        local c, s, srv = pair(t)
        local _, port = srv:address()
        local chost, cport = c:local_address()
        assert.are.equal(t.host, chost)
        assert.are.same({t.host, port}, {c:peer_address()})
        assert.are.same({t.host, port}, {s:local_address()})
        assert.are.same({chost, cport}, {s:peer_address()})
      end
    end))

    it("set TCP_NODELAY and SO_KEEPALIVE", bounded(function()
      local c = pair(TRANSPORTS[1])
      assert.is_true(c:set_nodelay(true))
      assert.is_true(c:set_nodelay(false))
      assert.is_true(c:set_keepalive(true))
      assert.is_true(c:set_keepalive(true, 10))
      assert.is_true(c:set_keepalive(false))
      assert.has_error(function() c:set_keepalive(true, 0) end,
        "bad argument #2 to 'set_keepalive' (delay out of range)")
    end))

    it("have no pipe methods, and pipe streams no tcp methods", bounded(function()
      local c = pair(TRANSPORTS[1])
      local p = pair(TRANSPORTS[3])
      assert.is_nil(c.peer_name)
      assert.is_nil(p.local_address)
      assert.has_error(function() c.local_address(p) end,
        "bad argument #1 to 'local_address' (tcp stream expected, got tulua.pipe)")
    end))
  end)

  describe("servers", function()
    it("run each connection's handler in a task of its own, concurrently", bounded(function()
      local handlers = {}
      local _, connect = listen(TRANSPORTS[1], function(s)
        handlers[#handlers + 1] = tulua.current()
        local name = s:read_line()
        s:write("hello, " .. name .. "\n")
      end)
      local a <close> = assert(connect())
      local b <close> = assert(connect())
      assert.is_true(eventually(function() return #handlers == 2 end))
      assert.is_true(b:write("b\n")) -- the second is served while the first waits
      assert.are.equal("hello, b", b:read_line())
      assert.is_true(a:write("a\n"))
      assert.are.equal("hello, a", a:read_line())
      assert.are_not.equal(handlers[1], handlers[2])
      assert.are_not.equal(tulua.current(), handlers[1])
    end))

    -- The loop is blocked while Python opens 200 connections: they wait in
    -- the backlog, libuv accepts them all in one turn, and each is served.
    it("serve every connection of a burst that waited in the backlog", bounded(function()
      local srv <close> = assert(net.serve("127.0.0.1", 0, function(s)
        local line = s:read_line()
        if line then s:write("got " .. line .. "\n") end
      end, {backlog = 512}))
      local _, port = srv:address()
      local client = assert(process.spawn({"/usr/bin/python3", "-c", [[
import socket, sys
port = int(sys.argv[1])
socks = [socket.create_connection(("127.0.0.1", port)) for i in range(200)]
print("connected", flush=True)
for i, s in enumerate(socks): s.sendall(b"%d\n" % i)
ok = sum(1 for i, s in enumerate(socks) if s.makefile().readline() == "got %d\n" % i)
print(ok, flush=True)
]], tostring(port)}, {stdin = "null", stdout = "pipe", stderr = "pipe"}))
      local blocked = os.clock()
      while os.clock() - blocked < 0.5 do end -- the loop turns no more meanwhile
      assert.are.equal("connected", client.stdout:read_line())
      assert.are.equal("200", client.stdout:read_line())
      assert.are.equal(0, client:wait())
    end, 30))

    it("close the stream when the handler returns, even if it is kept elsewhere", bounded(function()
      local kept
      local srv, connect = listen(TRANSPORTS[1], function(s)
        kept = s
        s:write("bye\n")
      end)
      local c <close> = assert(connect())
      assert.are.equal("bye", c:read_line())
      assert.are.same({n = 1}, pack(c:read()))
      assert.is_true(kept:is_closed())
      assert.is_true(eventually(function() return srv:connections() == 0 end))
    end))

    it("count their open connections", bounded(function()
      local release = asyncio.Event()
      local srv, connect = listen(TRANSPORTS[1], function() release:wait() end)
      assert.are.equal(0, srv:connections())
      local a <close> = assert(connect())
      local b <close> = assert(connect())
      assert.is_true(eventually(function() return srv:connections() == 2 end))
      release:set()
      assert.is_true(eventually(function() return srv:connections() == 0 end))
      assert.are.same({n = 1}, pack(a:read())) -- the handlers returned: their streams closed
      assert.are.same({n = 1}, pack(b:read()))
    end))

    it("report a failing handler's error, close its stream and go on serving", bounded(function()
      local status, out, err = process.run({TULUA, "net_handler_error.lua"},
        {cwd = support.FIXTURES, stdin = "null", timeout = 20})
      local report = function(i)
        return TULUA .. ": net_handler_error.lua:7: bad request: request " .. i .. "\n"
          .. "stack traceback:\n"
          .. "\t[C]: in function 'error'\n"
          .. "\tnet_handler_error.lua:7: in local 'handler'\n"
          .. "\tserver:3: in main chunk\n"
      end
      assert.are.same({1, "nil\nnil\ndone\n", report(1) .. report(2)}, {status, out, err})
    end, 30))

    it("keep tulua running after the main chunk until closed", bounded(function()
      local p = assert(process.spawn({TULUA, "net_serve_alive.lua"},
        {cwd = support.FIXTURES, stdin = "null", stdout = "pipe"}))
      defer(function()
        p:kill("SIGKILL")
        within(5, p.wait, p)
      end)
      local port = math.tointeger(tonumber(p.stdout:read_line()))
      for _, word in ipairs({"one", "two"}) do
        local c <close> = assert(net.connect("127.0.0.1", port))
        assert.is_true(c:write(word .. "\n"))
        assert.are.equal("got " .. word, c:read_line())
      end
      assert.are.same({n = 0}, pack(p:poll())) -- still running
      local c <close> = assert(net.connect("127.0.0.1", port))
      assert.is_true(c:write("stop\n"))
      assert.are.equal("got stop", c:read_line())
      assert.are.same({0}, {p:wait()})
      assert.are.equal("", p.stdout:read_all())
    end, 20))

    describe("close", function()
      it("stops accepting at once and leaves open connections working", bounded(function()
        local srv, connect = listen(TRANSPORTS[1], echo_lines)
        local _, port = srv:address()
        local c <close> = assert(connect())
        assert.is_true(eventually(function() return srv:connections() == 1 end))
        srv:close()
        assert.is_true(srv:is_closed())
        assert.are.equal("server (closed)", tostring(srv))
        assert.are.same({nil, "127.0.0.1:" .. port .. ": connection refused", "ECONNREFUSED"},
          {net.connect("127.0.0.1", port)})
        assert.is_true(c:write("still\n"))
        assert.are.equal("still", c:read_line())
        assert.are.equal(1, srv:connections())
      end))

      it("does nothing the second time; address then raises", bounded(function()
        local srv = listen(TRANSPORTS[1], echo_lines)
        srv:close()
        srv:close()
        assert.has_error(function() srv:address() end, "attempt to use a closed server")
        assert.has_error(function() srv.close(42) end, "bad argument #1 to 'close' (tulua.server expected, got number)")
      end))

      it("is what a <close> variable does", bounded(function()
        local port
        do
          local srv <close> = assert(net.serve("127.0.0.1", 0, echo_lines))
          port = select(2, srv:address())
        end
        tulua.sleep(0)
        assert.are.same({nil, "127.0.0.1:" .. port .. ": connection refused", "ECONNREFUSED"},
          {net.connect("127.0.0.1", port)})
      end))

      it("frees the port for a new server", bounded(function()
        local srv = assert(net.serve("127.0.0.1", 0, echo_lines))
        local _, port = srv:address()
        srv:close()
        tulua.sleep(0)
        local again = assert(net.serve("127.0.0.1", port, echo_lines))
        close_server(again)
      end))
    end)

    describe("wait_closed", function()
      it("waits until the server is closed and its connections have ended", bounded(function()
        local srv, connect = listen(TRANSPORTS[1], echo_lines)
        local c = assert(connect())
        assert.is_true(eventually(function() return srv:connections() == 1 end))
        local waiter = tulua.spawn(srv.wait_closed, srv)
        assert.is_true(eventually(status_is(waiter, "waiting")))
        srv:close()
        tulua.sleep(0.05) -- a connection is open: it goes on waiting
        assert.are.equal("waiting", waiter:status())
        c:close()
        assert.are.same({true}, {waiter:join()})
        assert.are.equal(0, srv:connections())
        assert.is_true(srv:wait_closed()) -- at once now
      end))

      it("allows one waiting task at a time", bounded(function()
        local srv = listen(TRANSPORTS[1], echo_lines)
        local waiter = tulua.spawn(srv.wait_closed, srv)
        assert.is_true(eventually(status_is(waiter, "waiting")))
        assert.has_error(function() srv:wait_closed() end, "another task waits for this server")
        srv:close()
        assert.are.same({true}, {waiter:join()})
      end))

      it("ends with the cancellation error when cancelled, and can wait again", bounded(function()
        local srv = listen(TRANSPORTS[1], echo_lines)
        local waiter = tulua.spawn(srv.wait_closed, srv)
        assert.is_true(eventually(status_is(waiter, "waiting")))
        waiter:cancel()
        cancelled_error(waiter)
        local again = tulua.spawn(srv.wait_closed, srv)
        assert.is_true(eventually(status_is(again, "waiting")))
        srv:close()
        assert.are.same({true}, {again:join()})
      end))
    end)

    describe("garbage collection", function()
      it("keeps a listening server that nothing refers to, until it is closed", bounded(function()
        local weak = setmetatable({}, {__mode = "v"})
        weak[1] = assert(net.serve("127.0.0.1", 0, echo_lines))
        local _, port = weak[1]:address()
        collectgarbage("collect")
        collectgarbage("collect")
        assert.is_not_nil(weak[1])
        local c <close> = assert(net.connect("127.0.0.1", port))
        assert.is_true(c:write("alive\n"))
        assert.are.equal("alive", c:read_line())
        c:close()
        weak[1]:close()
        assert.is_true(eventually(function() -- once the connection's task has ended
          collectgarbage("collect")
          collectgarbage("collect")
          return weak[1] == nil
        end))
        local again = assert(net.serve("127.0.0.1", port, echo_lines))
        close_server(again)
      end))

      it("leaves no descriptor behind for servers that failed to listen", bounded(function()
        local srv = listen(TRANSPORTS[1], echo_lines)
        local _, port = srv:address()
        local path = socket_path()
        local usrv = assert(net.serve_unix(path, echo_lines))
        defer(function() close_server(usrv) end)
        collectgarbage("collect")
        local before = fd_count()
        for _ = 1, 20 do
          assert.are.equal("EADDRINUSE", select(3, net.serve("127.0.0.1", port, echo_lines)))
          assert.are.equal("EADDRINUSE", select(3, net.serve_unix(path, echo_lines)))
        end
        assert.is_true(eventually(function()
          collectgarbage("collect")
          return fd_count() == before
        end))
      end))
    end)
  end)

  describe("cancellation races", function()
    -- A reader woken by its data but cancelled before it runs must leave the
    -- bytes in the buffer (it once consumed them in its deliver and then
    -- dropped the results), as bindings/tty.md promises.
    it("give the bytes of a reader woken then cancelled to the next reader", bounded(function()
      local c, s = pair(TRANSPORTS[1])
      local reader = tulua.spawn(s.read, s)
      assert.is_true(eventually(status_is(reader, "waiting")))
      assert.is_true(c:write("kept\n"))
      for _ = 1, 100 do
        tulua.sleep(0) -- runs again just after the poll that readies the reader
        if reader:status() ~= "waiting" then break end
      end
      assert.are.equal("ready", reader:status())
      reader:cancel()
      cancelled_error(reader)
      assert.is_true(c:write("next\n"))
      assert.are.equal("kept", s:read_line())
    end))
  end)

  describe("memory", function()
    it("stays bounded while a fast peer sends 64 MiB to a reader that pauses", bounded(function()
      local p, port = python([[
import socket, sys
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen(1)
print(s.getsockname()[1], flush=True)
c, _ = s.accept()
c.sendall(b"y" * (64 << 20))
c.close()
]])
      local c <close> = assert(net.connect("127.0.0.1", math.tointeger(tonumber(port))))
      assert.are.equal("y", c:read(1)) -- the stream reads ahead from now on
      local before = rss()
      tulua.sleep(0.3) -- the peer sends as fast as it can; nobody reads
      local growth = rss() - before
      assert.is_true(growth < 4 * MiB, "grew by " .. growth .. " bytes while nobody read")
      local n = 1
      while true do
        local chunk = c:read()
        if not chunk then break end
        n = n + #chunk
      end
      assert.are.equal(64 * MiB, n)
      assert.are.same({0}, {p:wait()})
    end, 30))
  end)

  describe("with real peers", function()
    -- A small HTTP/1.1 responder: GET answers "hello from tulua <target>",
    -- POST answers its body back; the connection is kept for the next
    -- request until the client closes it or asks "Connection: close".
    local served, used -- connections accepted, and those that carried a request
    local function http(s)
      served = served + 1
      local counted = false
      while true do
        local request = s:read_line({sep = "\r\n"})
        if not request then return end
        local method, target = request:match("^(%u+) (%S+) HTTP/1%.1$")
        local headers = {}
        while true do
          local line = s:read_line({sep = "\r\n"})
          if not line then return end
          if line == "" then break end
          local name, value = line:match("^([^:]+):%s*(.-)%s*$")
          headers[name:lower()] = value
        end
        local body = ""
        if headers["content-length"] then
          body = s:read_exactly(math.tointeger(tonumber(headers["content-length"])))
          if not body then return end
        end
        if not counted then
          counted = true
          used = used + 1
        end
        local reply = method == "POST" and body or "hello from tulua " .. target .. "\n"
        local head = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: " .. #reply .. "\r\n\r\n"
        if not s:write(head .. reply) or headers.connection == "close" then return end
      end
    end

    before_each(function()
      served, used = 0, 0
    end)

    local function run(argv, input)
      return process.run(argv, {input = input, timeout = 20})
    end

    it("curl gets a page from a tulua server", bounded(function()
      local srv = listen(TRANSPORTS[1], http)
      local url = "http://127.0.0.1:" .. select(2, srv:address())
      assert.are.same({0, "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 24\r\n\r\n"
        .. "hello from tulua /hello\n", ""}, {run({"curl", "-sS", "-i", url .. "/hello"})})
    end, 30))

    it("curl reuses one connection for several requests", bounded(function()
      local srv = listen(TRANSPORTS[1], http)
      local url = "http://127.0.0.1:" .. select(2, srv:address())
      assert.are.same({0, "hello from tulua /a\nhello from tulua /b\nhello from tulua /c\n", ""},
        {run({"curl", "-sS", url .. "/a", url .. "/b", url .. "/c"})})
      assert.are.equal(1, served)
    end, 30))

    it("curl posts 32 KiB and gets them back", bounded(function()
      local srv = listen(TRANSPORTS[1], http)
      local url = "http://127.0.0.1:" .. select(2, srv:address()) .. "/echo"
      local body = pattern(32 * 1024)
      local status, out, err = run({"curl", "-sS", "-H", "Expect:", "--data-binary", "@-", url}, body)
      assert.are.same({0, ""}, {status, err})
      assert.is_true(out == body)
    end, 30))

    -- The handler parses the headers with read_line, which lets the stream
    -- read ahead 64 KiB of the body, then read_exactly of the body: the
    -- read-ahead stall above (which hung here about 1 run in 6). Five posts,
    -- each bounded by 5 s.
    it("curl posts 4 MiB and gets them back", bounded(function()
      local srv = listen(TRANSPORTS[1], http)
      local url = "http://127.0.0.1:" .. select(2, srv:address()) .. "/echo"
      local body = pattern(4 * MiB)
      for _ = 1, 5 do
        local status, out, err = process.run({"curl", "-sS", "-H", "Expect:", "--data-binary", "@-", url},
          {input = body, timeout = 5})
        assert.are.same({0, ""}, {status, err})
        assert.is_true(out == body)
      end
    end, 30))

    it("curl gets a page from a tulua server on ::1", bounded(function()
      local srv = listen(TRANSPORTS[2], http)
      local url = "http://[::1]:" .. select(2, srv:address()) .. "/six"
      assert.are.same({0, "hello from tulua /six\n", ""}, {run({"curl", "-sS", "-g", url})})
    end, 30))

    it("wrk loads a tulua server for a second without an error", bounded(function()
      local srv = listen(TRANSPORTS[1], http)
      local url = "http://127.0.0.1:" .. select(2, srv:address()) .. "/"
      local status, out = run({"wrk", "-t1", "-c16", "-d1s", url})
      assert.are.equal(0, status)
      local requests = tonumber(out:match("(%d+) requests in"))
      assert.is_true(requests ~= nil and requests > 100, out)
      assert.is_nil(out:find("Socket errors"), out)
      assert.is_nil(out:find("Non%-2xx"), out)
      assert.are.equal(16, used) -- wrk also makes a first connection without a request
      assert.is_true(eventually(function() return srv:connections() == 0 end))
    end, 30))

    it("nc sends 1 MiB to a tulua echo server over TCP and gets it back", bounded(function()
      local srv = listen(TRANSPORTS[1], echo_bytes)
      local data = pattern(MiB)
      local status, out, err = run({"nc", "-N", "127.0.0.1", select(2, srv:address())}, data)
      assert.are.same({0, ""}, {status, err})
      assert.is_true(out == data)
    end, 30))

    it("nc talks lines to a tulua echo server over a unix socket", bounded(function()
      local srv = listen(TRANSPORTS[3], echo_lines)
      assert.are.same({0, "hello\nworld\n", ""}, {run({"nc", "-N", "-U", srv:address()}, "hello\nworld\n")})
    end, 30))

    describe("python3 -m http.server", function()
      local big

      -- Starts python's file server on dir; returns its port.
      local function start()
        support.write_file(dir .. "/hello.txt", "hello from python\n")
        big = pattern(2 * MiB)
        support.write_file(dir .. "/big.bin", big)
        local p = assert(process.spawn({"python3", "-u", "-m", "http.server", "0", "--bind", "127.0.0.1",
          "--directory", dir}, {stdin = "null", stdout = "pipe", stderr = "null"}))
        defer(function()
          p:kill("SIGKILL")
          within(5, p.wait, p)
        end)
        return math.tointeger(tonumber(p.stdout:read_line():match(" port (%d+) ")))
      end

      -- GETs target with HTTP/1.0; returns the status line, the headers
      -- (lowercase names) and the body, read up to the end of the stream.
      local function get(port, target)
        local c <close> = assert(net.connect("127.0.0.1", port))
        assert.is_true(c:write("GET " .. target .. " HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n"))
        local status = c:read_line({sep = "\r\n"})
        local headers = {}
        for line in c:lines({sep = "\r\n"}) do
          if line == "" then break end
          local name, value = line:match("^([^:]+): (.*)$")
          headers[name:lower()] = value
        end
        return status, headers, c:read_all()
      end

      it("serves a tulua client a small file, and a 404", bounded(function()
        local port = start()
        local status, headers, body = get(port, "/hello.txt")
        assert.are.equal("HTTP/1.0 200 OK", status)
        assert.are.equal("18", headers["content-length"])
        assert.are.equal("hello from python\n", body)
        assert.are.equal("HTTP/1.0 404 File not found", (get(port, "/missing")))
      end, 30))

      -- The headers come through read_line, which reads ahead into the body:
      -- the read-ahead stall above (it hung read_all here).
      it("serves a tulua client a 2 MiB file", bounded(function()
        local port = start()
        local status, headers, body = get(port, "/big.bin")
        assert.are.equal("HTTP/1.0 200 OK", status)
        assert.are.equal(tostring(#big), headers["content-length"])
        assert.is_true(body == big)
      end, 30))
    end)

    describe("redis-server", function()
      -- Encodes a command in RESP.
      local function command(...)
        local parts = {"*" .. select("#", ...) .. "\r\n"}
        for i = 1, select("#", ...) do
          local arg = tostring(select(i, ...))
          parts[#parts + 1] = "$" .. #arg .. "\r\n" .. arg .. "\r\n"
        end
        return table.concat(parts)
      end

      -- Reads one reply: a status ("+OK"), an error, an integer (":1"), a
      -- bulk string (its bytes) or nil for a null bulk string.
      local function reply(c)
        local line = assert(c:read_line({sep = "\r\n"}))
        if line:sub(1, 1) ~= "$" then return line end
        local n = math.tointeger(tonumber(line:sub(2)))
        if n < 0 then return nil end
        local data = assert(c:read_exactly(n + 2))
        assert.are.equal("\r\n", data:sub(-2))
        return data:sub(1, -3)
      end

      -- Starts redis-server on a unix socket and a TCP port of 127.0.0.1,
      -- without persistence; returns a client stream over each.
      local function start()
        local port = free_port()
        local path = dir .. "/redis.sock"
        local p = assert(process.spawn({"redis-server", "--port", port, "--bind", "127.0.0.1",
          "--unixsocket", path, "--save", "", "--appendonly", "no"},
          {stdin = "null", stdout = "null", stderr = "null"}))
        defer(function()
          p:kill("SIGKILL")
          within(5, p.wait, p)
        end)
        local u
        assert.is_true(eventually(function()
          u = net.connect_unix(path)
          return u ~= nil
        end))
        local c = assert(net.connect("127.0.0.1", port))
        defer(function()
          u:close()
          c:close()
        end)
        return u, c
      end

      it("answers a tulua client over a unix socket and over TCP", bounded(function()
        local u, c = start()
        assert.is_true(u:write(command("PING")))
        assert.are.equal("+PONG", reply(u))
        local value = "binary\r\n\0value"
        assert.is_true(u:write(command("SET", "k", value)))
        assert.are.equal("+OK", reply(u))
        assert.is_true(c:write(command("GET", "k")))
        assert.are.equal(value, reply(c))
        assert.is_true(c:write(command("GET", "missing")))
        assert.is_nil(reply(c))
        assert.is_true(c:write(command("NOSUCHCOMMAND")))
        assert.matches("^%-ERR unknown command 'NOSUCHCOMMAND'", reply(c))
        local batch = {}
        for i = 1, 1000 do
          batch[i] = command("INCR", "n")
        end
        assert.is_true(u:write(table.concat(batch))) -- pipelined
        for i = 1, 1000 do
          assert.are.equal(":" .. i, reply(u))
        end
      end, 30))

      -- read_line reads the "$2097152" header while the stream reads ahead:
      -- the read-ahead stall above (it hung read_exactly here).
      it("stores and returns a 2 MiB value", bounded(function()
        local u, c = start()
        local big = pattern(2 * MiB)
        assert.is_true(c:write(command("SET", "big", big)))
        assert.are.equal("+OK", reply(c))
        assert.is_true(u:write(command("GET", "big")))
        assert.is_true(reply(u) == big)
      end, 30))
    end)
  end)

  describe("10,000 concurrent connections", function()
    it("are served by one tulua server, each echoing its own line", bounded(function()
      local t0 = tulua.now()
      local status, out, err = process.run({"sh", "-c", 'ulimit -n 12000 && exec "$0" net_storm.lua 10000', TULUA},
        {cwd = support.FIXTURES, stdin = "null", timeout = 60})
      local elapsed = tulua.now() - t0
      assert.are.same({0, "10000 connections open\n"
        .. "10000 echoed\n"
        .. "the server had 10000 connections open at once\n"
        .. "the server closed\n"
        .. "the server exited with status 0\n", ""}, {status, out, err})
      assert.is_true(elapsed > 0)
    end, 70))
  end)

  describe("descriptors", function()
    it("are all given back after a storm of connections, cancellations and closes", bounded(function()
      local stuck = stuck_listener("127.0.0.1")
      local srv = listen(TRANSPORTS[1], echo_lines)
      local usrv = listen(TRANSPORTS[3], echo_lines)
      local _, port = srv:address()
      local path = usrv:address()
      local bye = listen(TRANSPORTS[1], function(s) s:write("bye\n") end)
      local _, bye_port = bye:address()
      collectgarbage("collect")
      collectgarbage("collect")
      local before = fd_count()

      local tasks = {}
      local function go(fn, ...)
        tasks[#tasks + 1] = tulua.spawn(fn, ...)
      end
      for i = 1, 200 do -- round trips, closed in three ways, half over unix
        go(function()
          local c = assert(i % 2 == 0 and net.connect("127.0.0.1", port) or net.connect_unix(path))
          assert(c:write("ping " .. i .. "\n"))
          assert(c:read_line() == "ping " .. i)
          if i % 3 == 0 then
            c:close()
          elseif i % 3 == 1 then
            assert(c:shutdown())
            assert(c:read() == nil)
            c:close()
          end -- else left to the garbage collector
        end)
      end
      for _ = 1, 50 do -- closed by the server
        go(function()
          local c <close> = assert(net.connect("127.0.0.1", bye_port))
          assert(c:read_line() == "bye")
          assert(c:read() == nil)
        end)
      end
      for i = 1, 20 do -- failures
        go(function()
          assert(not net.connect("127.0.0.1", stuck, {timeout = 0.05}))
          assert(not net.connect_unix(dir .. "/missing.sock"))
          assert(not net.serve("127.0.0.1", port, echo_lines))
          assert(not net.serve_unix(path, echo_lines))
          if i <= 5 then assert(not net.connect("nonexistent.invalid", 80)) end
        end)
      end
      for _, t in ipairs(tasks) do
        t:join()
      end

      local connected, victims = 0, {}
      for i = 1, 50 do -- cancelled in the middle of a read
        victims[#victims + 1] = tulua.spawn(function()
          local c = assert(i % 2 == 0 and net.connect("127.0.0.1", port) or net.connect_unix(path))
          connected = connected + 1
          return c:read_line()
        end)
      end
      for _ = 1, 50 do -- cancelled while connecting
        victims[#victims + 1] = tulua.spawn(net.connect, "127.0.0.1", stuck)
      end
      for _ = 1, 20 do -- cancelled as soon as they wait (looking up the name, or connecting)
        victims[#victims + 1] = tulua.spawn(net.connect, "localhost", port)
      end
      tulua.sleep(0)
      for i = 101, 120 do
        victims[i]:cancel()
      end
      assert.is_true(eventually(function()
        if connected < 50 then return false end
        for i = 1, 100 do
          if victims[i]:status() ~= "waiting" then return false end
        end
        return true
      end))
      for i = 1, 100 do
        victims[i]:cancel()
      end
      for _, v in ipairs(victims) do
        pcall(v.join, v)
        assert.is_true(v:cancelled() or v:status() == "done")
      end
      tasks, victims = nil, nil -- a task keeps its results (a stream)

      assert.is_true(eventually(function()
        collectgarbage("collect")
        collectgarbage("collect")
        return fd_count() == before and srv:connections() == 0 and usrv:connections() == 0
      end))
      assert.are.equal(before, fd_count())
    end, 30))
  end)
end)
