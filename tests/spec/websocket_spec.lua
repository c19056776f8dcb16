-- tulua._websocket: WebSocket handshakes and messages against Python's
-- websockets (Debian python3-websockets, asyncio API) as server and as
-- client, and against raw Python peers that break the protocol on purpose
-- (garbage frames, unmasked client frames, silence). Everything listens on
-- 127.0.0.1; each body runs under a watchdog (support.bounded).
local tulua = require("tulua")
local net = require("tulua.net")
local process = require("tulua.process")
local W = require("tulua._websocket")

package.path = (debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or ".") .. "/?.lua;" .. package.path
local support = require("support")
local bounded = support.bounded

-- Debian's python3, which has python3-websockets (a python3 earlier in
-- PATH, as pyenv's, may lack it).
local PYTHON = "/usr/bin/python3"

-- The Python peer. "server": a websockets server whose behaviour follows
-- the path, and a raw server that answers the handshake by hand and then
-- misbehaves as its path says; prints both ports, then one line per event.
-- "client PORT MODE": a websockets client of our server. "raw PORT MODE": a
-- client that does the handshake by hand, then misbehaves.
local PEER = [[
import asyncio, base64, hashlib, os, sys
import websockets

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

def out(*a):
    print(*a, flush=True)

async def read_close(reader, masked):
    hdr = await reader.readexactly(2)
    n = hdr[1] & 0x7f
    mask = await reader.readexactly(4) if masked else b"\0\0\0\0"
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(await reader.readexactly(n)))
    return hdr[0], hdr[1] & 0x80, int.from_bytes(body[:2], "big") if n >= 2 else None

async def handler(ws, path):
    if path == "/echo":
        try:
            async for msg in ws:
                await ws.send(msg)
        except websockets.ConnectionClosed:
            pass
        out("closed", ws.close_code, ws.close_reason)
    elif path == "/frag":
        await ws.send(iter(["fra", "gme", "nted"]))
        await ws.send(iter([b"\x00\x01", b"\x02"]))
        await ws.wait_closed()
    elif path == "/ping":
        pong = await ws.ping(b"hi")
        await asyncio.wait_for(pong, 5)
        await ws.send("got pong")
        await ws.wait_closed()
    elif path == "/close":
        await ws.close(4001, "bye")
    elif path == "/hangup":
        await ws.send("last")
        await asyncio.sleep(0.1)
        ws.transport.abort()
    elif path == "/big":
        await ws.send("x" * 2000)
        await ws.wait_closed()
        out("closed", ws.close_code)

async def raw_server(reader, writer):
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    path = lines[0].split(b" ")[1]
    key = [l.split(b":", 1)[1].strip() for l in lines if l.lower().startswith(b"sec-websocket-key:")][0]
    accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
    if path == b"/404":
        writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()
        return
    if path == b"/badaccept":
        accept = base64.b64encode(b"x" * 20)
    writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                 b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n")
    if path == b"/garbage":
        writer.write(b"\x83\x00")  # opcode 3 is reserved
    elif path == b"/masked":
        writer.write(b"\x81\x82abcd" + bytes([ord("h") ^ ord("a"), ord("i") ^ ord("b")]))
    elif path == b"/badutf8":
        writer.write(b"\x81\x02\xff\xfe")
    elif path == b"/longping":
        writer.write(b"\x89\x7e\x00\x80" + b"p" * 128)  # control frames hold 125 bytes
    await writer.drain()
    try:
        op, masked, code = await read_close(reader, True)
        out("raw close", op, masked, code)
    except Exception as e:
        out("raw error", type(e).__name__)
    await reader.read()
    writer.close()

async def serve():
    async with websockets.serve(handler, "127.0.0.1", 0, max_size=2**24) as srv:
        raw = await asyncio.start_server(raw_server, "127.0.0.1", 0)
        out(srv.sockets[0].getsockname()[1], raw.sockets[0].getsockname()[1])
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)

