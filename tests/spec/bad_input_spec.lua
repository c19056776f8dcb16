-- Bad input, table-driven, for every public module: each function and
-- method of the tables below is called with wrong types, NaN, huge and
-- negative numbers, zero bytes in strings, a wrong self and (methods) a
-- closed object. A call must raise `bad argument #k to 'name'` for the
-- argument it got wrong, or return `nil, message, code`, or (for values of
-- the right type) work; never raise anything else (`attempt to index a nil
-- value` from inside a module), crash, or hang. ctest runs it under ASan
-- and UBSan, which turn a memory error into a failure. A new module adds
-- its rows to FUNCTIONS and, for its objects, to CLASSES (see
-- tests/README.md).

package.path = (debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or ".") .. "/?.lua;" .. package.path
local support = require("support")
local tulua = require("tulua")

local dir = assert(require("tulua.fs").mkdtemp(os.tmpname() .. "-bad-XXXXXX"))

-- The kinds of parameters: a valid value, used while another argument is
-- the bad one, and the bad values to try. A bad value of another Lua type
-- must raise `bad argument #k`; the others ("also") may also fail with
-- nil, message, code, or work. A kind ending in "?" is optional: nil is
-- valid there.
local NAN, HUGE = 0 / 0, math.huge
local function noop() end
local KINDS = {
  -- numbers are strings to Lua's luaL_checkstring
  path = {valid = function() return dir .. "/nope" end, types = {"string", "number"}, also = {"a\0b"}},
  str = {valid = function() return "x" end, types = {"string", "number"}, also = {"a\0b", ""}},
  int = {valid = function() return 1 end, types = {"number"}, also = {NAN, HUGE, -HUGE, -1, 0, 2 ^ 63, 1.5}},
  num = {valid = function() return 0.001 end, types = {"number"}, also = {NAN, -1, -HUGE, 0}},
  fn = {valid = function() return noop end, types = {"function"}, also = {}},
  tbl = {valid = function() return {} end, types = {"table"}, also = {{1, nil, 3}}},
  opts = {valid = function() return {} end, types = {"table"}, also = {{no_such_option = true}}},
  -- what transfer.encode refuses it refuses with the value's path (its page)
  value = {
    valid = function() return 1 end, types = {"nil", "number", "string", "table", "boolean", "function"}, also = {},
    raises = "^argument #1: cannot transfer a ",
  },
  blob = {valid = function() return require("tulua.transfer").encode(1) end, types = {"string", "number"},
    also = {"a\0b", ""}, raises = "^malformed transfer data"},
  flags = {valid = function() return "r" end, types = {"string"}, also = {"a\0b", "", "rw+x"}},
  mode = {
    valid = function() return 448 end, types = {"number", "table"}, also = {NAN, -1, HUGE, {mode = -1}, {bogus = 1}},
  },
  -- an awaitable: a function (run as a task), a Task or a Future
  aw = {valid = function() return tulua.spawn(noop) end, types = {"function", "thread", "table"}, also = {{}}},
  -- a flag: any value, by its truth (as Lua's own functions take them)
  bool = {valid = function() return true end, types = {"nil", "number", "string", "table", "boolean", "function",
    "userdata", "thread"}, also = {}},
}
-- One value of each Lua type, for the wrong-type tries.
local OF_TYPE = {
  ["nil"] = false, number = 42, string = "42x", table = {}, boolean = true, ["function"] = noop,
  userdata = io.stdout, thread = coroutine.create(noop),
}

-- Every public function: module, name, parameter kinds. Functions whose
-- valid call would disturb the run (tulua.park, process.kill of a real
-- process, tty.set_mode, the closing of stdout) are left out; their
-- modules' specs test them.
local FUNCTIONS = {
  {"tulua", "spawn", {"fn"}},
  {"tulua", "spawn_protected", {"fn"}},
  {"tulua", "sleep", {"num"}},
  {"tulua", "unpark", {"task"}},
  {"tulua", "new_error", {"str", "str"}},
  {"tulua.timer", "after", {"num", "fn"}},
  {"tulua.timer", "every", {"num", "fn"}},
  {"tulua.fs", "stat", {"path"}},
  {"tulua.fs", "lstat", {"path"}},
  {"tulua.fs", "rename", {"path", "path"}},
  {"tulua.fs", "unlink", {"path"}},
  {"tulua.fs", "mkdir", {"path", "mode?"}},
  {"tulua.fs", "rmdir", {"path"}},
  {"tulua.fs", "scandir", {"path"}},
  {"tulua.fs", "readdir", {"path"}},
  {"tulua.fs", "realpath", {"path"}},
  {"tulua.fs", "copyfile", {"path", "path", "opts?"}},
  {"tulua.fs", "symlink", {"path", "path"}},
  {"tulua.fs", "readlink", {"path"}},
  {"tulua.fs", "chmod", {"path", "int"}},
  {"tulua.fs", "utime", {"path", "num?", "num?"}},
  {"tulua.fs", "access", {"path", "str?"}},
  {"tulua.fs", "mkdtemp", {"path"}},
  {"tulua.fs", "read_file", {"path"}},
  {"tulua.fs", "write_file", {"path", "str", "opts?"}},
  {"tulua.fs", "lines", {"path"}},
  {"tulua.fs", "open", {"path", "flags?", "int?"}},
  {"tulua.fs", "watch", {"path", "opts?"}},
  {"tulua.net", "connect", {"host", "port", "opts?"}},
  {"tulua.net", "serve", {"host", "port", "fn", "opts?"}},
  {"tulua.net", "connect_unix", {"path", "opts?"}},
  {"tulua.net", "serve_unix", {"path", "fn", "opts?"}},
  {"tulua.dns", "getaddrinfo", {"host?", "port?", "opts?"}},
  {"tulua.dns", "getnameinfo", {"host", "port?"}},
  {"tulua.udp", "bind", {"host", "port", "opts?"}},
  {"tulua.udp", "new", {"str?"}},
  {"tulua.tty", "size", {"int?"}},
  {"tulua.tty", "is_terminal", {"int"}},
  {"tulua.process", "run", {"argv", "opts?"}},
  {"tulua.process", "spawn", {"argv", "opts?"}},
  {"tulua.process", "kill", {"pid", "sig?"}},
  {"tulua.process", "signal", {"sig"}},
  {"tulua.transfer", "encode", {"value"}},
  {"tulua.transfer", "decode", {"blob"}},
  {"concurrent.futures", "ThreadPoolExecutor", {"int?", "opts?"}},
  {"concurrent.futures", "ProcessPoolExecutor", {"int?", "opts?"}},
  {"concurrent.futures", "as_completed", {"futures", "num?"}},
  {"concurrent.futures", "wait", {"futures", "opts?"}},
  {"asyncio", "run", {"fn", "opts?"}},
  {"asyncio", "create_task", {"fn"}},
  {"asyncio", "sleep", {"num"}},
  {"asyncio", "ensure_future", {"aw"}},
  {"asyncio", "gather", {"aw"}},
  {"asyncio", "wait", {"futures", "opts?"}},
  {"asyncio", "as_completed", {"futures", "num?"}},
  {"asyncio", "wait_for", {"aw", "num?"}},
  {"asyncio", "shield", {"aw"}},
  {"asyncio", "timeout", {"num?"}},
  {"asyncio", "timeout_at", {"num?"}},
  {"asyncio", "Condition", {"lock?"}},
  {"asyncio", "Semaphore", {"int?"}},
  {"asyncio", "BoundedSemaphore", {"int?"}},
  {"asyncio", "Queue", {"int?"}},
  {"asyncio", "PriorityQueue", {"int?"}},
  {"asyncio", "LifoQueue", {"int?"}},
  {"asyncio", "wrap_future", {"aw"}},
  {"asyncio", "to_thread", {"fn"}},
  -- the options of the bounds on slow peers: wrong types, bad numbers, unknown keys
  {"tulua.tls", "context", {"tlsopts"}},
  {"tulua.http", "serve", {"host", "port", "fn", "serveopts?"}},
  {"tulua.http", "websocket", {"str", "wsopts?"}},
}

-- Kinds that need a live object or a place.
KINDS.host = {valid = function() return "127.0.0.1" end, types = {"string", "number"}, also = {"127.0.0.1\0evil", ""}}
KINDS.port = {valid = function() return 1 end, types = {"number", "string"}, also = {NAN, HUGE, -1, 65536, 1.5}}
KINDS.argv = {valid = function() return {"true"} end, types = {"table"}, also = {{}, {"tr\0ue"}, {1, 2}}}
-- a pid no process has: above the kernel's largest
KINDS.pid = {valid = function() return 4194305 end, types = {"number"}, also = {NAN, HUGE, -HUGE, 1.5}}
-- 38 is SIGRTMIN + 4, the thread pool's, which process.signal refuses
KINDS.sig = {
  valid = function() return "SIGWINCH" end, types = {"string", "number"}, also = {"SIGNOPE", 0, -1, 65, NAN, 38},
}
-- a Task is a thread; another thread is of the right type but not a task
KINDS.task = {valid = function() return tulua.spawn(noop) end, types = {"thread"}, also = {}}
KINDS.futures = {valid = function() return {} end, types = {"table"}, also = {{1, 2}, {{}}}}
KINDS.future = {
  valid = function() return require("concurrent.futures").Future() end, types = {"table", "userdata"}, also = {},
}
KINDS.lock = {valid = function() return require("asyncio").Lock() end, types = {"table"}, also = {{}}}
KINDS.tlsopts = {valid = function() return {verify = false} end, types = {"table"}, also = {
  {handshake_timeout = "1"}, {handshake_timeout = 0}, {handshake_timeout = -1}, {handshake_timeout = NAN},
  {handshake_timeout = false}, {handshake_timeout = HUGE}, {handshake_timout = 1},
  {server = true, cert = "a", key = "b", handshake_timeout = {}},
}}
KINDS.serveopts = {valid = function() return {} end, types = {"table"}, also = {
  {body_timeout = "1"}, {body_timeout = 0}, {body_timeout = -HUGE}, {body_timeout = NAN}, {bodytimeout = 1},
  {tls = {cert = "a", key = "b", handshake_timeout = -1}},
}}
KINDS.wsopts = {valid = function() return {} end, types = {"table"}, also = {
  {proxy = 1}, {proxy = true}, {proxy = "http://127.0.0.1:1"}, {timeout = 0}, {timeout = NAN}, {proxi = "x"},
}}
local names = {}
for name in pairs(KINDS) do names[#names + 1] = name end
for _, name in ipairs(names) do
  KINDS[name .. "?"] = setmetatable({optional = true}, {__index = KINDS[name]})
end

-- Runs caller(...) in a task of its own; returns "raised", err or "returned",
-- results (packed) or "waits" when it has not ended after 2 s (it is then
-- cancelled and given 2 s more).
local function try(caller, ...)
  local task = tulua.spawn(function(...) return table.pack(pcall(caller, ...)) end, ...)
  for _ = 1, 200 do
    if task:done() then break end
    tulua.sleep(0.01)
  end
  if not task:done() then
    task:cancel()
    pcall(task.join, task)
    return "waits"
  end
  local r = task:join()
  if not r[1] then return "raised", r[2] end
  return "returned", table.pack(table.unpack(r, 2, r.n))
end

-- Ends what a call that worked made (a server on the valid port, a timer
-- of every, a pool, a child): nothing may outlive its test.
local function release(r)
  for i = 1, r.n do
    local v = r[i]
    local t = type(v)
    if t == "userdata" or t == "table" or t == "thread" then
      for _, method in ipairs({"kill", "close", "shutdown", "cancel", "wait"}) do
        local ok, f = pcall(function() return v[method] end)
        if ok and type(f) == "function" then pcall(f, v) end
      end
    end
  end
end

-- What a bad call may do: raise bad argument #k to 'name', or fail with
-- nil, message, code, or (right type) work or wait (seconds).
local function judge(what, k, name, kind, right_type, outcome, r)
  local where = ("%s, argument #%d"):format(what, k)
  if outcome == "raised" then
    local msg = tostring(type(r) == "table" and r.message or r)
    local want = ("bad argument #%d to '%s'"):format(k, name)
    if not msg:find(want, 1, true) and not (right_type and msg:find("bad argument #%d+ to '" .. name .. "'"))
      and not (kind.raises and msg:find(kind.raises)) then
      return ("%s raised %q, not %q"):format(where, msg, want)
    end
  elseif not right_type then
    return ("%s: a value of the wrong type was %s"):format(where, outcome)
  elseif outcome == "returned" and r.n >= 1 and r[1] == nil and r.n ~= 3 and r.n ~= 1 then
    return ("%s returned nil with %d values, not nil, message, code"):format(where, r.n)
  end
  return nil
end

local function describe_value(v)
  if type(v) == "string" then return ("%q"):format(v) end
  if type(v) == "table" then return "a table" end
  return tostring(v)
end

-- Calls fn (made by make_caller) with each bad value at each position;
-- returns the list of what went wrong.
local function probe(what, name, kinds, call, first)
  local problems = {}
  local function args_with(k, v)
    local args = {}
    for i, kind in ipairs(kinds) do
      if i == k then args[i] = v else args[i] = KINDS[kind].valid() end
    end
    return args
  end
  for k, kindname in ipairs(kinds) do
    local kind = assert(KINDS[kindname], kindname)
    local right = {}
    for _, t in ipairs(kind.types) do right[t] = true end
    local tries = {}
    for t, v in pairs(OF_TYPE) do
      if not right[t] and not (t == "nil" and kind.optional) then tries[#tries + 1] = {v or nil, false} end
    end
    for _, v in ipairs(kind.also) do tries[#tries + 1] = {v, true} end
    for _, pair in ipairs(tries) do
      local v, right_type = pair[1], pair[2]
      local args = args_with(k, v)
      local outcome, r = try(call, table.unpack(args, 1, #kinds))
      if outcome == "returned" then release(r) end
      if outcome == "waits" and not (kindname:find("^num") and right_type) then
        problems[#problems + 1] = ("%s(%s at #%d) waits"):format(what, describe_value(v), k)
      else
        local bad = judge(what, k + (first or 0), name, kind, right_type, outcome, r)
        if bad then problems[#problems + 1] = bad .. " (value " .. describe_value(v) .. ")" end
      end
    end
  end
  return problems
end

-- Every public class: how to make one (in the spec's task), how to close
-- it (or nil), and its methods with their parameter kinds. Methods that
-- wait for something only a peer does (recv_from, wait, join) are tried
-- with wrong types only through their argument checks, before they wait.
local fs, net, udp = require("tulua.fs"), require("tulua.net"), require("tulua.udp")
local process, timer = require("tulua.process"), require("tulua.timer")
local futures, asyncio = require("concurrent.futures"), require("asyncio")

local echo_server -- a local server the stream rows connect to
local function echo_port()
  if not echo_server then
    echo_server = assert(net.serve("127.0.0.1", 0, function(conn)
      for line in conn:lines() do conn:write(line .. "\n") end
    end))
  end
  return select(2, echo_server:address())
end

local CLASSES = {
  {"File", function() return assert(fs.open(dir .. "/file", "w+")) end, "close", {
    {"read", {"int", "int?"}}, {"write", {"str", "int?"}}, {"seek", {"whence?", "int?"}},
    {"stat", {}}, {"sync", {"bool?"}}, {"truncate", {"int"}},
  }},
  {"Watcher", function() return assert(fs.watch(dir)) end, "close", {}},
  {"tcp stream", function() return assert(net.connect("127.0.0.1", echo_port())) end, "close", {
    {"read_exactly", {"int"}}, {"read_line", {"opts?"}}, {"lines", {"opts?"}},
    {"write", {"str"}}, {"set_nodelay", {"bool"}}, {"set_keepalive", {"bool", "num?"}},
    {"local_address", {}}, {"peer_address", {}}, {"is_closed", {}},
  }},
  {"Server", function() return assert(net.serve("127.0.0.1", 0, noop)) end, "close", {
    {"address", {}}, {"connections", {}}, {"refused", {}}, {"is_closed", {}},
  }},
  {"UDP socket", function() return assert(udp.bind("127.0.0.1", 0)) end, "close", {
    {"send_to", {"str", "host", "port"}}, {"set_broadcast", {"bool"}}, {"set_multicast_loop", {"bool"}},
    {"set_multicast_ttl", {"int"}}, {"join_group", {"group", "str?"}}, {"leave_group", {"group", "str?"}},
    {"local_address", {}},
  }},
  {"Timer", function() return timer.after(100, noop) end, "close", {{"stop", {}}, {"active", {}}}},
  {"Process", function() return assert(process.spawn({"sleep", "30"})) end, function(p)
    pcall(p.kill, p, "SIGKILL") -- raises once closed, where close does not
    pcall(p.wait, p)
    return p:close()
  end, {
    {"poll", {}}, {"kill", {"sig?", "opts?"}},
  }},
  {"Signal", function() return assert(process.signal("SIGWINCH")) end, "close", {}},
  {"Task", function() return tulua.spawn(tulua.sleep, 30) end, "cancel", {
    {"add_done_callback", {"fn"}}, {"remove_done_callback", {"fn"}}, {"set_name", {"item"}},
    {"get_name", {}}, {"done", {}}, {"status", {}},
  }},
  {"ThreadPoolExecutor", function() return futures.ThreadPoolExecutor(1) end, "shutdown", {
    {"submit", {"fn"}}, {"map", {"fn", "iterable"}}, {"max_workers", {}}, {"timeline", {}},
  }},
  {"concurrent Future", function() return futures.Future() end, "cancel", {
    {"add_done_callback", {"fn"}}, {"done", {}}, {"running", {}}, {"cancelled", {}},
  }},
  {"asyncio Lock", function() return asyncio.Lock() end, nil, {{"locked", {}}, {"release", {}}}},
  {"asyncio Event", function() return asyncio.Event() end, nil, {{"set", {}}, {"clear", {}}, {"is_set", {}}}},
  {"asyncio Queue", function() return asyncio.Queue(2) end, nil, {
    {"put_nowait", {"item"}}, {"get_nowait", {}}, {"qsize", {}}, {"empty", {}}, {"full", {}}, {"task_done", {}},
  }},
  {"asyncio Future", function() return asyncio.Future() end, "cancel", {
    {"set_result", {"item"}}, {"set_exception", {"item"}}, {"add_done_callback", {"fn"}},
    {"remove_done_callback", {"item"}}, {"done", {}}, {"cancelled", {}}, {"status", {}},
  }},
  -- entered where it is made: the spec's task, which a past deadline would
  -- cancel; so only deadlines far ahead, and NaN
  {"asyncio timeout", function() return asyncio.timeout(30) end, function(t) getmetatable(t).__close(t) end, {
    {"reschedule", {"when?"}}, {"when", {}}, {"expired", {}},
  }},
}
KINDS.whence = {valid = function() return "set" end, types = {"string"}, also = {"nowhere", "a\0b"}}
KINDS.group = {valid = function() return "239.1.2.3" end, types = {"string", "number"}, also = {"a\0b", "", "1.2.3.4"}}
KINDS.item = {valid = function() return 1 end, types = {"nil", "number", "string", "table", "boolean", "function",
  "userdata", "thread"}, also = {}}
KINDS.iterable = {valid = function() return {} end, types = {"table", "function"}, also = {}}
KINDS.when = {valid = function() return tulua.now() + 30 end, types = {"number"}, also = {NAN, HUGE}}
for _, name in ipairs({"whence", "group", "when"}) do
  KINDS[name .. "?"] = setmetatable({optional = true}, {__index = KINDS[name]})
end

-- Values that are no object of any class here, for the wrong-self tries.
local NOT_SELF = {{}, 42, "x", io.stdout, noop}

describe("bad input", function()
  teardown(function() support.remove_tree(dir) end)

  for _, row in ipairs(FUNCTIONS) do
    local modname, name, kinds = row[1], row[2], row[3]
    it(("%s.%s(%s)"):format(modname, name, table.concat(kinds, ", ")), function()
      local m = require(modname)
      assert.are.equal("function", type(m[name]), modname .. "." .. name)
      -- called as a field, so that messages name it as Lua's own do
      local call = assert(load("local m = ... return function(...) return m." .. name .. "(...) end"))(m)
      assert.are.same({}, probe(modname .. "." .. name, name, kinds, call))
    end)
  end

  for _, row in ipairs(CLASSES) do
    local class, make, close, methods = row[1], row[2], row[3], row[4]
    describe(class, function()
      local obj
      before_each(function() obj = make() end)
      local function close_it(o)
        if type(close) == "function" then return close(o) end
        return o[close](o)
      end
      after_each(function()
        if close then pcall(close_it, obj) end
      end)

      for _, m in ipairs(methods) do
        local name, kinds = m[1], m[2]
        it((":%s(%s) with bad arguments"):format(name, table.concat(kinds, ", ")), function()
          local call = assert(load("local o = ... return function(...) return o:" .. name .. "(...) end"))(obj)
          assert.are.same({}, probe(class .. ":" .. name, name, kinds, call))
        end)
      end

      it("refuses a wrong self in every method", function()
        local problems = {}
        for _, m in ipairs(methods) do
          local f = obj[m[1]]
          for _, other in ipairs(NOT_SELF) do
            local args = {other}
            for i, kind in ipairs(m[2]) do args[i + 1] = KINDS[kind].valid() end
            local outcome, r = try(f, table.unpack(args, 1, #m[2] + 1))
            if outcome == "returned" then release(r) end
            local msg = outcome == "raised" and tostring(type(r) == "table" and r.message or r) or outcome
            if not msg:find("bad argument #1 to", 1, true) and not msg:find("bad self", 1, true) then
              problems[#problems + 1] = ("%s with self %s: %s"):format(m[1], describe_value(other), msg)
            end
          end
        end
        assert.are.same({}, problems)
      end)

      if close then
        it("answers every method once closed: an error that says so, a failure, or a result", function()
          assert(pcall(close_it, obj))
          local problems = {}
          for _, m in ipairs(methods) do
            local args = {}
            for i, kind in ipairs(m[2]) do args[i] = KINDS[kind].valid() end
            local outcome, r = try(obj[m[1]], obj, table.unpack(args, 1, #m[2]))
            if outcome == "returned" then release(r) end
            if outcome == "raised" then
              local msg = tostring(type(r) == "table" and r.message or r)
              local says = false
              for _, word in ipairs({"closed", "shutdown", "cancel", "done", "ended", "^bad argument"}) do
                says = says or msg:find(word) ~= nil
              end
              if not says then
                problems[#problems + 1] = m[1] .. ": " .. msg
              end
            elseif outcome == "waits" then
              problems[#problems + 1] = m[1] .. " waits"
            end
          end
          -- a second close is harmless
          local ok, err2 = pcall(close_it, obj)
          if not ok then problems[#problems + 1] = "second close: " .. tostring(err2) end
          assert.are.same({}, problems)
        end)
      end
    end)
  end

  teardown(function()
    if echo_server then echo_server:close() end
  end)
end)
