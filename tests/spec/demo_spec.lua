-- The demos of scripts/demo/ against real peers: the echo client against the
-- echo server, curl and raw sockets against the HTTP server, the downloader
-- against the HTTP server, `python3 -m http.server` and small servers of
-- this spec (one https, its certificate made by openssl), and the pipeline with real programs. Servers run as
-- subprocesses on free ports of 127.0.0.1 (each prints its port first) and
-- are killed at the end of their test; every test runs under a 20 s
-- watchdog and every program under a timeout.
local tulua = require("tulua")
local fs = require("tulua.fs")
local net = require("tulua.net")
local process = require("tulua.process")

local SPEC_DIR = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "."
package.path = SPEC_DIR .. "/?.lua;" .. package.path
local support = require("support")
local TULUA = support.TULUA
local DEMO = support.absolute(SPEC_DIR .. "/../../scripts/demo") .. "/"
local PYTHON = "/usr/bin/python3" -- not a pyenv shim (slow to start)
local python_f = io.open(PYTHON)
local it_python = python_f and it or pending -- only one test needs python3
if python_f then python_f:close() end

local function bounded(fn) return support.bounded(fn, 20) end

-- Starts a server program that prints a line with its port first (found
-- with pattern). Returns a to-be-closed handle {port =, url =} whose closing
-- kills the server and reaps it.
local function start(argv, pattern)
  local p = assert(process.spawn(argv, {stdin = "null", stdout = "pipe", stderr = "null"}))
  local line = p.stdout:read_line()
  local port = line and math.tointeger(tonumber(line:match(pattern)))
  if not port then
    p:kill("SIGKILL")
    p:close()
    error("the server did not start: " .. tostring(line))
  end
  return setmetatable({port = port, url = ("http://127.0.0.1:%d/"):format(port)}, {
    __close = function()
      p:kill()
      p:close()
    end,
  })
end

local function start_demo(name)
  return start({TULUA, DEMO .. name, "0"}, ":(%d+)/?$")
end

-- Runs a program to its end (at most 15 s); returns status, stdout, stderr.
local function run(argv, options)
  options = options or {}
  options.timeout = 15
  return assert(process.run(argv, options))
end

-- Sends request on a new connection and returns everything the server
-- writes until it closes.
local function exchange(port, request)
  local conn <close> = assert(net.connect("127.0.0.1", port, {timeout = 5}))
  assert(conn:write(request))
  return assert(conn:read_all())
end