async def client(port, mode):
    uri = "ws://127.0.0.1:%d/%s" % (port, mode)
    async with websockets.connect(uri, max_size=2**24, subprotocols=["x", "chat"]) as ws:
        out("protocol", ws.subprotocol)
        if mode == "echo":
            await ws.send("h\u00e9llo")
            out(await ws.recv())
            await ws.send(b"\x00\xff")
            r = await ws.recv()
            out(type(r).__name__, r.hex())
            big = os.urandom(3 * 2**20)
            await ws.send(big)
            out("big", await ws.recv() == big)
            await ws.send(iter(["a", "b", "c"]))
            out(await ws.recv())
            pong = await ws.ping(b"p")
            await asyncio.wait_for(pong, 5)
            out("pong")
            await ws.close(4002, "client bye")
        else:
            try:
                await ws.send("x" * 3000)
                await ws.recv()
            except websockets.ConnectionClosed:
                pass
        out("closed", ws.close_code, ws.close_reason)

async def raw_client(port, mode):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /raw HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    head = await reader.readuntil(b"\r\n\r\n")
    out(head.split(b"\r\n")[0].decode())
    if mode == "hangup":
        writer.close()
        return
    if mode == "unmasked":
        writer.write(b"\x81\x02hi")
    elif mode == "badutf8":
        writer.write(b"\x81\x82\0\0\0\0\xff\xfe")
    await writer.drain()
    op, masked, code = await read_close(reader, False)
    out("raw close", op, masked, code)

if sys.argv[1] == "server":
    asyncio.run(serve())
elif sys.argv[1] == "client":
    asyncio.run(client(int(sys.argv[2]), sys.argv[3]))
else:
    asyncio.run(raw_client(int(sys.argv[2]), sys.argv[3]))
]]

