-- tulua.dns: getaddrinfo and getnameinfo on libuv's thread pool. The
-- machine that runs the specs may have no network but loopback, and
-- localhost may resolve to 127.0.0.1 alone or to ::1 too (Debian's installer
-- writes both in /etc/hosts): the specs ask what it resolves to and hold
-- for either.
local tulua = require("tulua")
local dns = require("tulua.dns")
local fs = require("tulua.fs")

-- Sorts a getaddrinfo list by family, then socktype, for exact asserts.
local function sorted(list)
  table.sort(list, function(a, b)
    if a.family ~= b.family then return a.family < b.family end
    return a.socktype < b.socktype
  end)
  return list
end

-- The addresses localhost resolves to, as {family, addr} pairs sorted by
-- family: each must be a loopback address, whatever the machine's hosts.
local function localhost_addrs()
  local addrs = {}
  for _, a in ipairs(sorted(assert(dns.getaddrinfo("localhost", nil, {socktype = "stream"})))) do
    assert(a.addr == "::1" or a.addr:match("^127%.%d+%.%d+%.%d+$"), a.addr .. " is not a loopback address")
    addrs[#addrs + 1] = {family = a.family, addr = a.addr}
  end
  assert(#addrs >= 1, "localhost resolves to nothing")
  return addrs
end

-- What getaddrinfo("localhost", port, ...) gives: for each address of
-- localhost, one entry per socket type of types ({socktype, protocol}).
local function localhost_entries(port, types)
  local list = {}
  for _, a in ipairs(localhost_addrs()) do
    for _, t in ipairs(types) do
      list[#list + 1] = {family = a.family, addr = a.addr, port = port, socktype = t[1], protocol = t[2]}
    end
  end
  return list
end

local DGRAM, RAW, STREAM = {"dgram", 17}, {"raw", 0}, {"stream", 6}

describe("tulua.dns", function()
  describe("getaddrinfo", function()
    it("resolves localhost with a port into one entry per socket type", function()
      assert.are.same(localhost_entries(80, {DGRAM, RAW, STREAM}),
        sorted(assert(dns.getaddrinfo("localhost", 80))))
    end)

    it("narrows the results with socktype", function()
      assert.are.same(localhost_entries(53, {DGRAM}),
        sorted(assert(dns.getaddrinfo("localhost", 53, {socktype = "dgram"}))))
      assert.are.same(localhost_entries(53, {STREAM}),
        sorted(assert(dns.getaddrinfo("localhost", 53, {socktype = "stream"}))))
    end)

    it("narrows the results with protocol", function()
      assert.are.same({{family = "inet", addr = "127.0.0.1", port = 7, socktype = "dgram", protocol = 17}},
        dns.getaddrinfo("127.0.0.1", 7, {protocol = 17}))
    end)

    it("passes numeric IPv4 and IPv6 addresses through", function()
      assert.are.same({{family = "inet6", addr = "::1", port = 0, socktype = "dgram", protocol = 17}},
        dns.getaddrinfo("::1", nil, {socktype = "dgram"}))
      assert.are.same({{family = "inet", addr = "10.1.2.3", port = 9, socktype = "dgram", protocol = 17}},
        dns.getaddrinfo("10.1.2.3", 9, {socktype = "dgram", numeric_host = true}))
    end)

    it("takes a service name or a numeric string as the port", function()
      assert.are.same(localhost_entries(53, {DGRAM}),
        sorted(assert(dns.getaddrinfo("localhost", "domain", {socktype = "dgram"}))))
      assert.are.same(localhost_entries(8080, {DGRAM}),
        sorted(assert(dns.getaddrinfo("localhost", "8080", {socktype = "dgram"}))))
    end)

    it("gives the loopback, or with passive the wildcard, for a nil host", function()
      assert.are.same({
        {family = "inet", addr = "127.0.0.1", port = 80, socktype = "dgram", protocol = 17},
        {family = "inet6", addr = "::1", port = 80, socktype = "dgram", protocol = 17},
      }, sorted(assert(dns.getaddrinfo(nil, 80, {socktype = "dgram"}))))
      assert.are.same({
        {family = "inet", addr = "0.0.0.0", port = 80, socktype = "dgram", protocol = 17},
        {family = "inet6", addr = "::", port = 80, socktype = "dgram", protocol = 17},
      }, sorted(assert(dns.getaddrinfo(nil, 80, {socktype = "dgram", passive = true}))))
    end)

    it("keeps one family with family", function()
      assert.are.same({{family = "inet6", addr = "::", port = 80, socktype = "dgram", protocol = 17}},
        dns.getaddrinfo(nil, 80, {socktype = "dgram", passive = true, family = "inet6"}))
      assert.are.same({{family = "inet", addr = "0.0.0.0", port = 80, socktype = "dgram", protocol = 17}},
        dns.getaddrinfo(nil, 80, {socktype = "dgram", passive = true, family = "inet"}))
    end)

    it("returns EAI_NONAME for an unknown host", function()
      assert.are.same({nil, "nonexistent.invalid: unknown node or service", "EAI_NONAME"},
        {dns.getaddrinfo("nonexistent.invalid")})
    end)

    it("returns EAI_NONAME for a name with numeric_host", function()
      assert.are.same({nil, "localhost: unknown node or service", "EAI_NONAME"},
        {dns.getaddrinfo("localhost", 80, {numeric_host = true})})
    end)

    it("returns EAI_SERVICE for an unknown service", function()
      assert.are.same({nil, "localhost: service not available for socket type", "EAI_SERVICE"},
        {dns.getaddrinfo("localhost", "nosuchservice")})
    end)

    it("names the service when there is no host", function()
      assert.are.same({nil, "nosuchservice: service not available for socket type", "EAI_SERVICE"},
        {dns.getaddrinfo(nil, "nosuchservice")})
    end)

    it("returns EAI_ADDRFAMILY for an address of the other family", function()
      assert.are.same({nil, "127.0.0.1: address family not supported", "EAI_ADDRFAMILY"},
        {dns.getaddrinfo("127.0.0.1", 80, {family = "inet6"})})
    end)

    it("raises on bad arguments", function()
      assert.has_error(function() dns.getaddrinfo() end, "bad argument #1 to 'getaddrinfo' (host or port expected)")
      assert.has_error(function() dns.getaddrinfo({}) end,
        "bad argument #1 to 'getaddrinfo' (string expected, got table)")
      assert.has_error(function() dns.getaddrinfo("localhost", {}) end,
        "bad argument #2 to 'getaddrinfo' (integer or string expected, got table)")
      assert.has_error(function() dns.getaddrinfo("localhost", 65536) end,
        "bad argument #2 to 'getaddrinfo' (port out of range)")
      assert.has_error(function() dns.getaddrinfo("localhost", -1) end,
        "bad argument #2 to 'getaddrinfo' (port out of range)")
      assert.has_error(function() dns.getaddrinfo("localhost", 1.5) end,
        "bad argument #2 to 'getaddrinfo' (number has no integer representation)")
      assert.has_error(function() dns.getaddrinfo("localhost", 80, 1) end,
        "bad argument #3 to 'getaddrinfo' (table expected, got number)")
      assert.has_error(function() dns.getaddrinfo("localhost", 80, {family = "unix"}) end,
        "bad argument #3 to 'getaddrinfo' (invalid family 'unix')")
      assert.has_error(function() dns.getaddrinfo("localhost", 80, {socktype = 2}) end,
        "bad argument #3 to 'getaddrinfo' (invalid socktype '2')")
      assert.has_error(function() dns.getaddrinfo("localhost", 80, {protocol = "udp"}) end,
        "bad argument #3 to 'getaddrinfo' (field 'protocol' must be an integer in 0..255)")
    end)

    it("raises when called where no wait is possible", function()
      assert.has_error(function()
        table.sort({1, 2}, function()
          dns.getaddrinfo("localhost")
          return false
        end)
      end, "attempt to wait in 'dns.getaddrinfo' inside a function called from C that cannot yield "
        .. "(such as a 'table.sort' comparator or a 'string.gsub' callback)")
    end)

    it("lets other tasks run while it waits", function()
      local other = tulua.spawn(function() return "ran" end)
      assert(dns.getaddrinfo("localhost", 80))
      assert.are.equal("done", other:status())
    end)

    it("serves several tasks at once", function()
      local tasks = {}
      for i = 1, 8 do
        tasks[i] = tulua.spawn(dns.getaddrinfo, "127.0.0.1", i, {socktype = "dgram"})
      end
      for i = 1, 8 do
        assert.are.equal(i, tasks[i]:join()[1].port)
      end
    end)
  end)

  describe("getnameinfo", function()
    it("names an address and a port from the hosts and services files", function()
      assert.are.same({"localhost", "http"}, {dns.getnameinfo("127.0.0.1", 80)})
      assert.are.same({"localhost", "domain"}, {dns.getnameinfo("127.0.0.1", 53)})
    end)

    it("returns the numeric form of what has no name", function()
      -- a documentation address (RFC 3849): in no hosts file, and its
      -- reverse zone is served empty by resolvers themselves (RFC 6303)
      assert.are.same({"2001:db8::1", "domain"}, {dns.getnameinfo("2001:db8::1", 53)})
      assert.are.same({"localhost", "0"}, {dns.getnameinfo("127.0.0.1")})
      assert.are.same({"localhost", "40000"}, {dns.getnameinfo("127.0.0.1", 40000)})
    end)

    it("raises on bad arguments", function()
      assert.has_error(function() dns.getnameinfo("localhost", 80) end,
        "bad argument #1 to 'getnameinfo' (invalid IP address 'localhost')")
      assert.has_error(function() dns.getnameinfo(nil, 80) end,
        "bad argument #1 to 'getnameinfo' (string expected, got nil)")
      assert.has_error(function() dns.getnameinfo("127.0.0.1", 65536) end,
        "bad argument #2 to 'getnameinfo' (port out of range)")
      assert.has_error(function() dns.getnameinfo("127.0.0.1", "http") end,
        "bad argument #2 to 'getnameinfo' (number expected, got string)")
    end)

    it("raises when called where no wait is possible", function()
      assert.has_error(function()
        table.sort({1, 2}, function()
          dns.getnameinfo("127.0.0.1")
          return false
        end)
      end, "attempt to wait in 'dns.getnameinfo' inside a function called from C that cannot yield "
        .. "(such as a 'table.sort' comparator or a 'string.gsub' callback)")
    end)
  end)

  describe("in a task that is cancelled while it waits", function()
    it("ends the task with the cancellation error", function()
      local a = tulua.spawn(dns.getaddrinfo, "localhost", 80)
      local n = tulua.spawn(dns.getnameinfo, "127.0.0.1", 80)
      tulua.sleep(0) -- both wait now; their lookups may run or be done
      assert.is_true(a:cancel())
      assert.is_true(n:cancel())
      for _, t in ipairs({a, n}) do
        local ok, err = pcall(t.join, t)
        assert.is_false(ok)
        assert.are.equal("ECANCELED", err.code)
        assert.is_true(t:cancelled())
      end
      assert.are.same(localhost_entries(80, {STREAM}),
        sorted(assert(dns.getaddrinfo("localhost", 80, {socktype = "stream"}))))
    end)

    it("takes back a lookup still queued behind a busy thread pool", function()
      local dir = assert(fs.mkdtemp("/tmp/tulua-dns-spec-XXXXXX"))
      local fifo = dir .. "/fifo"
      assert(os.execute("mkfifo " .. fifo))
      local pipe = assert(fs.open(fifo, "r+")) -- a reader and a writer: never blocks
      local n = tonumber(os.getenv("UV_THREADPOOL_SIZE")) or 4
      local readers = {}
      for i = 1, n do
        readers[i] = tulua.spawn(function() return pipe:read(1) end)
      end
      tulua.sleep(0) -- every pool thread now waits in a read
      local a = tulua.spawn(dns.getaddrinfo, "localhost", 80)
      local b = tulua.spawn(dns.getnameinfo, "127.0.0.1", 80)
      tulua.sleep(0)
      assert.are.equal("waiting", a:status())
      assert.are.equal("waiting", b:status())
      assert.is_true(a:cancel())
      assert.is_true(b:cancel())
      assert.is_false(pcall(a.join, a))
      assert.is_false(pcall(b.join, b))
      assert.is_true(a:cancelled())
      assert.is_true(b:cancelled())
      local w = assert(io.open(fifo, "w"))
      w:write(string.rep("x", n))
      w:close()
      for i = 1, n do
        assert.are.equal("x", readers[i]:join())
      end
      assert.is_true(pipe:close())
      assert(fs.unlink(fifo))
      assert(fs.rmdir(dir))
    end)
  end)
end)