-- The status codes of the responses in text, in order.
local function statuses(text)
  local list = {}
  for code in text:gmatch("HTTP/1%.1 (%d%d%d) ") do list[#list + 1] = tonumber(code) end
  return list
end

describe("demos", function()
  describe("echo_server.lua and echo_client.lua", function()
    it("gets every line back on every connection of the client", bounded(function()
      local server <close> = start_demo("echo_server.lua")
      local status, out = run({TULUA, DEMO .. "echo_client.lua", server.port, 5, 200})
      assert.are.equal(0, status)
      assert.matches("^1000 round trips over 5 connections in [%d.]+ s", out)
    end))

    it("echoes binary data on many connections at once", bounded(function()
      local server <close> = start_demo("echo_server.lua")
      local bytes = {}
      for b = 0, 255 do bytes[#bytes + 1] = string.char(b) end
      local block = table.concat(bytes):rep(100) -- 25,600 bytes, zeros and newlines included
      local tasks = {}
      for i = 1, 20 do
        tasks[i] = tulua.spawn(function()
          local conn <close> = assert(net.connect("127.0.0.1", server.port, {timeout = 5}))
          assert(conn:write(block))
          return conn:read_exactly(#block) == block
        end)
      end
      for _, task in ipairs(tasks) do assert.is_true(task:join()) end
    end))
  end)

  describe("http_server.lua", function()
    it("answers curl's GET / with Hello, World!", bounded(function()
      local server <close> = start_demo("http_server.lua")
      local status, out = run({"curl", "-s", "-i", server.url})
      assert.are.equal(0, status)
      local head, body = out:match("^(.-\r\n)\r\n(.*)$")
      assert.matches("^HTTP/1.1 200 OK\r\n", head)
      assert.matches("\r\nContent%-Length: 13\r\n", head)
      assert.matches("\r\nDate: %a%a%a, %d%d %a%a%a %d%d%d%d %d%d:%d%d:%d%d GMT\r\n", head)
      assert.are.equal("Hello, World!", body)
    end))

    it("answers HEAD without a body, other paths and methods with 404", bounded(function()
      local server <close> = start_demo("http_server.lua")
      local _, head = run({"curl", "-s", "-I", server.url})
      assert.matches("^HTTP/1.1 200 OK\r\n.*Content%-Length: 13\r\n\r\n$", head)
      local codes = {}
      for _, args in ipairs({{"-s", server.url .. "nope"}, {"-s", "-X", "POST", "-d", "x=1", server.url},
        {"-s", "-X", "DELETE", server.url}}) do
        table.insert(args, 1, "curl")
        table.insert(args, 2, "-o/dev/null")
        table.insert(args, 3, "-w%{http_code}")
        local _, code = run(args)
        codes[#codes + 1] = code
      end
      assert.are.same({"404", "404", "404"}, codes)
    end))

    it("keeps the connection alive between curl's requests", bounded(function()
      local server <close> = start_demo("http_server.lua")
      -- curl reuses its connection for the second URL: it makes no new connect.
      local status, out = run({"curl", "-s", "-o/dev/null", "-o/dev/null", "-w%{http_code} %{num_connects}\n",
        server.url, server.url .. "nope"})
      assert.are.equal(0, status)
      assert.are.equal("200 1\n404 0\n", out)
    end))

    it("closes the connection after a request with Connection: close", bounded(function()
      local server <close> = start_demo("http_server.lua")
      local _, out = run({"curl", "-s", "-i", "-H", "Connection: close", server.url})
      assert.matches("\r\nConnection: close\r\n", out)
      local text = exchange(server.port, "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
      assert.are.same({200}, statuses(text)) -- read_all returned: the server closed
      assert.matches("\r\n\r\nHello, World!$", text)
    end))

    it("answers pipelined requests in order, bodies included", bounded(function()
      local server <close> = start_demo("http_server.lua")
      local text = exchange(server.port, "GET / HTTP/1.1\r\nHost: x\r\n\r\n"
        .. "POST /form HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\nhello=world"
        .. "\r\nGET /missing HTTP/1.1\r\nHost: x\r\n\r\n" -- a stray CRLF before it is allowed
        .. "HEAD / HTTP/1.1\r\nHost: x\r\n\r\n"
        .. "GET / HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, close\r\n\r\n")
      assert.are.same({200, 404, 404, 200, 200}, statuses(text))
      local _, hellos = text:gsub("Hello, World!", "")
      assert.are.equal(2, hellos) -- not for HEAD
    end))

    it("limits the head to 16 KiB (431) and the body to 1 MiB (413)", bounded(function()
      local server <close> = start_demo("http_server.lua")
      local long = exchange(server.port, "GET /" .. ("a"):rep(20000) .. " HTTP/1.1\r\n\r\n")
      assert.matches("^HTTP/1.1 431 Request Header Fields Too Large\r\n", long)
      local header = exchange(server.port, "GET / HTTP/1.1\r\nCookie: " .. ("b"):rep(17000) .. "\r\n\r\n")
      assert.matches("^HTTP/1.1 431 ", header)
      assert.matches("\r\nConnection: close\r\n", header)
      local fine = exchange(server.port, "GET / HTTP/1.1\r\nCookie: " .. ("c"):rep(8000) .. "\r\n"
        .. ("X-A: 1\r\n"):rep(98) .. "Connection: close\r\n\r\n")
      assert.are.same({200}, statuses(fine))
      assert.matches("^HTTP/1.1 413 ", exchange(server.port, "POST /echo HTTP/1.1\r\nContent-Length: 9999999\r\n\r\n"))
    end))

    it("answers malformed requests with 400, then closes; echoes chunked bodies", bounded(function()
      local server <close> = start_demo("http_server.lua")
      assert.matches("^HTTP/1.1 400 ", exchange(server.port, "HELLO THERE\r\n\r\n"))
      assert.matches("^HTTP/1.1 400 ", exchange(server.port, "GET / HTTP/1.1\r\nno colon here\r\n\r\n"))
      assert.matches("^HTTP/1.1 400 ", exchange(server.port, "POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n"))
      local echo = exchange(server.port, "POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n"
        .. "Connection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
      assert.matches("^HTTP/1.1 200 .*\r\n\r\nhello$", echo)
    end))

    it("streams server-sent events", bounded(function()
      local server <close> = start_demo("http_server.lua")
      assert.are.same({0, "data: event 1\n\ndata: event 2\n\ndata: event 3\n\n", ""},
        {run({"curl", "-sS", "-N", server.url .. "events"})})
    end))

    it("speaks HTTP/1.0: closes unless asked to keep the connection", bounded(function()
      local server <close> = start_demo("http_server.lua")
      local text = exchange(server.port, "GET / HTTP/1.0\r\n\r\n")
      assert.are.same({200}, statuses(text))
      assert.matches("\r\nConnection: close\r\n", text)
      local conn <close> = assert(net.connect("127.0.0.1", server.port, {timeout = 5}))
      for _ = 1, 2 do
        assert(conn:write("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"))
        assert.are.equal("HTTP/1.1 200 OK\r", conn:read_line())
        local head = {}
        repeat head[#head + 1] = conn:read_line() until head[#head] == "\r"
        assert.is_truthy(table.concat(head, "\n"):find("Connection: keep-alive", 1, true))
        assert.are.equal("Hello, World!", conn:read_exactly(13))
      end
    end))
  end)

  describe("download.lua", function()
    local dir

    before_each(function()
      dir = assert(fs.mkdtemp("/tmp/tulua-demo-XXXXXX"))
    end)

    after_each(function()
      run({"rm", "-rf", dir})
    end)

    -- An HTTP server in this process: path -> function(conn) that answers
    -- (after the request's head was read) and returns whether the
    -- connection stays open. It counts connections and requests in flight.
    local function serve(routes)
      local stats = {conns = 0, active = 0, most = 0}
      local server = assert(net.serve("127.0.0.1", 0, function(conn)
        stats.conns = stats.conns + 1
        while true do
          local line = conn:read_line()
          if not line then return end
          local path = line:match("^GET ([^%s?]+)%S* HTTP/1%.1\r$")
          repeat local header = conn:read_line() until header == "\r" or not header
          stats.active = stats.active + 1
          stats.most = math.max(stats.most, stats.active)
          tulua.sleep(0.002) -- let requests of other connections overlap
          local keep = routes[path](conn)
          stats.active = stats.active - 1
          if not keep then return end
        end
      end))
      local _, port = server:address()
      return server, ("http://127.0.0.1:%d"):format(port), stats
    end

    it("fetches N URLs from http_server.lua over K connections", bounded(function()
      local server <close> = start_demo("http_server.lua")
      local status, out = run({TULUA, DEMO .. "download.lua", "-k", 4, "-n", 200, "-q", server.url})
      assert.are.equal(0, status)
      assert.matches("^200 fetched %(2600 bytes%), 0 failed, in [%d.]+ s, 4 connections at a time", out)
    end))

    it("keeps K connections, each reused for its requests", bounded(function()
      local _ <close>, url, stats = serve({
        ["/hello"] = function(conn)
          return conn:write("HTTP/1.1 200 OK\r\nContent-Length: 13\r\n\r\nHello, World!")
        end,
      })
      local status, out = run({TULUA, DEMO .. "download.lua", "-k", 3, "-n", 60, url .. "/hello"})
      assert.are.equal(0, status)
      local fetched = 0
      for line in out:gmatch("[^\n]+") do
        if line:match("^200 +13 B +[%d.]+ s  http://") then fetched = fetched + 1 end
      end
      assert.are.equal(60, fetched)
      assert.are.equal(3, stats.conns)
      assert.are.equal(3, stats.most)
    end))

    it("saves bodies with -o: chunked, sized and ended by the close; counts failures", bounded(function()
      local _ <close>, url = serve({
        ["/chunked.txt"] = function(conn)
          return conn:write("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            .. "5\r\nHello\r\n8;ext=1\r\n, World!\r\n0\r\nX-Trailer: yes\r\n\r\n")
        end,
        ["/closed.txt"] = function(conn)
          conn:write("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n" .. ("z"):rep(100000))
          return false
        end,
        ["/missing"] = function(conn)
          return conn:write("HTTP/1.1 404 Not Found\r\nContent-Length: 4\r\n\r\nnope")
        end,
      })
      local out_dir = dir .. "/out"
      local status, out = run({TULUA, DEMO .. "download.lua", "-k", 2, "-o", out_dir,
        url .. "/chunked.txt", url .. "/closed.txt?x=1", url .. "/missing", url .. "/chunked.txt"})
      assert.are.equal(1, status)
      assert.matches("\n3 fetched %(100026 bytes%), 1 failed, ", out)
      assert.matches("\n404 +4 B ", out)
      assert.are.equal("Hello, World!", assert(fs.read_file(out_dir .. "/0001-chunked.txt")))
      assert.are.equal(("z"):rep(100000), assert(fs.read_file(out_dir .. "/0002-closed.txt")))
      assert.are.equal("nope", assert(fs.read_file(out_dir .. "/0003-missing")))
      assert.are.equal("Hello, World!", assert(fs.read_file(out_dir .. "/0004-chunked.txt")))
    end))

    it_python("downloads files from python3 -m http.server (HTTP/1.0, a connection per request)", bounded(function()
      local chunks, x = {}, 1
      for i = 1, 50000 do -- 200,000 bytes of MINSTD noise
        x = x * 48271 % 2147483647
        chunks[i] = string.pack("<I4", x)
      end
      local data = table.concat(chunks)
      assert(fs.mkdir(dir .. "/www"))
      assert(fs.write_file(dir .. "/www/noise.bin", data))
      local server <close> = start({PYTHON, "-u", "-m", "http.server", "0", "--bind", "127.0.0.1",
        "--directory", dir .. "/www"}, "port (%d+)")
      local status, out = run({TULUA, DEMO .. "download.lua", "-k", 2, "-n", 3, "-o", dir .. "/got",
        server.url .. "noise.bin", server.url})
      assert.are.equal(0, status)
      assert.matches("\n6 fetched %(%d+ bytes%), 0 failed, ", out)
      for i = 1, 5, 2 do
        assert.are.equal(data, assert(fs.read_file(("%s/got/%04d-noise.bin"):format(dir, i))))
        assert.matches("noise%.bin", assert(fs.read_file(("%s/got/%04d-index.html"):format(dir, i + 1))))
      end
    end))

    it("fetches https with the certificates of SSL_CERT_FILE, progress on stderr", bounded(function()
      local cert, key = dir .. "/cert.pem", dir .. "/key.pem"
      assert.are.equal(0, (run({"openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key,
        "-out", cert, "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost"})))
      local big = ("0123456789abcdef"):rep(2 * 65536)                  -- 2 MiB
      local srv = assert(require("tulua.http").serve("127.0.0.1", 0, function(req)
        return 200, req.path == "/big" and big or "small"
      end, {tls = {cert = cert, key = key}}))
      local base = ("https://localhost:%d"):format(select(2, srv:address()))
      local env = {PATH = os.getenv("PATH"), SSL_CERT_FILE = cert}
      local status, out, err = run({TULUA, DEMO .. "download.lua", "-o", dir .. "/got", base .. "/big",
        base .. "/small"}, {env = env})
      srv:close()
      assert.are.equal(0, status, err)
      assert.matches("\n2 fetched %(2097157 bytes%), 0 failed, ", out)
      assert.matches(base:gsub("%p", "%%%0") .. "/big: 2097152 of 2097152 bytes\n", err)
      assert.are.equal(big, assert(fs.read_file(dir .. "/got/0001-big")))
      assert.are.equal("small", assert(fs.read_file(dir .. "/got/0002-small")))
    end))

    it("gives up a request after -t seconds and reports unreachable servers", bounded(function()
      local _ <close>, url = serve({
        ["/silent"] = function(conn)
          conn:read() -- never answers: waits until the client closes
          return false
        end,
      })
      local closed = assert(net.serve("127.0.0.1", 0, function() end)) -- for a port nobody listens on
      local _, dead_port = closed:address()
      closed:close()
      local t0 = tulua.now()
      local status, out = run({TULUA, DEMO .. "download.lua", "-t", 0.3, url .. "/silent",
        ("http://127.0.0.1:%d/"):format(dead_port), "ftp://example.org/"})
      assert.is_true(tulua.now() - t0 >= 0.3) -- the silent server's timeout; without it, no end
      assert.are.equal(1, status)
      assert.matches("ERR timed out  http://[%d.:]+/silent\n", out)
      assert.matches("ERR [^\n]*connection refused[^\n]*\n", out)
      assert.matches("ERR unsupported URL scheme 'ftp'  ftp://example.org/\n", out)
      assert.matches("\n0 fetched %(0 bytes%), 3 failed, ", out)
    end))
  end)

  describe("ws_chat.lua", function()
    it("serves its page and relays messages between WebSocket members", bounded(function()
      local http = require("tulua.http")
      local server <close> = start_demo("ws_chat.lua")
      local status, page = run({"curl", "-sS", server.url})
      assert.are.equal(0, status)
      assert.matches("<title>tulua chat</title>", page)
      local chat = server.url:gsub("^http", "ws") .. "chat"
      local a = assert(http.websocket(chat))
      assert.are.same({"* 1 joined (1 here)", "text"}, {a:receive()})
      local b = assert(http.websocket(chat))
      assert.are.same({"* 2 joined (2 here)", "text"}, {a:receive()})
      assert.are.same({"* 2 joined (2 here)", "text"}, {b:receive()})
      assert(a:send("hi all"))
      assert.are.same({"1: hi all", "text"}, {a:receive()})
      assert.are.same({"1: hi all", "text"}, {b:receive()})
      b:close()
      assert.are.same({"* 2 left", "text"}, {a:receive()})
      a:close()
      local plain = exchange(server.port, "GET /chat HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
      assert.matches("^HTTP/1.1 426 ", plain)
    end))
  end)

  describe("pipeline.lua", function()
    it("runs ls / | sort -r by default", bounded(function()
      local _, expected = run({"sh", "-c", "ls / | sort -r"})
      local status, out, err = run({TULUA, DEMO .. "pipeline.lua"})
      assert.are.equal(0, status)
      assert.are.equal(expected, out)
      assert.matches("^ls %-> sort: " .. #expected .. " bytes\nls: status 0\nsort: status 0\n$", err)
    end))

    it("copies between three programs with a task for each pipe", bounded(function()
      local status, out, err = run({TULUA, DEMO .. "pipeline.lua", "printf", "pear\\napple\\nfig\\n", "|",
        "sort", "|", "tr", "a-z", "A-Z"})
      assert.are.equal(0, status)
      assert.are.equal("APPLE\nFIG\nPEAR\n", out)
      assert.matches("^printf %-> sort: 15 bytes\nsort %-> tr: 15 bytes\n", err)
    end))

    it("stops copying when a reader exits early", bounded(function()
      local status, out = run({TULUA, DEMO .. "pipeline.lua", "seq", 1, 1000000, "|", "head", "-2"})
      assert.are.equal(0, status)
      assert.are.equal("1\n2\n", out)
    end))

    it("exits with the last program's status, 128 + N for a signal", bounded(function()
      assert.are.equal(3, (run({TULUA, DEMO .. "pipeline.lua", "echo", "|", "sh", "-c", "cat; exit 3"})))
      assert.are.equal(128 + 9, (run({TULUA, DEMO .. "pipeline.lua", "sh", "-c", "kill -9 $$"})))
    end))
  end)
end)