-- Clean-ups registered by the spec that runs, run in reverse order after
-- it (busted's finally keeps only one function per spec).
local cleanups = {}

local function defer(fn)
  cleanups[#cleanups + 1] = fn
end

after_each(function()
  for i = #cleanups, 1, -1 do
    cleanups[i]()
    cleanups[i] = nil
  end
end)

local function kill(p)
  p:kill("SIGKILL")
  p:wait()
end

-- Starts the peer with args; returns the Process (killed when the spec
-- ends).
local function python(...)
  local p = assert(process.spawn({PYTHON, "-c", PEER, ...}, {stdin = "pipe", stdout = "pipe"}))
  defer(function() kill(p) end)
  return p
end

-- The Python server, started once for the specs that use it.
local py, ws_port, raw_port

local function python_server()
  if not py then
    py = assert(process.spawn({PYTHON, "-c", PEER, "server"}, {stdin = "pipe", stdout = "pipe"}))
    local line = py.stdout:read_line()
    local a, b = line:match("^(%d+) (%d+)$")
    ws_port, raw_port = math.tointeger(tonumber(a)), math.tointeger(tonumber(b))
  end
  return py
end

-- The next event line the Python server printed.
local function py_line()
  return py.stdout:read_line()
end

local function connect(port, target, opts)
  local s = assert(net.connect("127.0.0.1", port))
  opts = opts or {}
  opts.host = "127.0.0.1:" .. port
  opts.target = target
  return W.connect_stream(s, opts)
end

-- Reads a request head as an HTTP server would: the request line and a
-- table of lower-case header names.
local function read_head(conn)
  local first = conn:read_line({sep = "\r\n"})
  local h = {}
  while true do
    local l = conn:read_line({sep = "\r\n"})
    if l == nil or l == "" then break end
    local k, v = l:match("^([^:]+):%s*(.*)$")
    h[k:lower()] = v
  end
  return first, h
end

-- Serves WebSocket with handler(ws, path) on 127.0.0.1; returns its port.
local function serve(handler, opts)
  local srv = assert(net.serve("127.0.0.1", 0, function(conn)
    local first, h = read_head(conn)
    local ws = assert(W.accept_stream(conn, h, opts))
    handler(ws, first:match("^GET (%S+)"))
  end))
  defer(function() srv:close() end)
  local _, port = srv:address()
  return port
end

-- Runs the Python client (or raw client) against port; returns its lines.
local function py_client(kind, port, mode)
  local p = python(kind, tostring(port), mode)
  local lines = {}
  for line in p.stdout:lines() do lines[#lines + 1] = line end
  return lines, p
end

describe("websocket client against python websockets", function()
  before_each(python_server)

  it("echoes text, binary and a large message, then closes with a code and a reason", bounded(function()
    local ws = assert(connect(ws_port, "/echo"))
    assert.are.equal(true, ws:send("héllo"))
    assert.are.same({"héllo", "text"}, {ws:receive()})
    assert(ws:send("\0\1\255", "binary"))
    assert.are.same({"\0\1\255", "binary"}, {ws:receive()})
    local big = string.rep("0123456789abcdef", 2 ^ 18) -- 4 MiB, many frames' worth of reads
    assert(ws:send(big, "binary"))
    local got, kind = ws:receive()
    assert.are.equal("binary", kind)
    assert.is_true(got == big)
    assert.are.equal(true, ws:close(4000, "done"))
    assert.are.same({nil, "websocket closed: done", 4000}, {ws:receive()})
    assert.are.same({nil, "websocket closed: done", 4000}, {ws:send("more")})
    assert.are.equal(true, ws:close()) -- a second close does nothing
    assert.is_true(ws:is_closed())
    assert.are.equal("websocket (closed)", tostring(ws))
    assert.are.equal("closed 4000 done", py_line())
  end))

  it("reassembles fragmented messages", bounded(function()
    local ws = assert(connect(ws_port, "/frag"))
    assert.are.same({"fragmented", "text"}, {ws:receive()})
    assert.are.same({"\0\1\2", "binary"}, {ws:receive()})
    ws:close()
  end))

  it("answers pings with pongs", bounded(function()
    local ws = assert(connect(ws_port, "/ping"))
    assert.are.same({"got pong", "text"}, {ws:receive()})
    ws:close()
  end))

  it("gives the server's close code and reason", bounded(function()
    local ws = assert(connect(ws_port, "/close"))
    assert.are.same({nil, "websocket closed by peer: bye", 4001}, {ws:receive()})
    assert.are.same({nil, "websocket closed by peer: bye", 4001}, {ws:send("late")})
  end))

  it("reports a server that hangs up without a close frame", bounded(function()
    local ws = assert(connect(ws_port, "/hangup"))
    assert.are.same({"last", "text"}, {ws:receive()})
    assert.are.same({nil, "websocket: connection closed without a close frame", "EOF"}, {ws:receive()})
  end))

  it("closes with 1009 a message longer than max_message", bounded(function()
    local ws = assert(connect(ws_port, "/big", {max_message = 1000}))
    assert.are.same({nil, "websocket: message longer than max_message bytes", 1009}, {ws:receive()})
    assert.are.equal("closed 1009", py_line())
  end))

  it("lets one task receive while another sends", bounded(function()
    local ws = assert(connect(ws_port, "/echo"))
    local got = {}
    local reader = tulua.spawn(function()
      for _ = 1, 200 do got[#got + 1] = (ws:receive()) end
    end)
    local senders = {}
    for t = 1, 4 do
      senders[t] = tulua.spawn(function()
        for i = 1, 50 do assert(ws:send(t .. ":" .. i .. ":" .. string.rep("z", 5000))) end
      end)
    end
    for t = 1, 4 do senders[t]:join() end
    reader:join()
    assert.are.equal(200, #got)
    local next_of = {1, 1, 1, 1} -- each sender's messages arrive in its order
    for _, m in ipairs(got) do
      local t, i = m:match("^(%d):(%d+):")
      t, i = tonumber(t), tonumber(i)
      assert.are.equal(next_of[t], i)
      next_of[t] = i + 1
    end
    ws:close()
    assert.are.equal("closed 1000 ", py_line())
  end))

  it("keeps working after a cancelled receive", bounded(function()
    local ws = assert(connect(ws_port, "/echo"))
    local t = tulua.spawn(function() return ws:receive() end)
    tulua.sleep(0.05)
    t:cancel()
    assert.is_false((pcall(t.join, t)))
    assert(ws:send("again"))
    assert.are.same({"again", "text"}, {ws:receive()})
    ws:close()
    assert.are.equal("closed 1000 ", py_line())
  end))

  it("sends nothing once closing, and an abandoned ws closes its stream when collected", bounded(function()
    local ws = assert(connect(ws_port, "/echo", {close_timeout = 0.2}))
    assert.are.equal("websocket (open)", tostring(ws))
    local closer = tulua.spawn(ws.close, ws)
    tulua.sleep(0) -- the closer runs until it waits for the peer's close
    assert.are.same({nil, "websocket closing", "ECANCELED"}, {ws:send("late")})
    closer:join()
    assert.are.equal("closed 1000 ", py_line())
    ws = assert(connect(ws_port, "/echo"))
    assert(ws:send("x"))
    ws = nil -- luacheck: ignore 311
    collectgarbage()
    collectgarbage()
    assert.are.equal("closed 1006 ", py_line())
  end))

  it("a close in one task ends the receive of another", bounded(function()
    local ws = assert(connect(ws_port, "/echo"))
    local t = tulua.spawn(function() return ws:receive() end)
    tulua.sleep(0.05)
    assert.are.equal(true, ws:close(1001))
    assert.are.same({nil, "websocket closed", 1001}, {t:join()})
    assert.are.equal("closed 1001 ", py_line())
  end))
end)

describe("websocket client against a raw server", function()
  before_each(python_server)

  -- path of the raw server, what receive returns, the close frame it got
  local BREACHES = {
    {"/garbage", "a reserved opcode", "websocket: protocol error", 1002, "raw close 136 128 1002"},
    {"/masked", "a masked server frame", "websocket: protocol error", 1002, "raw close 136 128 1002"},
    {"/longping", "a ping of 128 bytes", "websocket: protocol error", 1002, "raw close 136 128 None"},
    {"/badutf8", "text that is not UTF-8", "websocket: invalid UTF-8 in a text message", 1007,
      "raw close 136 128 1007"},
  }
  for _, b in ipairs(BREACHES) do
    it("fails " .. b[2] .. " with a close frame", bounded(function()
      local ws = assert(connect(raw_port, b[1]))
      assert.are.same({nil, b[3], b[4]}, {ws:receive()})
      assert.are.equal(b[5], py_line()) -- 0x88, masked
    end))
  end

  it("waits close_timeout at most for a peer that never answers the close", bounded(function()
    local ws = assert(connect(raw_port, "/silent", {close_timeout = 0.3}))
    local t0 = tulua.now()
    assert.are.equal(true, ws:close(1000, "bye"))
    assert.is_true(tulua.now() - t0 >= 0.29)
    assert.are.same({nil, "websocket: no close frame from the peer within 0.3 s", "ETIMEDOUT"},
      {ws:receive()})
    assert.are.equal("raw close 136 128 1000", py_line())
  end))

  it("refuses a failed handshake", bounded(function()
    assert.are.same({nil, "websocket handshake: server answered 404 Not Found", "EPROTO"},
      {connect(raw_port, "/404")})
    assert.are.same({nil, "websocket handshake: wrong Sec-WebSocket-Accept", "EPROTO"},
      {connect(raw_port, "/badaccept")})
    assert.are.equal("raw error IncompleteReadError", py_line())
  end))
end)

teardown(function()
  if py then kill(py) end
end)

describe("websocket server against python websockets", function()
  it("echoes what a python client sends and gives its close code", bounded(function()
    local ended = {}
    local port = serve(function(ws)
      while true do
        local data, kind = ws:receive()
        if not data then
          ended = {data, kind, select(3, ws:receive())}
          return
        end
        assert(ws:send(data, kind))
      end
    end, {protocols = {"chat"}})
    local lines = py_client("client", port, "echo")
    assert.are.same({"protocol chat", "héllo", "bytes 00ff", "big True", "abc", "pong",
      "closed 4002 client bye"}, lines)
    assert.is_true(support.eventually(function() return ended[1] == nil and ended[2] ~= nil end))
    assert.are.same({nil, "websocket closed by peer: client bye", 4002}, ended)
  end, 30))

  it("closes with its own code, and with 1009 past max_message", bounded(function()
    local port = serve(function(ws)
      ws:close(4003, "server bye")
    end)
    local lines = py_client("client", port, "close")
    assert.are.same({"protocol None", "closed 4003 server bye"}, lines)

    local ended
    port = serve(function(ws) ended = {ws:receive()} end, {max_message = 2000})
    lines = py_client("client", port, "big")
    assert.are.same({"protocol None", "closed 1009 "}, lines)
    assert.are.same({nil, "websocket: message longer than max_message bytes", 1009}, ended)
  end, 30))

  it("refuses an unmasked client frame with close 1002, invalid UTF-8 with 1007; sees a hang-up", bounded(function()
    local ended
    local port = serve(function(ws) ended = {ws:receive()} end)
    local lines = py_client("raw", port, "unmasked")
    assert.are.same({"HTTP/1.1 101 Switching Protocols", "raw close 136 0 1002"}, lines)
    assert.are.same({nil, "websocket: protocol error", 1002}, ended)
    lines = py_client("raw", port, "badutf8")
    assert.are.same({"HTTP/1.1 101 Switching Protocols", "raw close 136 0 1007"}, lines)
    assert.are.same({nil, "websocket: invalid UTF-8 in a text message", 1007}, ended)
    lines = py_client("raw", port, "hangup")
    assert.are.same({"HTTP/1.1 101 Switching Protocols"}, lines)
    assert.is_true(support.eventually(function() return ended[3] == "EOF" end))
    assert.are.same({nil, "websocket: connection closed without a close frame", "EOF"}, ended)
  end, 30))
end)

describe("websocket between two tulua ends", function()
  it("runs over a unix socket as over tcp", bounded(function()
    local path = support.temp_path("ws.sock")
    local srv = assert(net.serve_unix(path, function(conn)
      local _, h = read_head(conn)
      local ws = assert(W.accept_stream(conn, h))
      local data, kind = ws:receive()
      ws:send(data:reverse(), kind)
      ws:receive()
    end))
    defer(function()
      srv:close()
      os.remove(path)
    end)
    local ws = assert(W.connect_stream(assert(net.connect_unix(path)), {host = "localhost"}))
    assert(ws:send("\1\2\3", "binary"))
    assert.are.same({"\3\2\1", "binary"}, {ws:receive()})
    assert.are.equal(true, ws:close())
    assert.are.same({nil, "websocket closed", 1000}, {ws:receive()})
  end))

  it("a sender cancelled in a blocked write leaves the others' messages to go out in order", bounded(function()
    local big = string.rep("B", 8 * 1024 * 1024)
    local blocked, results = {}, {}
    local port = serve(function(ws)
      blocked.a = tulua.spawn(function() return ws:send(big, "binary") end)
      tulua.sleep(0.1) -- the client reads nothing yet: this send waits on the stream
      blocked.b = tulua.spawn(function() results.b = {ws:send("after")} end)
      tulua.sleep(0)
      blocked.a:cancel()
      tulua.park()
    end)
    local ws = assert(connect(port, "/", {max_message = 16 * 1024 * 1024}))
    assert(support.eventually(function() return blocked.a and blocked.a:done() end))
    assert.is_false((pcall(blocked.a.join, blocked.a)))
    assert.is_nil(results.b) -- still waits: the big frame is not out yet
    local data, kind = ws:receive()
    assert.are.equal("binary", kind)
    assert.is_true(data == big)
    assert.are.same({"after", "text"}, {ws:receive()})
    blocked.b:join()
    assert.are.same({true}, results.b)
  end, 20))
end)

describe("websocket handshakes and misuse", function()
  -- A connected pair of tcp streams.
  local function pair()
    local accepted = {}
    local srv = assert(net.serve("127.0.0.1", 0, function(conn)
      accepted[1] = conn
      tulua.park()
    end))
    defer(function() srv:close() end)
    local _, port = srv:address()
    local c = assert(net.connect("127.0.0.1", port))
    assert(support.eventually(function() return accepted[1] ~= nil end))
    return c, accepted[1]
  end

  local GOOD = {upgrade = "websocket", connection = "keep-alive, Upgrade",
    ["sec-websocket-version"] = "13", ["sec-websocket-key"] = "dGhlIHNhbXBsZSBub25jZQ=="}

  local function with(changes)
    local h = {}
    for k, v in pairs(GOOD) do h[k] = v end
    for k, v in pairs(changes) do h[k] = v or nil end
    return h
  end

  it("accept_stream writes the RFC's 101 and feeds the pending bytes", bounded(function()
    local c, s = pair()
    -- a client's masked "hi" that came with the request head
    local ws = assert(W.accept_stream(s, GOOD, nil, "\x81\x82\0\0\0\0hi"))
    assert.are.equal("HTTP/1.1 101 Switching Protocols", c:read_line({sep = "\r\n"}))
    local head = {}
    while true do
      local l = c:read_line({sep = "\r\n"})
      if l == "" then break end
      head[#head + 1] = l
    end
    table.sort(head)
    assert.matches("^Date: %a%a%a, %d%d %a%a%a %d%d%d%d %d%d:%d%d:%d%d GMT$", head[2])
    table.remove(head, 2)
    assert.are.same({"Connection: Upgrade", "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=",
      "Upgrade: websocket"}, head)
    assert.are.same({"hi", "text"}, {ws:receive()})
    c:close()
    assert.are.same({nil, "websocket: connection closed without a close frame", "EOF"}, {ws:receive()})
  end))

  -- Runs connect_stream on c in a task; s reads the request head and
  -- answers with the bytes answer(accept) returns (accept: the right
  -- Sec-WebSocket-Accept), then closes if answer also returned true.
  -- Returns what connect_stream returned, the request head as s read it,
  -- and s.
  local function handshake_with(answer, opts)
    local c, s = pair()
    local task = tulua.spawn(W.connect_stream, c, opts or {host = "example.org:8080"})
    local head = assert(s:read_line({sep = "\r\n\r\n"}))
    local key = head:match("\r\nSec%-WebSocket%-Key: ([^\r]+)")
    local bytes, close = answer(require("tulua._wslay").accept_key(key))
    s:write(bytes)
    if close then s:close() end
    return {task:join()}, head, s
  end

  it("connect_stream sends the RFC's request and takes frames that came with the 101", bounded(function()
    local r, head, s = handshake_with(function(accept)
      -- the 101, then a server's unmasked "hi", in one write
      return "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        .. "Sec-WebSocket-Accept: " .. accept .. "\r\n\r\n\x81\x02hi"
    end, {host = "example.org:8080", target = "/chat?x=1", headers = {Origin = "http://example.org"},
      protocols = {"chat", "superchat"}})
    local lines = {}
    for l in head:gmatch("[^\r\n]+") do lines[#lines + 1] = l end
    assert.are.equal("GET /chat?x=1 HTTP/1.1", table.remove(lines, 1))
    local key = head:match("\r\nSec%-WebSocket%-Key: ([^\r]+)")
    assert.are.equal(24, #key)
    table.sort(lines)
    assert.are.same({"Connection: Upgrade", "Host: example.org:8080", "Origin: http://example.org",
      "Sec-WebSocket-Key: " .. key, "Sec-WebSocket-Protocol: chat, superchat", "Sec-WebSocket-Version: 13",
      "Upgrade: websocket"}, lines)
    local ws = assert(r[1], r[2])
    assert.is_nil(ws.protocol)
    assert.are.same({"hi", "text"}, {ws:receive()})
    s:close()
  end))

  it("connect_stream refuses a malformed, cut or oversized response head", bounded(function()
    local r = handshake_with(function() return "HTTP/1.1 1O1 Switching\r\n\r\n" end)
    assert.are.equal("EPROTO", r[3])
    assert.matches("^websocket handshake: http: .*%(HPE_", r[2])
    r = handshake_with(function() return "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n", true end)
    assert.are.same({nil, "websocket handshake: connection closed in the response head", "EOF"}, r)
    r = handshake_with(function() return "", true end)
    assert.are.same({nil, "websocket handshake: connection closed before the response", "EOF"}, r)
    r = handshake_with(function()
      return "HTTP/1.1 101 Switching Protocols\r\nX: " .. string.rep("x", 70000) .. "\r\n\r\n"
    end)
    assert.are.same({nil, "websocket handshake: response head too long", "EPROTO"}, r)
    r = handshake_with(function(accept)
      return "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        .. "Sec-WebSocket-Accept: " .. accept .. "\r\nSec-WebSocket-Protocol: chat\r\n\r\n"
    end)
    assert.are.same({nil, "websocket handshake: protocol not offered: chat", "EPROTO"}, r)
  end))

  it("accept_stream refuses what is no upgrade, writing nothing", bounded(function()
    local c, s = pair()
    assert.are.same({nil, "websocket upgrade: no 'Upgrade: websocket'", "EPROTO"},
      {W.accept_stream(s, with({upgrade = false}))})
    assert.are.same({nil, "websocket upgrade: no 'Connection: Upgrade'", "EPROTO"},
      {W.accept_stream(s, with({connection = "close"}))})
    assert.are.same({nil, "websocket upgrade: Sec-WebSocket-Version is not 13", "EPROTO"},
      {W.accept_stream(s, with({["sec-websocket-version"] = "8"}))})
    assert.are.same({nil, "websocket upgrade: missing or malformed Sec-WebSocket-Key", "EPROTO"},
      {W.accept_stream(s, with({["sec-websocket-key"] = "short"}))})
    s:close()
    assert.is_nil(c:read())
  end))

  it("raises on wrong arguments and unknown options", function()
    local raised = support.raised
    assert.are.equal("bad argument #1 to 'connect_stream' (stream expected, got nil)",
      raised(W.connect_stream, nil, {host = "h"}))
    assert.are.equal("bad argument #2 to 'connect_stream' (table expected, got nil)",
      raised(W.connect_stream, {}, nil))
    assert.are.equal("bad argument #2 to 'connect_stream' (unknown option 'hots')",
      raised(W.connect_stream, {}, {hots = "h"}))
    assert.are.equal("bad argument #2 to 'connect_stream' (host must be a host name)",
      raised(W.connect_stream, {}, {}))
    assert.are.equal("bad argument #2 to 'connect_stream' (max_message must be a positive integer)",
      raised(W.connect_stream, {}, {host = "h", max_message = 0}))
    assert.are.equal("bad argument #2 to 'connect_stream' (invalid value of header x)",
      raised(W.connect_stream, {}, {host = "h", headers = {x = "a\r\nb: c"}}))
    assert.are.equal("bad argument #3 to 'accept_stream' (unknown option 'host')",
      raised(W.accept_stream, {}, {}, {host = "h"}))
    assert.are.equal("bad argument #4 to 'accept_stream' (string expected, got number)",
      raised(W.accept_stream, {}, {}, {}, 1))
  end)

  it("ws methods check their arguments", bounded(function()
    local c, s = pair()
    local ws = assert(W.accept_stream(s, GOOD))
    local raised = support.raised
    assert.are.equal("bad argument #1 to 'send' (websocket expected, got table)", raised(ws.send, {}, "x"))
    assert.are.equal("bad argument #2 to 'send' (string expected, got number)", raised(ws.send, ws, 1))
    assert.are.equal("bad argument #3 to 'send' ('text' or 'binary' expected, got bin)",
      raised(ws.send, ws, "x", "bin"))
    assert.are.equal("bad argument #2 to 'send' (text is not UTF-8 (send it as 'binary'))",
      raised(ws.send, ws, "\255"))
    assert.are.equal("bad argument #2 to 'close' (invalid close code 1005)", raised(ws.close, ws, 1005))
    assert.are.equal("bad argument #3 to 'close' (reason longer than 123 bytes)",
      raised(ws.close, ws, 1000, string.rep("r", 124)))
    assert(c:read_line({sep = "\r\n\r\n"})) -- the 101: unread, the close would reset
    c:close()
    assert.are.equal("EOF", select(3, ws:receive()))
    assert.are.same({nil, "websocket: connection closed without a close frame", "EOF"}, {ws:send("x")})
  end))
end)
