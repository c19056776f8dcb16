-- tulua.tls and the tls options of tulua.net: our client against openssl
-- s_server and Python's ssl module, openssl s_client against our server,
-- and both of ours; certificates (a CA, a server's for 127.0.0.1 and
-- localhost, an expired one, a self-signed one, a client's) are made by
-- the openssl command into a temporary folder. Everything listens on
-- 127.0.0.1; bodies that wait on a peer are bounded.
local tulua = require("tulua")
local net = require("tulua.net")
local tls = require("tulua.tls")
local fs = require("tulua.fs")
local process = require("tulua.process")
local asyncio = require("asyncio")

package.path = (debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or ".") .. "/?.lua;" .. package.path
local support = require("support")
local bounded = support.bounded
local eventually = support.eventually

local dir -- the certificates
local function path(name) return dir .. "/" .. name end

-- Runs the openssl command; raises with its output if it fails.
local function openssl(args)
  local argv = {"openssl"}
  for _, a in ipairs(args) do argv[#argv + 1] = a end
  local status, out, err = process.run(argv, {stdin = "null", timeout = 30})
  assert(status == 0, table.concat(argv, " ") .. ": " .. tostring(out) .. tostring(err))
end

-- A P-256 key and a certificate for subject, signed by the CA unless
-- self_signed; ext: the x509 extensions; days may be negative (expired).
local function make_cert(name, subject, opts)
  opts = opts or {}
  local ext = path(name .. ".ext")
  support.write_file(ext, (opts.ext or "subjectAltName=DNS:localhost,IP:127.0.0.1") .. "\n")
  if opts.self_signed then
    openssl({"req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
      "-keyout", path(name .. ".key"), "-out", path(name .. ".pem"), "-days", "2",
      "-subj", subject, "-addext", opts.ext or "subjectAltName=DNS:localhost,IP:127.0.0.1"})
    return
  end
  openssl({"req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
    "-keyout", path(name .. ".key"), "-out", path(name .. ".csr"), "-subj", subject})
  openssl({"x509", "-req", "-in", path(name .. ".csr"), "-CA", path((opts.ca or "ca") .. ".pem"),
    "-CAkey", path((opts.ca or "ca") .. ".key"), "-CAcreateserial", "-out", path(name .. ".pem"),
    "-days", tostring(opts.days or 2), "-extfile", ext})
end

local function server_opts(name, extra)
  local o = {cert = path((name or "server") .. ".pem"), key = path((name or "server") .. ".key")}
  for k, v in pairs(extra or {}) do o[k] = v end
  return o
end

-- A free port on 127.0.0.1 for a program that listens itself.
local function free_port()
  local s = assert(net.serve("127.0.0.1", 0, function() end))
  local _, port = s:address()
  s:close()
  return port
end

-- Starts a program that listens on port, and waits until it accepts.
local function start_server(argv, port)
  local p = assert(process.spawn(argv, {stdin = "pipe", stdout = "pipe", stderr = "pipe"}))
  assert(eventually(function()
    local c = net.connect("127.0.0.1", port)
    if c then c:close() end
    return c ~= nil
  end), "server did not start: " .. table.concat(argv, " "))
  return p
end

local function stop(p)
  p:kill("SIGKILL")
  p:wait()
end

-- A server of ours: the first line comes back in upper case, then "alpn=",
-- the subject of the client's certificate, and the protocol version; then
-- the connection closes (with close_notify, which ends s_client).
local function upper_server(tls_opts)
  return assert(net.serve("127.0.0.1", 0, function(s)
    local line = s:read_line()
    if not line then return end
    local info = s:tls_info()
    s:write(line:upper() .. " alpn=" .. tostring(info.alpn) .. " peer=" .. tostring(info.subject)
      .. " " .. info.version .. "\n")
  end, {tls = tls_opts}))
end

local function port_of(srv)
  local _, port = srv:address()
  return port
end

-- Python's ssl module as a server: one connection, echoes a line, then
-- ends with close_notify (mode "clean") or without it ("truncate").
local PY_SERVER = [[
import socket, ssl, sys
cert, key, mode, alpn = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
if alpn:
    ctx.set_alpn_protocols(alpn.split(","))
ls = socket.socket()
ls.bind(("127.0.0.1", 0))
ls.listen(1)
print(ls.getsockname()[1], flush=True)
c, _ = ls.accept()
s = ctx.wrap_socket(c, server_side=True)
line = s.recv(1024)
s.sendall(b"py:" + line + (s.selected_alpn_protocol() or "-").encode() + b"\n")
if mode == "clean":
    s.unwrap()
    c.close()
else:
    c.close()
]]

-- Python sockets that never finish a handshake. "server": accepts, reads
-- and never answers (prints its port, then "accepted" per connection).
-- "clients PORT": two clients of our server, one silent, one that sends
-- half a ClientHello; prints for each how many seconds passed until the
-- server closed the connection ("open" if it had not after 10 s).
local PY_STUCK = [[
import socket, sys, threading, time
if sys.argv[1] == "server":
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(8)
    print(ls.getsockname()[1], flush=True)
    held = []
    while True:
        c, _ = ls.accept()
        held.append(c)
        print("accepted", flush=True)
else:
    port = int(sys.argv[2])
    # a ClientHello record announcing 512 bytes, of which 9 come
    half = bytes([22, 3, 1, 2, 0, 1, 0, 1, 252, 3, 3, 0, 0, 0])
    results = {}
    def client(name, first):
        s = socket.create_connection(("127.0.0.1", port))
        t0 = time.monotonic()
        if first: s.sendall(first)
        s.settimeout(10)
        try:
            while s.recv(4096): pass
            results[name] = "%.3f" % (time.monotonic() - t0)
        except socket.timeout:
            results[name] = "open"
    ts = [threading.Thread(target=client, args=a) for a in (("silent", b""), ("half", half))]
    for t in ts: t.start()
    for t in ts: t.join()
    print(results["silent"], results["half"], flush=True)
]]

local function py_server(mode, alpn)
  local p = assert(process.spawn({"python3", "-c", PY_SERVER, path("server.pem"), path("server.key"),
    mode, alpn or ""}, {stdin = "null", stdout = "pipe", stderr = "pipe"}))
  local port = math.tointeger(tonumber(p.stdout:read_line()))
  return p, port
end

lazy_setup(function()
  dir = support.temp_path("tls")
  assert(fs.mkdir(dir))
  openssl({"req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
    "-keyout", path("ca.key"), "-out", path("ca.pem"), "-days", "2", "-subj", "/CN=tulua test CA"})
  openssl({"req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
    "-keyout", path("other_ca.key"), "-out", path("other_ca.pem"), "-days", "2", "-subj", "/CN=other CA"})
  make_cert("server", "/CN=localhost")
  make_cert("renewed", "/CN=renewed")
  make_cert("expired", "/CN=localhost", {days = -1})
  make_cert("self", "/CN=localhost", {self_signed = true})
  make_cert("client", "/CN=alice", {ext = "extendedKeyUsage=clientAuth"})
  make_cert("stranger", "/CN=mallory", {ext = "extendedKeyUsage=clientAuth", ca = "other_ca"})
end)

lazy_teardown(function()
  if dir then support.remove_tree(dir) end
end)

describe("tulua.tls", function()
  describe("our client", function()
    it("talks to openssl s_server, verified, with SNI and ALPN", bounded(function()
      local port = free_port()
      local p = start_server({"openssl", "s_server", "-accept", "127.0.0.1:" .. port, "-cert",
        path("server.pem"), "-key", path("server.key"), "-rev", "-alpn", "h2,http/1.1"}, port)
      local c <close> = assert(net.connect("localhost", port, {tls = {ca = path("ca.pem"),
        alpn = {"http/1.1"}}}))
      local info = c:tls_info()
      assert.are.equal("TLSv1.3", info.version)
      assert.are.equal("http/1.1", info.alpn)
      assert.are.equal("CN=localhost", info.subject)
      assert.are.equal("CN=tulua test CA", info.issuer)
      assert.is_true(info.verified)
      assert.is_true(info.expires > os.time() and info.expires < os.time() + 3 * 86400)
      assert.is_true(c:write("hello\n"))
      assert.are.equal("olleh", c:read_line())
      c:close()
      stop(p)
    end, 20))

    it("sends the host as SNI: s_server answers another name with its second certificate",
      bounded(function()
        local port = free_port()
        local p = start_server({"openssl", "s_server", "-accept", "127.0.0.1:" .. port, "-cert",
          path("renewed.pem"), "-key", path("renewed.key"), "-rev", "-servername", "localhost",
          "-cert2", path("server.pem"), "-key2", path("server.key")}, port)
        local c <close> = assert(net.connect("localhost", port, {tls = {ca = path("ca.pem")}}))
        assert.are.equal("CN=localhost", c:tls_info().subject)
        c:close() -- s_server serves one connection at a time
        -- an IP address is no name: no SNI, the default certificate
        local d <close> = assert(net.connect("127.0.0.1", port, {tls = {ca = path("ca.pem")}}))
        assert.are.equal("CN=renewed", d:tls_info().subject)
        stop(p)
      end, 20))

    it("talks to Python's ssl server, reads its close_notify as the end", bounded(function()
      local p, port = py_server("clean", "spdy/1,http/1.1")
      local c <close> = assert(net.connect("127.0.0.1", port, {tls = {ca = path("ca.pem"),
        alpn = {"h2", "http/1.1"}}}))
      assert.are.equal("http/1.1", c:tls_info().alpn)
      assert.is_true(c:write("ping"))
      assert.are.equal("py:pinghttp/1.1\n", c:read_all())
      c:close() -- with close_notify, which Python's unwrap waits for
      assert.are.same({0}, {p:wait()})
    end, 20))

    it("reports a truncation: the peer closes without close_notify", bounded(function()
      local p, port = py_server("truncate")
      local c <close> = assert(net.connect("127.0.0.1", port, {tls = {ca = path("ca.pem")}}))
      assert.is_true(c:write("ping"))
      assert.are.equal("py:ping-", c:read_line()) -- what came before stays readable
      assert.are.same({nil, "tls: the peer closed the connection without close_notify (truncated)",
        "ETLS"}, {c:read()})
      p:wait()
    end, 20))

    it("refuses a wrong CA, a self-signed, an expired certificate and a wrong name (ECERT)",
      bounded(function()
        local function try(cert, tls_opts, host)
          local srv <close> = upper_server(server_opts(cert))
          return table.pack(net.connect(host or "127.0.0.1", port_of(srv), {tls = tls_opts}))
        end
        local ca = {ca = path("ca.pem")}
        local r = try("server", {ca = path("other_ca.pem")})
        assert.are.same({n = 3, nil, "certificate verify failed: unable to get local issuer certificate",
          "ECERT"}, r)
        r = try("self", ca)
        assert.are.same({n = 3, nil, "certificate verify failed: self-signed certificate", "ECERT"}, r)
        r = try("expired", ca)
        assert.are.same({n = 3, nil, "certificate verify failed: certificate has expired", "ECERT"}, r)
        r = try("server", {ca = path("ca.pem"), server_name = "example.org"})
        assert.are.same({n = 3, nil, "certificate verify failed: hostname mismatch", "ECERT"}, r)
        r = try("server", ca, "::1") -- nothing listens there: the connect's own failure
        assert.are.equal("ECONNREFUSED", r[3])
        -- the system's store knows nothing of our CA
        r = try("server", true)
        assert.are.same({n = 3, nil, "certificate verify failed: unable to get local issuer certificate",
          "ECERT"}, r)
        -- verify = false takes anything
        r = try("self", {verify = false})
        assert.are.equal("CN=localhost", r[1]:tls_info().subject)
        assert.is_false(r[1]:tls_info().verified)
        r[1]:close()
      end, 30))

    it("fails with ETLS on garbage, and when the peer hangs up mid-handshake", bounded(function()
      local garbage <close> = assert(net.serve("127.0.0.1", 0, function(s)
        s:write("HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        s:read_all()
      end))
      local r = table.pack(net.connect("127.0.0.1", port_of(garbage), {tls = {verify = false}}))
      assert.are.same({n = 3, nil, "tls handshake: wrong version number", "ETLS"}, r)
      local hangup <close> = assert(net.serve("127.0.0.1", 0, function(s) s:read(10) end))
      r = table.pack(net.connect("127.0.0.1", port_of(hangup), {tls = {verify = false}}))
      assert.are.same({n = 3, nil, "tls handshake: the peer closed the connection", "ETLS"}, r)
    end, 20))

    it("is bounded by asyncio.wait_for against a server that never answers", bounded(function()
      local hold = {}
      local silent <close> = assert(net.serve("127.0.0.1", 0, function(s)
        hold[#hold + 1] = s
        tulua.sleep(30)
      end))
      local fds = support.fd_count()
      local t0 = tulua.now()
      local ok, err = pcall(asyncio.wait_for, function()
        return net.connect("127.0.0.1", port_of(silent), {tls = {ca = path("ca.pem")}})
      end, 0.3)
      assert.is_false(ok)
      assert.is_true(asyncio.is_timeout(err) or err.code == "ETIMEDOUT", tostring(err))
      assert.is_true(tulua.now() - t0 >= 0.3)
      -- a cancelled task's handshake: the stream is closed, nothing leaks
      local task = tulua.spawn(function()
        return net.connect("127.0.0.1", port_of(silent), {tls = {ca = path("ca.pem")}})
      end)
      assert(eventually(function() return #hold == 2 end))
      task:cancel()
      local jok, jerr = pcall(task.join, task)
      assert.is_false(jok)
      assert.are.equal("ECANCELED", jerr.code)
      for _, s in ipairs(hold) do s:close() end
      assert(eventually(function() return support.fd_count() <= fds end))
    end, 20))
  end)

  describe("handshake bounds of our client", function()
    local function stuck_server()
      local p = assert(process.spawn({"/usr/bin/python3", "-c", PY_STUCK, "server"},
        {stdin = "null", stdout = "pipe"}))
      return p, math.tointeger(tonumber(p.stdout:read_line()))
    end

    it("net.connect's timeout covers the handshake: a server that never answers the ClientHello",
      bounded(function()
        local p, port = stuck_server()
        local fds = support.fd_count()
        local t0 = tulua.now()
        local r = table.pack(net.connect("127.0.0.1", port, {timeout = 0.5, tls = {ca = path("ca.pem")}}))
        local took = tulua.now() - t0
        assert.are.same({n = 3, nil, "tls handshake: timed out", "ETIMEDOUT"}, r)
        assert.is_true(took >= 0.45 and took < 20, took)
        assert.are.equal("accepted", p.stdout:read_line())
        -- handshake_timeout bounds it without a timeout, and start_tls too
        r = table.pack(net.connect("127.0.0.1", port, {tls = {ca = path("ca.pem"), handshake_timeout = 0.3}}))
        assert.are.same({n = 3, nil, "tls handshake: timed out after 0.3 s", "ETIMEDOUT"}, r)
        local s <close> = assert(net.connect("127.0.0.1", port))
        t0 = tulua.now()
        r = table.pack(s:start_tls({server_name = "localhost", ca = path("ca.pem"), handshake_timeout = 0.3}))
        assert.are.same({n = 3, nil, "tls handshake: timed out after 0.3 s", "ETIMEDOUT"}, r)
        assert.is_true(tulua.now() - t0 >= 0.25)
        s:close()
        -- the shorter of the two bounds wins
        t0 = tulua.now()
        r = table.pack(net.connect("127.0.0.1", port, {timeout = 30, tls = {ca = path("ca.pem"),
          handshake_timeout = 0.2}}))
        assert.are.same({n = 3, nil, "tls handshake: timed out after 0.2 s", "ETIMEDOUT"}, r)
        assert.is_true(tulua.now() - t0 < 20) -- the other bound is 30 s
        assert(eventually(function() return support.fd_count() <= fds end))
        stop(p)
      end, 30))

    it("start_tls bounded by asyncio.wait_for: the cancelled handshake leaves nothing behind", bounded(function()
      local p, port = stuck_server()
      local fds = support.fd_count()
      for _ = 1, 3 do
        local s = assert(net.connect("127.0.0.1", port))
        local ok, err = pcall(asyncio.wait_for, function()
          return s:start_tls({server_name = "localhost", ca = path("ca.pem")})
        end, 0.2)
        assert.is_false(ok)
        assert.is_true(asyncio.is_timeout(err), tostring(err))
        s:close()
      end
      collectgarbage()
      assert(eventually(function() return support.fd_count() <= fds end))
      stop(p)
    end, 30))
  end)

  describe("our server", function()
    it("drops clients that never finish the handshake after handshake_timeout, serving others meanwhile",
      bounded(function()
        local ran = 0
        local srv <close> = assert(net.serve("127.0.0.1", 0, function(s)
          ran = ran + 1
          local line = s:read_line()
          if line then s:write(line:upper() .. "\n") end
        end, {tls = server_opts("server", {handshake_timeout = 2})}))
        local stuck = assert(process.spawn({"/usr/bin/python3", "-c", PY_STUCK, "clients", tostring(port_of(srv))},
          {stdin = "null", stdout = "pipe"}))
        assert(eventually(function() return srv:connections() == 2 end))
        local t0 = tulua.now()
        -- served while the two wait in their handshakes
        local status, out = process.run({"openssl", "s_client", "-connect", "127.0.0.1:" .. port_of(srv),
          "-CAfile", path("ca.pem"), "-verify_return_error", "-quiet"}, {input = "meanwhile\n", timeout = 15})
        assert.are.same({0, "MEANWHILE\n"}, {status, out})
        if tulua.now() - t0 < 1.5 then assert.are.equal(2, srv:connections()) end -- still stuck
        local silent, half = stuck.stdout:read_line():match("^(%S+) (%S+)$")
        -- timing as lower bounds (the loop's clock may lag a few ms)
        assert.is_true(tonumber(silent) >= 1.9 and tonumber(silent) < 10, silent)
        assert.is_true(tonumber(half) >= 1.9 and tonumber(half) < 10, half)
        assert.are.equal(0, stuck:wait())
        assert.are.equal(1, ran) -- only s_client reached the handler
        assert(eventually(function() return srv:connections() == 0 end))
      end, 30))

    it("answers openssl s_client, ALPN chosen by the server", bounded(function()
      local srv <close> = upper_server(server_opts("server", {alpn = {"h2", "http/1.1"}}))
      local status, out = process.run({"openssl", "s_client", "-connect", "127.0.0.1:" .. port_of(srv),
        "-CAfile", path("ca.pem"), "-verify_return_error", "-verify_hostname", "localhost",
        "-alpn", "http/1.1,h2", "-quiet"}, {input = "hello\n", timeout = 15})
      assert.are.same({0, "HELLO alpn=h2 peer=nil TLSv1.3\n"}, {status, out})
    end, 20))

    it("speaks TLS 1.2 and refuses TLS 1.1", bounded(function()
      local srv <close> = upper_server(server_opts("server"))
      local port = port_of(srv)
      local status, out = process.run({"openssl", "s_client", "-connect", "127.0.0.1:" .. port,
        "-CAfile", path("ca.pem"), "-verify_return_error", "-tls1_2", "-quiet"},
        {input = "old\n", timeout = 15})
      assert.are.same({0, "OLD alpn=nil peer=nil TLSv1.2\n"}, {status, out})
      local status11 = process.run({"openssl", "s_client", "-connect", "127.0.0.1:" .. port,
        "-tls1_1", "-quiet"}, {input = "older\n", timeout = 15, stdout = "pipe", stderr = "pipe"})
      assert.are_not.equal(0, status11)
    end, 30))

    it("checks client certificates with verify_client", bounded(function()
      local srv <close> = upper_server(server_opts("server", {ca = path("ca.pem"), verify_client = true}))
      local port = port_of(srv)
      local c <close> = assert(net.connect("127.0.0.1", port, {tls = {ca = path("ca.pem"),
        cert = path("client.pem"), key = path("client.key")}}))
      c:write("me\n")
      assert.are.equal("ME alpn=nil peer=CN=alice TLSv1.3", c:read_line())
      -- no certificate: TLS 1.3 ends our handshake first, the server's alert follows
      local d <close> = assert(net.connect("127.0.0.1", port, {tls = {ca = path("ca.pem")}}))
      d:write("anyone\n")
      assert.are.same({nil, "tls: tlsv13 alert certificate required", "ETLS"}, {d:read_line()})
      -- a certificate of another CA, from s_client
      local status, out = process.run({"openssl", "s_client", "-connect", "127.0.0.1:" .. port,
        "-CAfile", path("ca.pem"), "-cert", path("stranger.pem"), "-key", path("stranger.key"),
        "-quiet"}, {input = "x\n", timeout = 15, stderr = "pipe"})
      assert.are_not.equal(0, status)
      assert.are.equal("", out)
    end, 30))

    it("reloads its certificate with set_tls: new connections get the new one", bounded(function()
      local srv <close> = upper_server(server_opts("server"))
      local port = port_of(srv)
      local old <close> = assert(net.connect("127.0.0.1", port, {tls = {ca = path("ca.pem")}}))
      assert.are.equal("CN=localhost", old:tls_info().subject)
      assert.is_true(srv:set_tls(server_opts("renewed")))
      local new <close> = assert(net.connect("127.0.0.1", port, {tls = {ca = path("ca.pem")}}))
      assert.are.equal("CN=renewed", new:tls_info().subject)
      old:write("still\n") -- the old connection goes on with its own
      assert.are.equal("STILL alpn=nil peer=nil TLSv1.3", old:read_line())
      -- a certificate that does not load: the server keeps what it has
      local r = table.pack(srv:set_tls({cert = path("nope.pem"), key = path("server.key")}))
      assert.are.equal(nil, r[1])
      assert.matches("^tls: cannot load certificate '.*nope.pem': ", r[2])
      assert.are.equal("ETLS", r[3])
      local again <close> = assert(net.connect("127.0.0.1", port, {tls = {ca = path("ca.pem")}}))
      assert.are.equal("CN=renewed", again:tls_info().subject)
    end, 20))

    it("drops a client that sends garbage instead of a ClientHello, and goes on", bounded(function()
      local ran = 0
      local srv <close> = assert(net.serve("127.0.0.1", 0, function() ran = ran + 1 end,
        {tls = server_opts("server")}))
      local c <close> = assert(net.connect("127.0.0.1", port_of(srv)))
      c:write("GET / HTTP/1.1\r\nHost: x\r\n\r\n")
      local alert = c:read_all()
      assert.is_true(#alert < 64) -- at most an alert, then the end
      local half <close> = assert(net.connect("127.0.0.1", port_of(srv)))
      half:write("\22\3\1\0\200") -- a record header, then the hangup
      half:close()
      local good <close> = assert(net.connect("127.0.0.1", port_of(srv), {tls = {verify = false}}))
      assert.are.equal("CN=localhost", good:tls_info().subject)
      assert(eventually(function() return ran == 1 end))
      assert.are.equal(1, ran)
    end, 20))

    it("sends close_notify on shutdown and on close; reads the client's as the end", bounded(function()
      local got = {}
      local srv <close> = assert(net.serve("127.0.0.1", 0, function(s)
        got[#got + 1] = table.pack(s:read_all())
      end, {tls = server_opts("server")}))
      local c <close> = assert(net.connect("127.0.0.1", port_of(srv), {tls = {ca = path("ca.pem")}}))
      assert.is_true(c:write("bye"))
      assert.is_true(c:shutdown())
      assert.are.same({nil, "write: broken pipe", "EPIPE"}, {c:write("more")})
      assert.are.same({n = 1}, table.pack(c:read())) -- the server's close_notify: a clean end
      assert(eventually(function() return #got == 1 end))
      assert.are.same({n = 1, "bye"}, got[1])
      c:close()
      assert.has_error(function() c:write("x") end, "attempt to use a closed tcp stream")
    end, 20))
  end)

  describe("start_tls", function()
    it("upgrades plain streams on both sides (STARTTLS)", bounded(function()
      local srv <close> = assert(net.serve("127.0.0.1", 0, function(s)
        assert.are.equal("STARTTLS", s:read_line())
        s:write("GO\n")
        assert.is_nil(s:tls_info())
        assert(s:start_tls(server_opts("server", {server = true, alpn = {"imap"}})))
        for line in s:lines() do s:write("secret " .. line .. "\n") end
      end))
      local c <close> = assert(net.connect("127.0.0.1", port_of(srv)))
      c:write("STARTTLS\n")
      assert.are.equal("GO", c:read_line())
      assert.matches("bad argument #1 to 'start_tls' %(a checked client needs 'server_name'%)",
        select(2, pcall(function() return c:start_tls({ca = path("ca.pem")}) end)))
      assert.is_true(c:start_tls({ca = path("ca.pem"), server_name = "localhost", alpn = {"imap"}}))
      assert.are.equal("imap", c:tls_info().alpn)
      c:write("one\n")
      assert.are.equal("secret one", c:read_line())
      assert.has_error(function() c:start_tls() end, "the stream already has TLS")
    end, 20))

    it("works on unix sockets too", bounded(function()
      local sock = path("s.sock")
      local srv <close> = assert(net.serve_unix(sock, function(s)
        assert(s:start_tls(server_opts("server", {server = true})))
        s:write("over " .. s:read_line() .. "\n")
      end))
      assert.are.equal(sock, srv:address())
      local c <close> = assert(net.connect_unix(sock))
      assert.is_true(c:start_tls({ca = path("ca.pem"), server_name = "localhost"}))
      c:write("unix\n")
      assert.are.equal("over unix", c:read_line())
      assert.are.equal("TLSv1.3", c:tls_info().version)
    end, 20))

    it("serves openssl s_client -starttls smtp", bounded(function()
      local ctx = assert(tls.context(server_opts("server", {server = true})))
      local srv <close> = assert(net.serve("127.0.0.1", 0, function(s)
        s:write("220 tulua ESMTP\r\n")
        s:read_line()
        s:write("250-tulua\r\n250 STARTTLS\r\n")
        assert.are.equal("STARTTLS", s:read_line{sep = "\r\n"})
        s:write("220 go ahead\r\n")
        assert(s:start_tls(ctx))
        s:write("secret " .. s:read_line() .. "\n")
      end))
      local status, out = process.run({"openssl", "s_client", "-connect", "127.0.0.1:" .. port_of(srv),
        "-starttls", "smtp", "-CAfile", path("ca.pem"), "-verify_return_error", "-quiet"},
        {input = "mail\n", timeout = 15})
      assert.are.same({0, "secret mail\n"}, {status, out})
    end, 20))
  end)

  describe("streams", function()
    it("carry large writes both ways with backpressure, in order", bounded(function()
      local srv <close> = assert(net.serve("127.0.0.1", 0, function(s)
        while true do
          local d = s:read()
          if not d then break end
          assert(s:write(d))
        end
      end, {tls = server_opts("server")}))
      local c <close> = assert(net.connect("127.0.0.1", port_of(srv), {tls = {ca = path("ca.pem")}}))
      local parts = {}
      for i = 1, 64 do parts[i] = string.rep(string.char(64 + i % 26), 64 * 1024 + i) end
      local big = table.concat(parts)
      local writer = tulua.spawn(function()
        assert(c:write(big)) -- 4 MiB in one write
        assert(c:write("tail")) -- a second writer's bytes come after it
        assert(c:shutdown())
      end)
      tulua.sleep(0.05) -- the echo stalls: the writer waits on the kernel
      local echoed = assert(c:read_all())
      writer:join()
      assert.are.equal(#big + 4, #echoed)
      assert.is_true(echoed == big .. "tail")
    end, 60))

    it("read partial records: read_exactly across records, lines split anywhere", bounded(function()
      local srv <close> = assert(net.serve("127.0.0.1", 0, function(s)
        for _, piece in ipairs({"ab", "c\nde", "f", "\n", "0123456789"}) do
          s:write(piece)
          tulua.sleep(0.01)
        end
      end, {tls = server_opts("server")}))
      local c <close> = assert(net.connect("127.0.0.1", port_of(srv), {tls = {ca = path("ca.pem")}}))
      assert.are.equal("abc", c:read_line())
      assert.are.equal("def", c:read_line())
      assert.are.equal("01234", c:read_exactly(5))
      assert.are.equal("56789", c:read_all())
    end, 20))

    it("take records that come a byte at a time, the handshake's included", bounded(function()
      local srv <close> = upper_server(server_opts("server"))
      -- a relay that passes the server's bytes on one by one, each in a
      -- segment of its own
      local relay <close> = assert(net.serve("127.0.0.1", 0, function(client)
        client:set_nodelay(true)
        local up <close> = assert(net.connect("127.0.0.1", port_of(srv)))
        local pump = tulua.spawn(function()
          while true do
            local d = client:read()
            if not d then break end
            up:write(d)
          end
        end)
        while true do
          local d = up:read()
          if not d then break end
          for i = 1, #d do
            client:write(d:sub(i, i))
            if i % 64 == 0 then tulua.sleep(0.001) end
          end
        end
        pump:cancel()
      end))
      local c <close> = assert(net.connect("127.0.0.1", port_of(relay), {tls = {ca = path("ca.pem")}}))
      c:write("slow\n")
      assert.are.equal("SLOW alpn=nil peer=nil TLSv1.3", c:read_line())
      assert.are.same({n = 1}, table.pack(c:read())) -- then the server's close_notify
    end, 20))

    -- tls.c's sweeper gives back the buffers of a connection idle for 1 s
    -- (it looks every 0.5 s): one idle past it works on both ways, and one
    -- whose record (the ClientHello, then a data record) is cut in two
    -- across the sweep (half of it in SSL's buffer) loses nothing.
    it("work on after an idle spell gave their buffers back", bounded(function()
      local split = false -- the relay cuts the client's next record in two
      local srv <close> = assert(net.serve("127.0.0.1", 0, function(s)
        while true do
          local d = s:read_line()
          if not d then break end
          assert(s:write(d:upper() .. string.rep(d, 4000) .. "\n"))
        end
      end, {tls = server_opts("server")}))
      local relay <close> = assert(net.serve("127.0.0.1", 0, function(client)
        local up <close> = assert(net.connect("127.0.0.1", port_of(srv)))
        local back = tulua.spawn(function()
          while true do
            local d = up:read()
            if not d then break end
            client:write(d)
          end
        end)
        while true do
          local d = client:read()
          if not d then break end
          if split then
            split = false
            up:write(d:sub(1, 9))
            tulua.sleep(1.6)
            up:write(d:sub(10))
          else
            up:write(d)
          end
        end
        back:cancel()
      end))
      split = true -- the ClientHello first: cut across a sweep mid-handshake
      local c <close> = assert(net.connect("127.0.0.1", port_of(relay), {tls = {ca = path("ca.pem")}}))
      local function exchange(word)
        assert(c:write(word .. "\n"))
        local answer = assert(c:read_line())
        assert.are.equal(word:upper() .. string.rep(word, 4000), answer) -- > 32 KiB out
      end
      exchange("one")
      tulua.sleep(1.6) -- both ends idle past the sweep
      exchange("two")
      split = true
      exchange("three")
      tulua.sleep(1.6)
      exchange("four")
    end, 30))

    it("have tls_info only with TLS; tls = false is plain", bounded(function()
      local srv <close> = assert(net.serve("127.0.0.1", 0, function(s) s:read() end, {tls = false}))
      local c <close> = assert(net.connect("127.0.0.1", port_of(srv), {tls = false}))
      assert.is_nil(c:tls_info())
    end))
  end)

  describe("misuse", function()
    it("raises for unknown option keys and wrong types", function()
      local function msg(fn, ...)
        local ok, err = pcall(fn, ...)
        assert.is_false(ok)
        return err
      end
      assert.matches("unknown option 'sni'", msg(tls.context, {sni = "x"}))
      assert.matches("unknown option 'verify'", msg(tls.context, {server = true, cert = "a", key = "b",
        verify = false}))
      assert.matches("a server needs 'cert' and 'key'", msg(tls.context, {server = true}))
      assert.matches("'verify_client' needs 'ca'", msg(tls.context, {server = true, cert = "a",
        key = "b", verify_client = true}))
      assert.matches("'alpn' must be a list", msg(tls.context, {alpn = "h2"}))
      assert.matches("'ca' must be a string", msg(tls.context, {ca = 1}))
      for _, v in ipairs({0, -1, 0 / 0, "5", false}) do
        assert.matches("'handshake_timeout' must be a positive number", msg(tls.context, {handshake_timeout = v}))
      end
      assert.matches("'handshake_timeout' must be a positive number", msg(net.serve, "127.0.0.1", 0,
        function() end, {tls = {cert = "a", key = "b", handshake_timeout = -1}}))
      assert.matches("unknown option 'handshake_timout'", msg(tls.context, {server = true, cert = "a", key = "b",
        handshake_timout = 1}))
      assert.matches("#4 to '[%w.]*serve' %(unknown option 'bogus'%)", msg(net.serve, "127.0.0.1", 0, function() end,
        {tls = {cert = "a", key = "b", bogus = 1}}))
      assert.matches("'tls' needs a server context", msg(net.serve, "127.0.0.1", 0, function() end,
        {tls = assert(tls.context({verify = false}))}))
      assert.matches("'tls' must be a table or a server context", msg(net.serve, "127.0.0.1", 0,
        function() end, {tls = true}))
      local ok, err = pcall(function()
        tulua.spawn(function() return net.connect("127.0.0.1", 1, {tls = {server_nam = "x"}}) end):join()
      end)
      assert.is_false(ok)
      assert.matches("bad argument #3 to 'connect' %(unknown option 'server_nam'%)", err)
    end)

    it("returns nil, message, code for files that do not load", function()
      local r = table.pack(tls.context({ca = path("missing.pem")}))
      assert.are.equal(nil, r[1])
      assert.matches("^tls: cannot load CA '.*missing.pem': ", r[2])
      assert.are.equal("ETLS", r[3])
      r = table.pack(tls.context({server = true, cert = path("server.pem"), key = path("client.key")}))
      assert.are.same({n = 3, nil, "tls: cannot load key '" .. path("client.key")
        .. "': key values mismatch", "ETLS"}, r)
      assert.matches("tls context %(server%)", tostring(assert(tls.context(server_opts("server",
        {server = true})))))
    end)
  end)
end)
