-- tulua.udp: UDP sockets on libuv. Every socket here is bound to 127.0.0.1
-- or ::1 (port 0), except where a spec shows how an unbound socket binds
-- itself; every wait that depends on another party is bounded by a timer
-- that closes the socket.
local tulua = require("tulua")
local timer = require("tulua.timer")
local udp = require("tulua.udp")
package.path = (debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or ".") .. "/?.lua;" .. package.path
local fd_count = require("support").fd_count

local CLOSED = {nil, "udp socket closed", "ECANCELED"}

local function port_of(sock)
  local _, port = assert(sock:local_address())
  return port
end

-- Two sockets bound to 127.0.0.1 on free ports, closed when the spec ends.
local function pair()
  local a = assert(udp.bind("127.0.0.1", 0))
  local b = assert(udp.bind("127.0.0.1", 0))
  finally(function()
    a:close()
    b:close()
  end)
  return a, b, port_of(a), port_of(b)
end

-- Calls fn(); if it has not returned after 5 s, closes sock, which ends
-- any wait on it with CLOSED. Returns fn's results.
local function bounded(sock, fn)
  local guard = timer.after(5, function() sock:close() end)
  local r = table.pack(fn())
  guard:close()
  return table.unpack(r, 1, r.n)
end

-- Runs a python3 program (bounded by `timeout`) and returns a handle on
-- its standard output.
local function python(code, ...)
  local args = {}
  for i, a in ipairs({...}) do
    args[i] = tostring(a)
  end
  return assert(io.popen("timeout 20 python3 -c '" .. code .. "' " .. table.concat(args, " "), "r"))
end

