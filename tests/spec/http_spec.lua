-- tulua.http against real peers: curl and nc as clients of http.serve;
-- Python's http.server (and a small Python proxy) and nginx as servers for
-- http.request. Every server listens on 127.0.0.1; every spec body runs in
-- a bounded task; peers are killed after each spec.
local tulua = require("tulua")
local fs = require("tulua.fs")
local net = require("tulua.net")
local process = require("tulua.process")
local http = require("tulua.http")

package.path = (debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or ".") .. "/?.lua;" .. package.path
local support = require("support")
local bounded = support.bounded
local TULUA = support.TULUA

local cleanups = {}
local function defer(fn) cleanups[#cleanups + 1] = fn end
local dir

before_each(function()
  dir = support.temp_path("http")
  assert(fs.mkdir(dir))
end)

after_each(function()
  for i = #cleanups, 1, -1 do pcall(cleanups[i]) end
  cleanups = {}
  http.close_idle()
  support.remove_tree(dir)
end)

local function run(argv, input)
  return process.run(argv, {input = input, timeout = 20})
end

-- Serves handler on 127.0.0.1; returns the base URL and the server.
local function serve(handler, opts)
  local srv = assert(http.serve("127.0.0.1", 0, handler, opts))
  defer(function() srv:close() end)
  return "http://127.0.0.1:" .. select(2, srv:address()), srv
end

-- A tcp server on 127.0.0.1 that reads and never answers: its port, and
-- the list of the connections it took.
local function mute_server()
  local held = {}
  local mute = assert(net.serve("127.0.0.1", 0, function(c)
    held[#held + 1] = c
    c:read_all()
  end))
  defer(function() mute:close() end)
  return select(2, mute:address()), held
end

-- Sends raw bytes to port and returns all that comes back until the
-- server closes (or 5 s pass).
local function raw(port, bytes, keep_writing)
  local c <close> = assert(net.connect("127.0.0.1", port))
  assert(c:write(bytes))
  if not keep_writing then c:shutdown() end
  local parts = {}
  local deadline = tulua.now() + 5
  while tulua.now() < deadline do
    local s = c:read()
    if not s then break end
    parts[#parts + 1] = s
  end
  return table.concat(parts)
end

local function port_of(url) return math.tointeger(tonumber(url:match(":(%d+)$"))) end

local function hello(req)
  if req.path == "/echo" then return 200, req:read_body(), {["x-method"] = req.method} end
  if req.path == "/query" then return 200, req.query.a .. "|" .. req.query.b end
  return 200, "Hello, World!", {["content-type"] = "text/plain"}
end

describe("http.serve with curl", function()
  it("answers a GET with Date, Content-Length and the handler's headers", bounded(function()
    local url = serve(hello)
    local status, out = run({"curl", "-sS", "-i", "--http1.1", url .. "/"})
    assert.are.equal(0, status)
    assert.matches("^HTTP/1.1 200 OK\r\n", out)
    assert.matches("\r\ncontent%-type: text/plain\r\n", out)
    assert.matches("\r\nDate: %a%a%a, %d%d %a%a%a %d%d%d%d %d%d:%d%d:%d%d GMT\r\n", out)
    assert.matches("\r\nContent%-Length: 13\r\n\r\nHello, World!$", out)
  end, 30))

  it("keeps one connection for several requests", bounded(function()
    local url = serve(hello)
    local status, out = run({"curl", "-sS", "-w", "%{num_connects} ", "-o", "/dev/null", url .. "/a",
      "-o", "/dev/null", url .. "/b", "-o", "/dev/null", url .. "/c"})
    assert.are.equal(0, status)
    assert.are.equal("1 0 0 ", out)
  end, 30))

  it("decodes the query and reads a chunked request body", bounded(function()
    local url = serve(hello)
    assert.are.same({0, "x y|&=", ""}, {run({"curl", "-sS", url .. "/query?a=x+y&b=%26%3D"})})
    local body = string.rep("0123456789", 5000)
    local status, out = run({"curl", "-sS", "-H", "Transfer-Encoding: chunked", "--data-binary", "@-",
      url .. "/echo"}, body)
    assert.are.equal(0, status)
    assert.are.equal(body, out)
  end, 30))

  it("answers Expect: 100-continue before reading the body", bounded(function()
    local url = serve(hello)
    local body = string.rep("x", 2000)
    local status, out, err = run({"curl", "-sS", "-v", "-H", "Expect: 100-continue", "--expect100-timeout", "10",
      "--data-binary", "@-", url .. "/echo"}, body)
    assert.are.equal(0, status)
    assert.are.equal(body, out)
    assert.matches("HTTP/1.1 100 Continue", err)
  end, 30))

  it("streams a function body chunked, and a writer's events", bounded(function()
    local url = serve(function(req)
      if req.path == "/events" then
        local w = req:respond(200, {["content-type"] = "text/event-stream"})
        for i = 1, 3 do
          assert(w:write("data: " .. i .. "\n\n"))
          tulua.sleep(0.01)
        end
        return
      end
      local i = 0
      return 200, function()
        i = i + 1
        if i <= 3 then return "part" .. i .. "\n" end
      end
    end)
    local status, out = run({"curl", "-sS", "-i", url .. "/"})
    assert.are.equal(0, status)
    assert.matches("\r\nTransfer%-Encoding: chunked\r\n", out)
    assert.matches("\r\n\r\npart1\npart2\npart3\n$", out)
    assert.are.same({0, "data: 1\n\ndata: 2\n\ndata: 3\n\n", ""}, {run({"curl", "-sS", "-N", url .. "/events"})})
  end, 30))

  it("answers HEAD without a body", bounded(function()
    local url = serve(hello)
    local status, out = run({"curl", "-sS", "-I", url .. "/"})
    assert.are.equal(0, status)
    assert.matches("^HTTP/1.1 200 OK\r\n", out)
    assert.matches("Content%-Length: 13\r\n\r\n$", out)
  end, 30))
end)

describe("http.serve with raw bytes", function()
  it("answers pipelined requests in order on one connection", bounded(function()
    local url = serve(function(req)
      if req.path == "/slow" then tulua.sleep(0.1) end
      return 200, req.path
    end)
    local out = raw(port_of(url), "GET /slow HTTP/1.1\r\nHost: x\r\n\r\nGET /fast HTTP/1.1\r\nHost: x\r\n\r\n"
      .. "GET /last HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    local bodies = {}
    for b in out:gmatch("\r\n\r\n(/%l+)") do bodies[#bodies + 1] = b end
    assert.are.same({"/slow", "/fast", "/last"}, bodies)
    assert.matches("Connection: close\r\n\r\n/last$", out)
  end, 30))

  it("answers requests that nc pipelines, in order", bounded(function()
    local url = serve(function(req) return 200, req.method .. " " .. req.path .. "\n" end)
    local status, out = run({"nc", "-N", "127.0.0.1", tostring(port_of(url))},
      "GET /one HTTP/1.1\r\nHost: x\r\n\r\nHEAD /two HTTP/1.1\r\nHost: x\r\n\r\n"
      .. "POST /three HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhiGET /four HTTP/1.1\r\nHost: x\r\n"
      .. "Connection: close\r\n\r\n")
    assert.are.equal(0, status)
    local order = {}
    for line in out:gmatch("\r\n\r\n(%u+ /%l+)\n") do order[#order + 1] = line end
    assert.are.same({"GET /one", "POST /three", "GET /four"}, order)   -- HEAD: no body
    local _, heads = out:gsub("HTTP/1.1 200 OK\r\n", "")
    assert.are.equal(4, heads)
  end, 30))

  it("answers a malformed request with 400 and closes", bounded(function()
    local url = serve(hello)
    local out = raw(port_of(url), "GARBAGE\r\n\r\n", true)
    assert.matches("^HTTP/1.1 400 Bad Request\r\n", out)
    assert.matches("Connection: close\r\n", out)
    out = raw(port_of(url), "GET / HTTP/1.0\r\n: no name\r\n\r\n", true)   -- found by fuzz_http
    assert.matches("^HTTP/1.1 400 Bad Request\r\n.*Empty header name", out)
  end, 30))

  it("refuses Content-Length beside Transfer-Encoding (request smuggling)", bounded(function()
    local seen = 0
    local url = serve(function() seen = seen + 1; return 200, "ok" end)
    local out = raw(port_of(url), "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\n"
      .. "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n", true)
    assert.matches("^HTTP/1.1 400 Bad Request\r\n", out)
    assert.is_nil(out:find("200 OK", 1, true))
    assert.are.equal(0, seen)
    out = raw(port_of(url), "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", true)
    assert.matches("^HTTP/1.1 400 Bad Request\r\n", out)
  end, 30))

  it("answers 431 to a head larger than max_header_bytes, 413 to a body over max_body", bounded(function()
    local url = serve(hello, {max_header_bytes = 1024, max_body = 100})
    local out = raw(port_of(url), "GET / HTTP/1.1\r\nHost: x\r\nX-Big: " .. string.rep("a", 2000) .. "\r\n\r\n", true)
    assert.matches("^HTTP/1.1 431 Request Header Fields Too Large\r\n", out)
    out = raw(port_of(url), "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 101\r\n\r\n", true)
    assert.matches("^HTTP/1.1 413 Content Too Large\r\n", out)
    local status, body = http.request("POST", url .. "/echo", {body = string.rep("b", 100)})
    assert.are.equal(200, status)
    assert.are.equal(100, #body)
  end, 30))

  it("drops a client that sends its head a byte at a time (slowloris)", bounded(function()
    local url = serve(hello, {header_timeout = 0.3})
    local c <close> = assert(net.connect("127.0.0.1", port_of(url)))
    local t0 = tulua.now()
    local writer = tulua.spawn(function()
      local head = "GET / HTTP/1.1\r\nX-Slow: " .. string.rep("a", 100)
      for i = 1, #head do
        if not c:write(head:sub(i, i)) then return end
        tulua.sleep(0.05)
      end
    end)
    local s = c:read()
    local closed_at = tulua.now()
    writer:cancel()
    assert.is_nil(s)
    assert.is_true(closed_at - t0 >= 0.3)
  end, 30))

  it("drops an idle keep-alive connection after keepalive_timeout", bounded(function()
    local url = serve(hello, {keepalive_timeout = 0.2})
    local c <close> = assert(net.connect("127.0.0.1", port_of(url)))
    assert(c:write("GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
    local t0 = tulua.now()
    local got = {}
    while true do
      local s = c:read()
      if not s then break end
      got[#got + 1] = s
    end
    assert.matches("Hello, World!$", table.concat(got))
    assert.is_true(tulua.now() - t0 >= 0.2)
  end, 30))

  it("closes connections idle between requests when the server closes", bounded(function()
    local srv = assert(http.serve("127.0.0.1", 0, hello, {keepalive_timeout = 60}))
    local url = "http://127.0.0.1:" .. select(2, srv:address())
    assert.are.equal(200, (http.get(url .. "/")))      -- its connection stays in the pool
    assert.is_false(srv:is_closed())
    local t0 = tulua.now()
    srv:close()
    assert.is_true(srv:wait_closed())
    assert.is_true(srv:is_closed())
    assert.is_true(tulua.now() - t0 < 30)              -- not the keep-alive's 60 s
    assert.matches("^http server", tostring(srv))
  end, 40))

  it("raises for unknown options and bad arguments", function()
    assert.has_error(function() http.serve("127.0.0.1", 0, hello, {max_headers = 1}) end,
      "bad argument #4 to 'serve' (unknown option 'max_headers')")
    assert.has_error(function() http.serve("127.0.0.1", 0, nil) end,
      "bad argument #3 to 'serve' (function expected, got nil)")
    assert.has_error(function() http.serve("127.0.0.1", 0, hello, {header_timeout = -1}) end,
      "bad argument #4 to 'serve' ('header_timeout' must be a positive number)")
  end)
end)

describe("http.serve handler errors", function()
  it("answers 500 and reports the error; CR/LF in a header raises", bounded(function()
    local script = dir .. "/server.lua"
    support.write_file(script, [[
      local http = require "tulua.http"
      local srv = assert(http.serve("127.0.0.1", 0, function(req)
        if req.path == "/boom" then error("boom in the handler") end
        if req.path == "/split" then return 200, "x", {["x-evil"] = "a\r\nSet-Cookie: owned"} end
        return 200, "fine"
      end))
      print(select(2, srv:address()))
      io.stdout:flush()
      require("tulua").sleep(3)
      srv:close()
    ]])
    local p = assert(process.spawn({TULUA, script}, {stdout = "pipe", stderr = "pipe"}))
    defer(function() p:kill("SIGKILL"); p:wait() end)
    local port = assert(p.stdout:read_line())
    local url = "http://127.0.0.1:" .. port
    local status, out = run({"curl", "-sS", "-i", url .. "/boom"})
    assert.are.equal(0, status)
    assert.matches("^HTTP/1.1 500 Internal Server Error\r\n", out)
    status, out = run({"curl", "-sS", "-i", url .. "/split"})
    assert.are.equal(0, status)
    assert.matches("^HTTP/1.1 500 Internal Server Error\r\n", out)
    assert.is_nil(out:find("owned", 1, true))
    assert.are.same({0, "fine", ""}, {run({"curl", "-sS", url .. "/"})})
    local err = p.stderr:read_all()
    local code = p:wait()
    assert.matches("boom in the handler", err)
    assert.matches("CR, LF or NUL in the value of header 'x%-evil'", err)
    assert.are.equal(1, code)
  end, 30))
end)

-- A raw Python client of a request body: "stall" sends the head and 3 of
-- 10 bytes, "chunked" half a chunk, "steady" its 10 bytes one every 0.1 s;
-- prints the seconds until the server closed, then what it answered.
local PY_BODY_CLIENT = [==[
import socket, sys, time
port, mode, path = int(sys.argv[1]), sys.argv[2], sys.argv[3]
s = socket.create_connection(("127.0.0.1", port))
head = "POST %s HTTP/1.1\r\nHost: x\r\n" % path
if mode == "chunked":
    s.sendall((head + "Transfer-Encoding: chunked\r\n\r\n5\r\nab").encode())
elif mode == "stall":
    s.sendall((head + "Content-Length: 10\r\n\r\nabc").encode())
else:
    s.sendall((head + "Content-Length: 10\r\nConnection: close\r\n\r\n").encode())
    for i in range(10):
        time.sleep(0.1); s.sendall(b"x")
t0 = time.monotonic()
s.settimeout(10)
data = b""
while True:
    d = s.recv(4096)
    if not d: break
    data += d
sys.stdout.write("%.3f\n%s" % (time.monotonic() - t0, data.decode()))
]==]

describe("http.serve body_timeout", function()
  it("answers 408 and closes when a body stalls; steady and fast clients are served", bounded(function()
    local script = dir .. "/server.lua"
    support.write_file(script, [[
      local http = require "tulua.http"
      local srv
      srv = assert(http.serve("127.0.0.1", 0, function(req)
        if req.path == "/quit" then srv:close(); return 200, "bye" end
        if req.path == "/read" then return 200, "got " .. #assert(req:read_body()) end
        if req.path == "/own" then
          local body, err, code = req:read_body()
          if not body then return 400, code .. " " .. err end
          return 200, body
        end
        local n = 0
        for piece in req:body_chunks() do n = n + #piece end
        return 200, "chunks " .. n
      end, {body_timeout = 0.5}))
      print(select(2, srv:address()))
      io.stdout:flush()
    ]])
    local p = assert(process.spawn({TULUA, script}, {stdout = "pipe", stderr = "pipe"}))
    defer(function() p:kill("SIGKILL"); p:wait() end)
    local port = assert(p.stdout:read_line())
    local url = "http://127.0.0.1:" .. port
    local function client(mode, path)
      local status, out = run({"/usr/bin/python3", "-c", PY_BODY_CLIENT, port, mode, path})
      assert.are.equal(0, status)
      local secs, answer = out:match("^([%d.]+)\n(.*)$")
      return tonumber(secs), answer
    end
    -- the stalled ones, at once: one does not hold up the others
    local results = {}
    local tasks = {}
    for i, case in ipairs({{"stall", "/read"}, {"chunked", "/chunks"}, {"stall", "/own"}}) do
      tasks[i] = tulua.spawn(function() results[i] = table.pack(client(case[1], case[2])) end)
    end
    -- a fast client meanwhile
    local body = string.rep("0123456789", 10000)
    assert.are.same({0, "got 100000", ""}, {run({"curl", "-sS", "--data-binary", "@-", url .. "/read"}, body)})
    for _, t in ipairs(tasks) do t:join() end
    for i = 1, 2 do
      assert.is_true(results[i][1] >= 0.45, results[i][1])          -- lower bound only
      assert.matches("^HTTP/1.1 408 Request Timeout\r\n.*Connection: close\r\n", results[i][2])
      assert.matches("request body timed out\n$", results[i][2])
    end
    -- a handler that answers the failure itself
    assert.matches("^HTTP/1.1 400 Bad Request\r\n.*\r\n\r\nETIMEDOUT http: no request body bytes for 0.5 s$",
      results[3][2])
    -- a slow body whose bytes keep coming within the bound
    local secs, answer = client("steady", "/read")
    assert.is_true(secs >= 0)
    assert.matches("^HTTP/1.1 200 OK\r\n.*\r\n\r\ngot 10$", answer)
    assert.are.same({0, "bye", ""}, {run({"curl", "-sS", url .. "/quit"})})
    -- the stalled clients are no handler errors: nothing reported
    local err = p.stderr:read_all()
    assert.are.same({0, ""}, {p:wait(), err})
  end, 30))

  it("raises for a bad body_timeout", function()
    assert.has_error(function() http.serve("127.0.0.1", 0, hello, {body_timeout = 0}) end,
      "bad argument #4 to 'serve' ('body_timeout' must be a positive number)")
    assert.has_error(function() http.serve("127.0.0.1", 0, hello, {body_timeout = "1"}) end,
      "bad argument #4 to 'serve' ('body_timeout' must be a positive number)")
    assert.has_error(function() http.websocket("ws://127.0.0.1/", {proxy = 1}) end,
      "bad argument #2 to 'websocket' ('proxy' must be a URL or false)")
    assert.has_error(function() http.websocket("ws://127.0.0.1/", {proxi = "x"}) end,
      "bad argument #2 to 'websocket' (unknown option 'proxi')")
  end)
end)

-- A Python HTTP/1.1 server for the client specs: keep-alive, the client's
-- port in a header, chunked and gzip'd answers, redirects, a slow answer,
-- 100-continue (http.server's own), and a garbage answer.
local PY_SERVER = [==[
import gzip, http.server, socketserver, sys, time
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def send(self, status, body, extra=()):
        self.send_response(status)
        for k, v in extra: self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Port", str(self.client_address[1]))
        self.end_headers()
        if self.command != "HEAD": self.wfile.write(body)
    def do_HEAD(self): self.do_GET()
    def do_GET(self):
        p = self.path
        if p == "/hello": return self.send(200, b"hello from python")
        if p == "/missing": return self.send(404, b"no such thing")
        if p == "/chunked":
            self.send_response(200); self.send_header("Transfer-Encoding", "chunked"); self.end_headers()
            for part in (b"one ", b"two ", b"three"): self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
            self.wfile.write(b"0\r\n\r\n"); return
        if p == "/gzip":
            return self.send(200, gzip.compress(b"squeezed " * 1000), [("Content-Encoding", "gzip")])
        if p == "/redirect": return self.send(302, b"", [("Location", "/hello")])
        if p == "/loop": return self.send(302, b"", [("Location", "/loop")])
        if p == "/slow": time.sleep(3); return self.send(200, b"late")
        if p == "/big": return self.send(200, b"z" * 100000)
        if p == "/headers":
            h = self.headers
            return self.send(200, (h.get("X-Test", "") + "|" + h.get("User-Agent", "")).encode())
        if p == "/garbage":
            self.wfile.write(b"NOT HTTP AT ALL\r\n\r\n"); self.close_connection = True; return
        self.send(404, b"?")
    def do_POST(self):
        if self.headers.get("Transfer-Encoding") == "chunked":
            body = b""
            while True:
                n = int(self.rfile.readline().strip(), 16)
                if n == 0: self.rfile.readline(); break
                body += self.rfile.read(n); self.rfile.readline()
        else:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.send(201, b"got " + body)
    do_PUT = do_POST
class S(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
s = S(("127.0.0.1", 0), H)
if len(sys.argv) > 1:
    import ssl
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(sys.argv[1], sys.argv[2])
    s.socket = ctx.wrap_socket(s.socket, server_side=True)
print(s.server_address[1], flush=True)
s.serve_forever()
]==]

-- A forward proxy for plain http: fetches the absolute URL it is asked for
-- and says so in a header.
local PY_PROXY = [==[
import http.server, select, socket, urllib.request
class P(http.server.BaseHTTPRequestHandler):
    def log_message(self, *a): pass
    def do_CONNECT(self):
        # every tunnel leads to 127.0.0.1, so that only the proxy can reach
        # a host name that does not resolve
        up = socket.create_connection(("127.0.0.1", int(self.path.rsplit(":", 1)[1])))
        self.send_response(200); self.end_headers()
        self.close_connection = True
        ends = [self.connection, up]
        while True:
            ready, _, _ = select.select(ends, [], [], 10)
            if not ready: return
            for e in ready:
                data = e.recv(65536)
                if not data: return
                (up if e is self.connection else self.connection).sendall(data)
    def do_GET(self):
        if not self.path.startswith("http://"):
            self.send_error(400); return
        with urllib.request.urlopen(self.path) as r: body = r.read()
        self.send_response(200); self.send_header("X-Proxied", self.path)
        self.send_header("Content-Length", str(len(body))); self.end_headers(); self.wfile.write(body)
s = http.server.HTTPServer(("127.0.0.1", 0), P)
print(s.server_address[1], flush=True)
s.serve_forever()
]==]

local function python(code, ...)
  local p = assert(process.spawn({"/usr/bin/python3", "-c", code, ...}, {stdout = "pipe", stderr = "null",
    env = {PATH = os.getenv("PATH"), NO_PROXY = "*"}}))
  defer(function() p:kill("SIGKILL"); p:wait() end)
  return "http://127.0.0.1:" .. assert(p.stdout:read_line())
end

-- A self-signed certificate for localhost and 127.0.0.1 in dir; returns
-- the paths of the certificate and its key.
local function make_cert(name)
  local cert, key = dir .. "/" .. name .. ".pem", dir .. "/" .. name .. ".key"
  local status, _, err = process.run({"openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key,
    "-out", cert, "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"},
    {timeout = 30})
  assert(status == 0, err)
  return cert, key
end

describe("http.request against Python's http.server", function()
  it("gets pages, 404s and headers, keeping the connection", bounded(function()
    local base = python(PY_SERVER)
    local status, body, headers = http.get(base .. "/hello")
    assert.are.equal(200, status)
    assert.are.equal("hello from python", body)
    assert.are.equal("17", headers["content-length"])
    local port = headers["x-port"]
    status, body, headers = http.get(base .. "/missing")
    assert.are.equal(404, status)
    assert.are.equal("no such thing", body)
    assert.are.equal(port, headers["x-port"])          -- the same connection
    status, body = http.get(base .. "/headers", {headers = {["X-Test"] = "v"}})
    assert.are.equal(200, status)
    assert.are.equal("v|tulua", body)
    status, body, headers = http.request("HEAD", base .. "/hello")
    assert.are.same({200, "", "17"}, {status, body, headers["content-length"]})
  end, 30))

  it("reads chunked and gzip'd bodies, posts strings and chunked bodies", bounded(function()
    local base = python(PY_SERVER)
    assert.are.same({200, "one two three"}, {(function() local s, b = http.get(base .. "/chunked"); return s, b end)()})
    local status, body, headers = http.get(base .. "/gzip", {decompress = true})
    assert.are.equal(200, status)
    assert.are.equal(string.rep("squeezed ", 1000), body)
    assert.is_nil(headers["content-encoding"])
    status, body = http.get(base .. "/gzip")
    assert.are.equal(200, status)
    assert.are.equal(31, body:byte(1))                   -- still gzip'd: 0x1f 0x8b
    assert.are.same({201, "got data"}, {(function()
      local s, b = http.request("POST", base .. "/post", {body = "data"}); return s, b end)()})
    local parts = {"a", "bb", "ccc"}
    local i = 0
    status, body = http.request("POST", base .. "/post", {body = function() i = i + 1; return parts[i] end})
    assert.are.same({201, "got abbccc"}, {status, body})
  end, 30))

  it("sends the body after 100 Continue", bounded(function()
    local base = python(PY_SERVER)
    local status, body = http.request("PUT", base .. "/put", {body = "later", headers = {Expect = "100-continue"}})
    assert.are.same({201, "got later"}, {status, body})
  end, 30))

  it("sends the body after a second to a server that ignores Expect", bounded(function()
    local srv = assert(net.serve("127.0.0.1", 0, function(conn)
      local head = {}
      repeat head[#head + 1] = conn:read_line() until head[#head] == "\r"
      local body = conn:read_exactly(5)
      conn:write("HTTP/1.1 200 OK\r\nContent-Length: " .. #body .. "\r\nConnection: close\r\n\r\n" .. body)
    end))
    defer(function() srv:close() end)
    local t0 = tulua.now()
    local status, body = http.request("POST", "http://127.0.0.1:" .. select(2, srv:address()) .. "/",
      {body = "later", headers = {expect = "100-continue"}})
    assert.are.same({200, "later"}, {status, body})
    assert.is_true(tulua.now() - t0 >= 1)
  end, 30))

  it("follows redirects up to follow", bounded(function()
    local base = python(PY_SERVER)
    local status, body = http.get(base .. "/redirect")
    assert.are.same({200, "hello from python"}, {status, body})
    local headers
    status, body, headers = http.get(base .. "/redirect", {follow = 0})
    assert.are.equal("", body)
    assert.are.same({302, "/hello"}, {status, headers.location})
    status = http.get(base .. "/loop", {follow = 3})
    assert.are.equal(302, status)
  end, 30))

  it("streams a body with stream = true", bounded(function()
    local base = python(PY_SERVER)
    local res = assert(http.request("GET", base .. "/big", {stream = true}))
    assert.are.equal(200, res.status)
    assert.are.equal("100000", res.headers["content-length"])
    local n = 0
    while true do
      local piece = res:read()
      if not piece then break end
      assert.matches("^z+$", piece)
      n = n + #piece
    end
    assert.are.equal(100000, n)
    res:close()
  end, 30))

  it("fails with nil, message, code: timeout, refused, malformed, too large", bounded(function()
    local base = python(PY_SERVER)
    local t0 = tulua.now()
    local r, msg, code = http.get(base .. "/slow", {timeout = 0.3})
    assert.are.same({nil, "ETIMEDOUT"}, {r, code})
    assert.matches("timed out", msg)
    assert.is_true(tulua.now() - t0 >= 0.3)
    r, msg, code = http.get(base .. "/garbage")
    assert.are.same({nil, "EPROTO"}, {r, code})
    assert.matches("^http: ", msg)
    r, msg, code = http.get(base .. "/big", {max_body = 1000})
    assert.are.same({nil, "E2BIG"}, {r, code})
    assert.matches("larger than 1000 bytes", msg)
    local srv = assert(net.serve("127.0.0.1", 0, function() end))
    local port = select(2, srv:address())
    srv:close()
    r, msg, code = http.get("http://127.0.0.1:" .. port .. "/")
    assert.are.same({nil, "ECONNREFUSED"}, {r, code})
    assert.matches("refused", msg)
    assert.are.same({nil, "EINVAL"}, {select(1, http.get("ftp://x/")), select(3, http.get("ftp://x/"))})
  end, 30))

  it("goes through a proxy, from opts.proxy and from HTTP_PROXY", bounded(function()
    local base = python(PY_SERVER)
    local proxy = python(PY_PROXY)
    local status, body, headers = http.get(base .. "/hello", {proxy = proxy})
    assert.are.same({200, "hello from python", base .. "/hello"}, {status, body, headers["x-proxied"]})
    local script = dir .. "/client.lua"
    support.write_file(script, [[
      local s, b, h = require("tulua.http").get(arg[1])
      io.write(s, " ", b, " ", h["x-proxied"] or "direct")
    ]])
    local env = {PATH = os.getenv("PATH"), HTTP_PROXY = proxy}
    local code, out = process.run({TULUA, script, base .. "/hello"}, {env = env, timeout = 20})
    assert.are.same({0, "200 hello from python " .. base .. "/hello"}, {code, out})
    env.NO_PROXY = "127.0.0.1"
    code, out = process.run({TULUA, script, base .. "/hello"}, {env = env, timeout = 20})
    assert.are.same({0, "200 hello from python direct"}, {code, out})
  end, 30))

  it("raises for unknown options and bad arguments", function()
    assert.has_error(function() http.get("http://127.0.0.1/", {timout = 1}) end,
      "bad argument #2 to 'get' (unknown option 'timout')")
    assert.has_error(function() http.request("GET", "http://127.0.0.1/", {body = 1}) end,
      "bad argument #3 to 'request' ('body' must be a string or a function)")
    assert.has_error(function() http.request("GET", "http://127.0.0.1/", {timeout = 0}) end,
      "bad argument #3 to 'request' ('timeout' must be a positive number)")
    assert.has_error(function() http.request(nil, "http://127.0.0.1/") end,
      "bad argument #1 to 'request' (string expected, got nil)")
  end)
end)

describe("http.request against nginx", function()
  it("gets a page and a file over one kept connection", bounded(function()
    local port
    do
      local srv = assert(net.serve("127.0.0.1", 0, function() end))
      port = select(2, srv:address())
      srv:close()
    end
    support.write_file(dir .. "/file.txt", string.rep("nginx file\n", 1000))
    local conf = dir .. "/nginx.conf"
    support.write_file(conf, ([[
daemon off;
master_process off;
worker_processes 1;
pid %s/nginx.pid;
error_log %s/error.log;
events { worker_connections 64; }
http {
  access_log off;
  client_body_temp_path %s;
  proxy_temp_path %s;
  fastcgi_temp_path %s;
  uwsgi_temp_path %s;
  scgi_temp_path %s;
  server {
    listen 127.0.0.1:%d;
    location = /hello { return 200 "hello from nginx"; }
    location /files/ { alias %s/; }
  }
}
]]):format(dir, dir, dir, dir, dir, dir, dir, port, dir))
    local p = assert(process.spawn({"nginx", "-c", conf, "-p", dir}, {stdout = "null", stderr = "pipe"}))
    defer(function() p:kill("SIGKILL"); p:wait() end)
    local base = "http://127.0.0.1:" .. port
    local status, body
    for _ = 1, 100 do
      status, body = http.get(base .. "/hello")
      if status then break end
      tulua.sleep(0.05)
    end
    assert.are.same({200, "hello from nginx"}, {status, body})
    local headers
    status, body, headers = http.get(base .. "/files/file.txt")
    assert.are.equal(200, status)
    assert.are.equal(string.rep("nginx file\n", 1000), body)
    assert.matches("^nginx", headers.server)
    status = http.get(base .. "/nothing")
    assert.are.equal(404, status)
  end, 30))
end)

describe("https", function()
  it("serves curl --cacert and a tulua client, and refuses an unknown CA", bounded(function()
    local cert, key = make_cert("server")
    local other = make_cert("other")
    local srv = assert(http.serve("127.0.0.1", 0, function(req) return 200, "secure " .. req.path end,
      {tls = {cert = cert, key = key}}))
    defer(function() srv:close() end)
    local url = "https://127.0.0.1:" .. select(2, srv:address())
    assert.are.same({0, "secure /curl", ""}, {run({"curl", "-sS", "--http1.1", "--cacert", cert, url .. "/curl"})})
    local tls = {ca = cert}
    local status, body = http.get(url .. "/tulua", {tls = tls})
    assert.are.same({200, "secure /tulua"}, {status, body})
    local r, msg, code = http.get(url .. "/", {tls = {ca = other}})
    assert.are.same({nil, "ECERT"}, {r, code})
    assert.matches("certificate verify failed", msg)
  end, 60))

  it("drops a client stuck in its handshake (tls handshake_timeout) and serves curl meanwhile",
    bounded(function()
      local cert, key = make_cert("server")
      local ran = 0
      local srv = assert(http.serve("127.0.0.1", 0, function(req) ran = ran + 1; return 200, "ok " .. req.path end,
        {tls = {cert = cert, key = key, handshake_timeout = 1}}))
      defer(function() srv:close() end)
      local port = select(2, srv:address())
      local silent <close> = assert(net.connect("127.0.0.1", port))
      local half <close> = assert(net.connect("127.0.0.1", port))
      assert(half:write("\22\3\1\2\0\1\0\1\252\3\3"))        -- half a ClientHello
      local t0 = tulua.now()
      local ends = {}
      local readers = {}
      for i, c in ipairs({silent, half}) do
        readers[i] = tulua.spawn(function() ends[i] = table.pack(c:read()); ends[i].at = tulua.now() - t0 end)
      end
      assert.are.same({0, "ok /meanwhile", ""}, {run({"curl", "-sS", "--http1.1", "--cacert", cert,
        "https://127.0.0.1:" .. port .. "/meanwhile"})})
      for _, r in ipairs(readers) do r:join() end
      for i = 1, 2 do
        assert.are.same({1, nil}, {ends[i].n, ends[i][1]})  -- the end of the stream, no error
        assert.is_true(ends[i].at >= 0.9, ends[i].at)
      end
      assert.are.equal(1, ran)
    end, 30))

  it("gets from Python's ssl server, directly and through a CONNECT proxy", bounded(function()
    local cert, key = make_cert("py")
    local port = python(PY_SERVER, cert, key):match("%d+$")
    local tls = {ca = cert, server_name = "localhost"}
    local status, body = http.get("https://localhost:" .. port .. "/hello", {tls = tls})
    assert.are.same({200, "hello from python"}, {status, body})
    local proxy = python(PY_PROXY)
    status, body = http.get("https://tunnel.invalid:" .. port .. "/hello", {tls = tls, proxy = proxy})
    assert.are.same({200, "hello from python"}, {status, body})
    local r, _, code = http.get("https://tunnel.invalid:" .. port .. "/hello", {tls = tls, proxy = false})
    assert.is_nil(r)
    assert.is_string(code)
  end, 60))

  it("bounds a proxy's answer to CONNECT as the TLS handshake is, without a timeout", bounded(function()
    local port, held = mute_server()
    local proxy = "http://127.0.0.1:" .. port
    local fds = support.fd_count()
    local tls = {handshake_timeout = 0.3}
    local t0 = tulua.now()
    local r = table.pack(http.get("https://tunnel.invalid:443/", {proxy = proxy, tls = tls}))
    assert.are.same({n = 3, nil, "proxy: no answer to CONNECT within 0.3 s", "ETIMEDOUT"}, r)
    assert.is_true(tulua.now() - t0 >= 0.29)
    t0 = tulua.now()
    r = table.pack(http.websocket("wss://tunnel.invalid:443/", {proxy = proxy, tls = tls}))
    assert.are.same({n = 3, nil, "proxy: no answer to CONNECT within 0.3 s", "ETIMEDOUT"}, r)
    assert.is_true(tulua.now() - t0 >= 0.29)
    assert.are.equal(2, #held)
    assert(support.eventually(function() return support.fd_count() <= fds end))
    -- a timeout shorter than the bound still wins, with its own message
    r = table.pack(http.get("https://tunnel.invalid:443/", {proxy = proxy, tls = {handshake_timeout = 30},
      timeout = 0.2}))
    assert.are.same({n = 3, nil, "http: GET https://tunnel.invalid:443/: timed out after 0.2 s", "ETIMEDOUT"}, r)
  end))

  it("closes the proxy connection of a request whose timeout cut the CONNECT", bounded(function()
    local port, held = mute_server()
    local proxy = "http://127.0.0.1:" .. port
    -- only a close can give the descriptor back, not the collector
    collectgarbage("stop")
    defer(function() collectgarbage("restart") end)
    local fds = support.fd_count()
    local url = "https://tunnel.invalid:443/"
    local t0 = tulua.now()
    local r = table.pack(http.get(url, {proxy = proxy, timeout = 0.3}))
    assert.are.same({n = 3, nil, "http: GET " .. url .. ": timed out after 0.3 s", "ETIMEDOUT"}, r)
    assert.is_true(tulua.now() - t0 >= 0.29)
    assert.are.equal(1, #held)
    assert(support.eventually(function() return support.fd_count() <= fds end))
  end))
end)

describe("WebSocket through tulua.http", function()
  local function echo_server()
    return serve(function(req)
      local ws, err = req:websocket()
      if not ws then return 426, err end
      while true do
        local msg, kind = ws:receive()
        if not msg then break end
        assert(ws:send("echo " .. msg, kind))
      end
    end)
  end

  it("connects http.websocket to req:websocket; no upgrade gives nil, message", bounded(function()
    local url = echo_server()
    local ws = assert(http.websocket(url:gsub("^http", "ws") .. "/chat"))
    assert(ws:send("hi"))
    assert.are.same({"echo hi", "text"}, {ws:receive()})
    assert(ws:send("\0\1", "binary"))
    assert.are.same({"echo \0\1", "binary"}, {ws:receive()})
    ws:close()
    local status, body = http.get(url .. "/chat")
    assert.are.equal(426, status)
    assert.matches("no WebSocket upgrade", body)
    assert.are.same({nil, "EINVAL"}, {select(1, http.websocket(url)), select(3, http.websocket(url))})
  end, 30))

  it("talks to Python's websockets as client and as server", bounded(function()
    local url = echo_server():gsub("^http", "ws")
    local code, out, err = process.run({"/usr/bin/python3", "-c", [[
import asyncio, sys, websockets
async def main():
    async with websockets.connect(sys.argv[1]) as ws:
        await ws.send("from python")
        print(await ws.recv())
asyncio.run(main())
]], url .. "/py"}, {timeout = 20})
    assert.are.same({0, "echo from python\n"}, {code, out}, err)
    local base = python([[
import asyncio, websockets
async def echo(ws, path=None):
    async for m in ws: await ws.send("py " + m)
async def main():
    async with websockets.serve(echo, "127.0.0.1", 0) as s:
        print(s.sockets[0].getsockname()[1], flush=True)
        await asyncio.Future()
asyncio.run(main())
]])
    local ws = assert(http.websocket(base:gsub("^http", "ws") .. "/"))
    assert(ws:send("from tulua"))
    assert.are.same({"py from tulua", "text"}, {ws:receive()})
    ws:close()
  end, 30))

  -- Python's websockets echo server, with TLS when given a certificate.
  local PY_WS_SERVER = [[
import asyncio, sys, websockets
async def echo(ws, path=None):
    async for m in ws: await ws.send("py " + m)
async def main():
    ctx = None
    if len(sys.argv) > 1:
        import ssl
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(sys.argv[1], sys.argv[2])
    async with websockets.serve(echo, "127.0.0.1", 0, ssl=ctx) as s:
        print(s.sockets[0].getsockname()[1], flush=True)
        await asyncio.Future()
asyncio.run(main())
]]

  -- One exchange on a WebSocket to url; returns the answer.
  local function exchange(url, opts)
    local ws = assert(http.websocket(url, opts))
    assert(ws:send("via proxy"))
    local answer = ws:receive()
    ws:close()
    return answer
  end

  it("goes through a CONNECT proxy: ws:// and wss://, to our server and Python's", bounded(function()
    local cert, key = make_cert("server")
    local proxy = python(PY_PROXY)
    -- tunnel.invalid does not resolve: only the proxy's tunnel reaches 127.0.0.1
    local ours = port_of(echo_server())
    assert.are.equal("echo via proxy", exchange("ws://tunnel.invalid:" .. ours .. "/", {proxy = proxy}))
    local secure = assert(http.serve("127.0.0.1", 0, function(req)
      local ws = assert(req:websocket())
      local msg = ws:receive()
      if msg then ws:send("secure " .. msg) end
      ws:close()
    end, {tls = {cert = cert, key = key}}))
    defer(function() secure:close() end)
    local tls = {ca = cert, server_name = "localhost"}
    assert.are.equal("secure via proxy", exchange("wss://tunnel.invalid:" .. select(2, secure:address()) .. "/",
      {proxy = proxy, tls = tls}))
    local py = port_of(python(PY_WS_SERVER))
    assert.are.equal("py via proxy", exchange("ws://tunnel.invalid:" .. py .. "/", {proxy = proxy}))
    local pys = port_of(python(PY_WS_SERVER, cert, key))
    assert.are.equal("py via proxy", exchange("wss://tunnel.invalid:" .. pys .. "/", {proxy = proxy, tls = tls,
      timeout = 10}))
    -- without the proxy the name does not resolve
    local r, _, code = http.websocket("ws://tunnel.invalid:" .. py .. "/", {proxy = false})
    assert.is_nil(r)
    assert.is_string(code)
    -- a proxy that refuses the tunnel
    local refusing = python(PY_SERVER)
    local r2, msg, code2 = http.websocket("ws://tunnel.invalid:" .. py .. "/", {proxy = refusing})
    assert.are.same({nil, "EPROTO"}, {r2, code2})
    assert.matches("^proxy: CONNECT answered 501", msg)
  end, 60))

  it("bounds the whole opening by timeout: a server that never answers the upgrade, directly and tunnelled",
    bounded(function()
      local port, held = mute_server()
      local proxy = python(PY_PROXY)
      local fds = support.fd_count()
      local cases = {{"ws://127.0.0.1:" .. port .. "/", false}, {"ws://tunnel.invalid:" .. port .. "/", proxy}}
      for _, case in ipairs(cases) do
        local t0 = tulua.now()
        local r = table.pack(http.websocket(case[1], {proxy = case[2], timeout = 0.5}))
        assert.are.same({n = 3, nil, "http: websocket " .. case[1] .. ": timed out after 0.5 s", "ETIMEDOUT"}, r)
        assert.is_true(tulua.now() - t0 >= 0.45)
      end
      assert.are.equal(2, #held)
      assert(support.eventually(function() return support.fd_count() <= fds end))
    end, 30))

  it("takes the proxy from HTTP_PROXY (ws://) and HTTPS_PROXY (wss://), unless NO_PROXY names the host",
    bounded(function()
      local cert, key = make_cert("server")
      local proxy = python(PY_PROXY)
      local py = port_of(python(PY_WS_SERVER))
      local pys = port_of(python(PY_WS_SERVER, cert, key))
      local script = dir .. "/ws_client.lua"
      support.write_file(script, [[
        local http = require "tulua.http"
        for _, url in ipairs(arg) do
          local ws, err, code = http.websocket(url, {tls = {ca = os.getenv("CA"), server_name = "localhost"},
            timeout = 10})
          if ws then
            ws:send("env")
            io.write(ws:receive(), ";")
            ws:close()
          else
            io.write(code, ";")
          end
        end
      ]])
      local urls = {script, "ws://tunnel.invalid:" .. py .. "/", "wss://tunnel.invalid:" .. pys .. "/"}
      local env = {PATH = os.getenv("PATH"), CA = cert, HTTP_PROXY = proxy, HTTPS_PROXY = proxy}
      local function client()
        local argv = {TULUA}
        for i, u in ipairs(urls) do argv[i + 1] = u end
        local status, out = process.run(argv, {env = env, timeout = 30})
        return status, out
      end
      assert.are.same({0, "py env;py env;"}, {client()})
      env.NO_PROXY = "example.org,.invalid"                -- a domain suffix
      local status, out = client()
      assert.are.equal(0, status)
      assert.is_nil(out:find("py env", 1, true))
    end, 60))
end)