describe("tulua.udp", function()
  describe("bind", function()
    it("binds to 127.0.0.1 on a free port for port 0", function()
      local s <close> = assert(udp.bind("127.0.0.1", 0))
      local host, port = s:local_address()
      assert.are.equal("127.0.0.1", host)
      assert.is_true(math.type(port) == "integer" and port > 0 and port < 65536)
      assert.are.equal("tulua.udp", getmetatable(s).__name)
      assert.are.equal("udp socket (127.0.0.1:" .. port .. ")", tostring(s))
    end)

    it("binds to ::1", function()
      local s <close> = assert(udp.bind("::1", 0, {ipv6only = true}))
      local host, port = s:local_address()
      assert.are.equal("::1", host)
      assert.are.equal("udp socket ([::1]:" .. port .. ")", tostring(s))
    end)

    it("returns EADDRINUSE for a port taken", function()
      local a <close> = assert(udp.bind("127.0.0.1", 0))
      local port = port_of(a)
      assert.are.same({nil, "127.0.0.1:" .. port .. ": address already in use", "EADDRINUSE"},
        {udp.bind("127.0.0.1", port)})
    end)

    it("lets two sockets share a port with reuseaddr", function()
      local a <close> = assert(udp.bind("127.0.0.1", 0, {reuseaddr = true}))
      local b <close> = assert(udp.bind("127.0.0.1", port_of(a), {reuseaddr = true}))
      assert.are.equal(port_of(a), port_of(b))
    end)

    it("lets two sockets share a port with reuseport, and not without it", function()
      local a <close> = assert(udp.bind("127.0.0.1", 0, {reuseport = true}))
      local port = port_of(a)
      local b <close> = assert(udp.bind("127.0.0.1", port, {reuseport = true}))
      assert.are.equal(port, port_of(b))
      assert.are.same({nil, "127.0.0.1:" .. port .. ": address already in use", "EADDRINUSE"},
        {udp.bind("127.0.0.1", port)})
    end)

    it("raises for an unknown option", function()
      assert.has_error(function() udp.bind("127.0.0.1", 0, {reuse_port = true}) end,
        "bad argument #3 to 'bind' (unknown option 'reuse_port')")
      assert.has_error(function() udp.bind("127.0.0.1", 0, {[1] = true}) end,
        "bad argument #3 to 'bind' (unknown option '1')")
    end)

    it("returns EADDRNOTAVAIL for an address of no local interface", function()
      assert.are.same({nil, "203.0.113.1:0: address not available", "EADDRNOTAVAIL"},
        {udp.bind("203.0.113.1", 0)})
      assert.are.same({nil, "[2001:db8::1]:5000: address not available", "EADDRNOTAVAIL"},
        {udp.bind("2001:db8::1", 5000)})
    end)

    it("does not wait, so it works where no wait is possible", function()
      local s
      table.sort({1, 2}, function()
        s = s or assert(udp.bind("127.0.0.1", 0))
        return false
      end)
      assert.are.equal("127.0.0.1", s:local_address())
      s:close()
    end)

    it("raises on bad arguments", function()
      assert.has_error(function() udp.bind("localhost", 0) end,
        "bad argument #1 to 'bind' (invalid IP address 'localhost')")
      assert.has_error(function() udp.bind("127.0.0.1") end,
        "bad argument #2 to 'bind' (number expected, got no value)")
      assert.has_error(function() udp.bind("127.0.0.1", 65536) end, "bad argument #2 to 'bind' (port out of range)")
      assert.has_error(function() udp.bind("127.0.0.1", -1) end, "bad argument #2 to 'bind' (port out of range)")
      assert.has_error(function() udp.bind("127.0.0.1", 0, true) end,
        "bad argument #3 to 'bind' (table expected, got boolean)")
      assert.has_error(function() udp.bind("127.0.0.1", 0, {ipv6only = true}) end,
        "bad argument #3 to 'bind' (ipv6only needs an IPv6 address)")
    end)
  end)

  describe("new", function()
    it("makes a socket of no family that has no address yet", function()
      local s <close> = assert(udp.new())
      assert.are.equal("udp socket (unbound)", tostring(s))
      assert.are.same({nil, "udp socket: bad file descriptor", "EBADF"}, {s:local_address()})
      assert.are.same({nil, "udp socket: bad file descriptor", "EBADF"}, {s:set_broadcast(true)})
    end)

    it("makes an unbound socket of a family", function()
      local s4 <close> = assert(udp.new("inet"))
      local s6 <close> = assert(udp.new("inet6"))
      assert.are.same({"0.0.0.0", 0}, {s4:local_address()})
      assert.are.same({"::", 0}, {s6:local_address()})
      assert.is_true(s4:set_broadcast(true))
    end)

    it("binds the socket to the wildcard address and a free port on its first send", function()
      local a <close> = assert(udp.bind("127.0.0.1", 0))
      local s <close> = assert(udp.new())
      assert.is_true(s:send_to("hi", "127.0.0.1", port_of(a)))
      local host, port = s:local_address()
      assert.are.equal("0.0.0.0", host)
      assert.is_true(port > 0)
      assert.are.same({"hi", "127.0.0.1", port}, {bounded(a, function() return a:recv_from() end)})
    end)

    it("raises on a bad family", function()
      assert.has_error(function() udp.new("unix") end, "bad argument #1 to 'new' (invalid option 'unix')")
      assert.has_error(function() udp.new(4) end, "bad argument #1 to 'new' (invalid option '4')")
    end)
  end)

  describe("send_to and recv_from", function()
    it("exchange datagrams between two sockets on 127.0.0.1", function()
      local a, b, pa, pb = pair()
      assert.is_true(a:send_to("ping", "127.0.0.1", pb))
      local data, host, port = bounded(b, function() return b:recv_from() end)
      assert.are.same({"ping", "127.0.0.1", pa}, {data, host, port})
      assert.is_true(b:send_to("pong", host, port))
      assert.are.same({"pong", "127.0.0.1", pb}, {bounded(a, function() return a:recv_from() end)})
    end)

    it("exchange datagrams on ::1", function()
      local a <close> = assert(udp.bind("::1", 0))
      local b <close> = assert(udp.bind("::1", 0))
      assert.is_true(a:send_to("six", "::1", port_of(b)))
      assert.are.same({"six", "::1", port_of(a)}, {bounded(b, function() return b:recv_from() end)})
    end)

    it("carry any bytes, and empty datagrams", function()
      local a, b, pa, pb = pair()
      local bytes = {}
      for i = 0, 255 do
        bytes[#bytes + 1] = string.char(i)
      end
      bytes = table.concat(bytes)
      assert.is_true(a:send_to(bytes, "127.0.0.1", pb))
      assert.is_true(a:send_to("", "127.0.0.1", pb))
      bounded(b, function()
        assert.are.same({bytes, "127.0.0.1", pa}, {b:recv_from()})
        assert.are.same({"", "127.0.0.1", pa}, {b:recv_from()})
      end)
    end)

    it("carry the largest datagram", function()
      local a, b, _, pb = pair()
      local big = string.rep("0123456789abcdef", 4094) .. "0123" -- 65508 bytes
      assert.are.same({nil, "127.0.0.1:" .. pb .. ": message too long", "EMSGSIZE"},
        {a:send_to(big, "127.0.0.1", pb)})
      big = big:sub(1, 65507)
      assert.is_true(a:send_to(big, "127.0.0.1", pb))
      assert.are.equal(big, (bounded(b, function() return b:recv_from() end)))
    end)

    it("cut a datagram longer than max", function()
      local a, b, pa, pb = pair()
      assert.is_true(a:send_to("hello world", "127.0.0.1", pb))
      assert.is_true(a:send_to("next", "127.0.0.1", pb))
      bounded(b, function()
        assert.are.same({"hello", "127.0.0.1", pa}, {b:recv_from(5)})
        assert.are.same({"next", "127.0.0.1", pa}, {b:recv_from(5)}) -- the rest was dropped
      end)
    end)

    it("keep datagrams that arrive while nobody waits in the kernel, in order", function()
      local a, b, _, pb = pair()
      for i = 1, 20 do
        assert.is_true(a:send_to("d" .. i, "127.0.0.1", pb))
      end
      bounded(b, function()
        for i = 1, 20 do
          assert.are.equal("d" .. i, (b:recv_from()))
        end
      end)
    end)

    it("give datagrams to waiting tasks in the order they called", function()
      local a, b, _, pb = pair()
      local tasks = {}
      for i = 1, 3 do
        tasks[i] = tulua.spawn(function() return i, (b:recv_from()) end)
      end
      tulua.sleep(0) -- the three wait, first to last
      for i = 1, 3 do
        assert.are.equal("waiting", tasks[i]:status())
      end
      assert.is_true(a:send_to("one", "127.0.0.1", pb))
      assert.is_true(a:send_to("two", "127.0.0.1", pb))
      assert.is_true(a:send_to("three", "127.0.0.1", pb))
      bounded(b, function()
        assert.are.same({1, "one"}, {tasks[1]:join()})
        assert.are.same({2, "two"}, {tasks[2]:join()})
        assert.are.same({3, "three"}, {tasks[3]:join()})
      end)
    end)

    it("let other tasks run while a task waits", function()
      local a, b, _, pb = pair()
      local sender = tulua.spawn(function() return a:send_to("late", "127.0.0.1", pb) end)
      assert.are.equal("late", (bounded(b, function() return b:recv_from() end)))
      assert.is_true(sender:join())
    end)

    it("serve many datagrams from many tasks", function()
      local a, b, _, pb = pair()
      local n, got = 200, {}
      local receiver = tulua.spawn(function()
        for _ = 1, n do
          got[#got + 1] = b:recv_from()
        end
      end)
      local senders = {}
      for i = 1, 4 do
        senders[i] = tulua.spawn(function()
          for j = 1, n / 4 do
            assert(a:send_to(i .. ":" .. j, "127.0.0.1", pb))
            if j % 10 == 0 then tulua.sleep(0) end
          end
        end)
      end
      for i = 1, 4 do
        senders[i]:join()
      end
      bounded(b, function() receiver:join() end)
      assert.are.equal(n, #got)
    end)

    it("send_to returns EAFNOSUPPORT for a destination of the other family", function()
      local a <close> = assert(udp.bind("127.0.0.1", 0))
      assert.are.same({nil, "[::1]:9: address family not supported", "EAFNOSUPPORT"}, {a:send_to("x", "::1", 9)})
    end)

    it("send_to returns EINVAL for port 0", function()
      local a <close> = assert(udp.bind("127.0.0.1", 0))
      assert.are.same({nil, "127.0.0.1:0: invalid argument", "EINVAL"}, {a:send_to("x", "127.0.0.1", 0)})
    end)

    it("send_to returns EACCES for a broadcast address without set_broadcast", function()
      local a <close> = assert(udp.bind("127.0.0.1", 0))
      assert.are.same({nil, "255.255.255.255:9: permission denied", "EACCES"},
        {a:send_to("x", "255.255.255.255", 9)})
    end)

    it("send_to raises on bad arguments", function()
      local a <close> = assert(udp.bind("127.0.0.1", 0))
      assert.has_error(function() a:send_to(nil, "127.0.0.1", 9) end,
        "bad argument #1 to 'send_to' (string expected, got nil)")
      assert.has_error(function() a:send_to("x", "localhost", 9) end,
        "bad argument #2 to 'send_to' (invalid IP address 'localhost')")
      assert.has_error(function() a:send_to("x", "127.0.0.1", 70000) end,
        "bad argument #3 to 'send_to' (port out of range)")
      assert.has_error(function() a.send_to("x", "127.0.0.1", 9) end,
        "bad argument #1 to 'send_to' (tulua.udp expected, got string)")
    end)

    it("recv_from raises on a bad size", function()
      local a <close> = assert(udp.bind("127.0.0.1", 0))
      assert.has_error(function() a:recv_from(0) end, "bad argument #1 to 'recv_from' (size must be positive)")
      assert.has_error(function() a:recv_from("all") end,
        "bad argument #1 to 'recv_from' (number expected, got string)")
    end)

    it("raise when called where no wait is possible", function()
      local a <close> = assert(udp.bind("127.0.0.1", 0))
      local suffix = "' inside a function called from C that cannot yield "
        .. "(such as a 'table.sort' comparator or a 'string.gsub' callback)"
      assert.has_error(function()
        table.sort({1, 2}, function()
          a:recv_from()
          return false
        end)
      end, "attempt to wait in 'udp.recv_from" .. suffix)
      assert.has_error(function()
        table.sort({1, 2}, function()
          a:send_to("x", "127.0.0.1", port_of(a))
          return false
        end)
      end, "attempt to wait in 'udp.send_to" .. suffix)
    end)
  end)

  describe("in a task that is cancelled while it waits in recv_from", function()
    it("ends the task with the cancellation error; the socket goes on working", function()
      local a, b, pa, pb = pair()
      local t = tulua.spawn(function() return b:recv_from() end)
      tulua.sleep(0)
      assert.are.equal("waiting", t:status())
      assert.is_true(t:cancel())
      local ok, err = pcall(t.join, t)
      assert.is_false(ok)
      assert.are.equal("ECANCELED", err.code)
      assert.is_true(t:cancelled())
      assert.is_true(a:send_to("after", "127.0.0.1", pb))
      assert.are.same({"after", "127.0.0.1", pa}, {bounded(b, function() return b:recv_from() end)})
    end)

    it("leaves the datagram to the next task in line", function()
      local a, b, _, pb = pair()
      local first = tulua.spawn(function() return b:recv_from() end)
      local second = tulua.spawn(function() return b:recv_from() end)
      tulua.sleep(0)
      assert.is_true(first:cancel())
      assert.is_false(pcall(first.join, first))
      assert.is_true(a:send_to("for second", "127.0.0.1", pb))
      assert.are.equal("for second", (bounded(b, function() return second:join() end)))
    end)
  end)

  describe("close", function()
    it("ends the waits of every task with 'udp socket closed'", function()
      local s = assert(udp.bind("127.0.0.1", 0))
      local t1 = tulua.spawn(function() return s:recv_from() end)
      local t2 = tulua.spawn(function() return s:recv_from(10) end)
      tulua.sleep(0)
      s:close()
      assert.are.same(CLOSED, {t1:join()})
      assert.are.same(CLOSED, {t2:join()})
    end)

    it("makes every other method raise; a second close does nothing", function()
      local s = assert(udp.bind("127.0.0.1", 0))
      s:close()
      s:close()
      assert.are.equal("udp socket (closed)", tostring(s))
      local msg = "attempt to use a closed udp socket"
      assert.has_error(function() s:send_to("x", "127.0.0.1", 9) end, msg)
      assert.has_error(function() s:recv_from() end, msg)
      assert.has_error(function() s:local_address() end, msg)
      assert.has_error(function() s:set_broadcast(true) end, msg)
      assert.has_error(function() s:set_multicast_loop(true) end, msg)
      assert.has_error(function() s:set_multicast_ttl(1) end, msg)
      assert.has_error(function() s:join_group("239.1.2.3") end, msg)
      assert.has_error(function() s:leave_group("239.1.2.3") end, msg)
    end)

    it("frees the port and the descriptor at once", function()
      local before = fd_count()
      local s = assert(udp.bind("127.0.0.1", 0))
      local port = port_of(s)
      assert.are.equal(before + 1, fd_count())
      s:close()
      assert.are.equal(before, fd_count())
      assert(udp.bind("127.0.0.1", port)):close()
    end)

    it("happens at the end of a <close> scope", function()
      local port, ref
      do
        local s <close> = assert(udp.bind("127.0.0.1", 0))
        port, ref = port_of(s), s
      end
      assert.are.equal("udp socket (closed)", tostring(ref))
      assert(udp.bind("127.0.0.1", port)):close()
    end)
  end)

  describe("garbage collection", function()
    it("closes a socket that was never closed", function()
      local before = fd_count()
      local weak = setmetatable({}, {__mode = "v"})
      weak[1] = assert(udp.bind("127.0.0.1", 0))
      local port = port_of(weak[1])
      collectgarbage("collect")
      collectgarbage("collect")
      assert.is_nil(weak[1])
      assert.are.equal(before, fd_count())
      assert(udp.bind("127.0.0.1", port)):close()
    end)

    it("keeps a socket while a task waits on it, and not after", function()
      local a <close> = assert(udp.bind("127.0.0.1", 0))
      local weak = setmetatable({}, {__mode = "v"})
      local port
      local t = tulua.spawn(function()
        local s = assert(udp.bind("127.0.0.1", 0))
        weak[1] = s
        port = port_of(s)
        return s:recv_from()
      end)
      tulua.sleep(0)
      collectgarbage("collect")
      collectgarbage("collect")
      assert.is_not_nil(weak[1])
      assert.is_true(a:send_to("kept", "127.0.0.1", port))
      local guard = timer.after(5, function() t:cancel() end)
      assert.are.equal("kept", (t:join()))
      guard:close()
      tulua.sleep(0) -- the anchor goes at the next turn of the loop
      collectgarbage("collect")
      collectgarbage("collect")
      assert.is_nil(weak[1])
    end)
  end)

  describe("options", function()
    it("set_broadcast, set_multicast_loop and set_multicast_ttl return true", function()
      local s <close> = assert(udp.bind("127.0.0.1", 0))
      assert.is_true(s:set_broadcast(true))
      assert.is_true(s:set_broadcast(false))
      assert.is_true(s:set_multicast_loop(false))
      assert.is_true(s:set_multicast_loop(true))
      assert.is_true(s:set_multicast_ttl(0))
      assert.is_true(s:set_multicast_ttl(255))
    end)

    it("raise on bad values", function()
      local s <close> = assert(udp.bind("127.0.0.1", 0))
      assert.has_error(function() s:set_broadcast(1) end,
        "bad argument #1 to 'set_broadcast' (boolean expected, got number)")
      assert.has_error(function() s:set_multicast_loop() end,
        "bad argument #1 to 'set_multicast_loop' (boolean expected, got no value)")
      assert.has_error(function() s:set_multicast_ttl(256) end,
        "bad argument #1 to 'set_multicast_ttl' (ttl out of range)")
      assert.has_error(function() s:set_multicast_ttl(-1) end,
        "bad argument #1 to 'set_multicast_ttl' (ttl out of range)")
    end)

    it("join_group and leave_group a multicast group on the loopback interface", function()
      local s <close> = assert(udp.bind("127.0.0.1", 0))
      assert.is_true(s:join_group("239.1.2.3", "127.0.0.1"))
      assert.are.same({nil, "239.1.2.3: address already in use", "EADDRINUSE"},
        {s:join_group("239.1.2.3", "127.0.0.1")})
      assert.is_true(s:leave_group("239.1.2.3", "127.0.0.1"))
      assert.are.same({nil, "239.1.2.3: address not available", "EADDRNOTAVAIL"},
        {s:leave_group("239.1.2.3", "127.0.0.1")})
    end)

    it("join_group fails for what is no group or no interface", function()
      local s <close> = assert(udp.bind("127.0.0.1", 0))
      assert.are.same({nil, "127.0.0.1: invalid argument", "EINVAL"}, {s:join_group("127.0.0.1")})
      assert.are.same({nil, "239.1.2.3: no such device", "ENODEV"}, {s:join_group("239.1.2.3", "203.0.113.1")})
      assert.are.same({nil, "ff02::1: protocol not available", "ENOPROTOOPT"}, {s:join_group("ff02::1")})
    end)

    it("join_group raises on a name", function()
      local s <close> = assert(udp.bind("127.0.0.1", 0))
      assert.has_error(function() s:join_group("all-hosts") end,
        "bad argument #1 to 'join_group' (invalid IP address 'all-hosts')")
      assert.has_error(function() s:leave_group("239.1.2.3", "lo") end,
        "bad argument #2 to 'leave_group' (invalid IP address 'lo')")
    end)
  end)

  describe("with a program written in Python", function()
    it("gets the reply of a python3 UDP echo server", function()
      local server = python(table.concat({
        "import socket",
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)",
        "s.bind((\"127.0.0.1\", 0))",
        "s.settimeout(10)",
        "print(s.getsockname()[1], flush=True)",
        "data, peer = s.recvfrom(65536)",
        "s.sendto(data.upper(), peer)",
      }, "\n"))
      local port = assert(tonumber(server:read("l")))
      local s <close> = assert(udp.bind("127.0.0.1", 0))
      assert.is_true(s:send_to("hello, python", "127.0.0.1", port))
      assert.are.same({"HELLO, PYTHON", "127.0.0.1", port}, {bounded(s, function() return s:recv_from() end)})
      assert.is_true(server:close())
    end)

    it("receives what a python3 client sent while nobody waited", function()
      local s <close> = assert(udp.bind("127.0.0.1", 0))
      local client = python(table.concat({
        "import socket, sys",
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)",
        "s.sendto(b\"from python\", (\"127.0.0.1\", int(sys.argv[1])))",
        "print(s.getsockname()[1], flush=True)",
      }, "\n"), port_of(s))
      local port = assert(tonumber(client:read("l")))
      assert.is_true(client:close())
      assert.are.same({"from python", "127.0.0.1", port}, {bounded(s, function() return s:recv_from() end)})
    end)
  end)
end)
