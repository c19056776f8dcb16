-- tulua.trace, TULUA_TRACE, the SVG pictures and the debug threshold: each
-- trace is read back as a user's viewer would (python3's json must accept
-- it) and its events are checked one by one; each picture parses as XML
-- (xmllint), has its lanes and bars where the records say, and renders in
-- headless chromium.
package.path = (debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or ".") .. "/?.lua;" .. package.path
local support = require("support")
local tulua = require("tulua")
local trace = require("tulua.trace")
local timeline = require("concurrent.timeline")
local futures = require("concurrent.futures")

local q = support.shell_quote
local decode = trace._decode_json

local dir -- a temp directory for the files of this spec
setup(function()
  dir = os.tmpname()
  os.remove(dir)
  assert(os.execute("mkdir -p " .. q(dir)))
end)
teardown(function() os.execute("rm -rf " .. q(dir)) end)

-- Runs sh command line cmd; returns the exit status, stdout and stderr.
local function sh(cmd)
  local out, err = dir .. "/out", dir .. "/err"
  local _, _, status = os.execute(("%s > %s 2> %s"):format(cmd, q(out), q(err)))
  return status, support.read_file(out), support.read_file(err)
end

-- Reads the trace at path: python3's json must load it (as the viewers'
-- parsers), then ours gives it to the checks.
local function read_trace(path)
  local status, _, err = sh("python3 -c 'import json, sys; json.load(open(sys.argv[1]))' " .. q(path))
  assert.are.equal(0, status, err)
  return decode(support.read_file(path))
end

-- The events of t that match all the fields of want (args compared too).
local function find(t, want)
  local found = {}
  for _, e in ipairs(t.traceEvents) do
    local ok = true
    for k, v in pairs(want) do
      if k == "args" then
        for ak, av in pairs(v) do ok = ok and type(e.args) == "table" and e.args[ak] == av end
      else
        ok = ok and e[k] == v
      end
    end
    if ok then found[#found + 1] = e end
  end
  return found
end

-- The name a thread_name event gives the track pid/tid, or nil.
local function track_name(t, pid, tid)
  local m = find(t, {ph = "M", name = "thread_name", pid = pid, tid = tid})[1]
  return m and m.args.name
end

local function script(name, text)
  local path = dir .. "/" .. name
  support.write_file(path, text)
  return path
end

describe("TULUA_TRACE", function()
  local t, pid, port
  setup(function()
    local path = script("life.lua", [[
      local tulua = require "tulua"
      local futures = require "concurrent.futures"
      local ex <close> = futures.ThreadPoolExecutor(2)
      local jobs = {}
      for i = 1, 4 do jobs[i] = ex:submit(function(s) return s:rep(3) end, ("x"):rep(100)) end
      for _, f in ipairs(jobs) do f:result() end
      local t = tulua.spawn(function() tulua.sleep(0.02); error("boom") end)
      t:set_name("boomer")
      tulua.sleep(0.1)
      local net = require "tulua.net"
      local srv = assert(net.serve("127.0.0.1", 0, function(conn) tulua.sleep(0.05); conn:write("hi\n") end))
      local _, port = srv:address()
      local c = assert(net.connect("127.0.0.1", port))
      assert(c:read_line() == "hi")
      c:close()
      srv:close()
      assert(require("tulua.fs").read_file("/etc/hostname"))
      print("pid", io.open("/proc/self/stat"):read("n"), "port", port)
    ]])
    local status, out, err = sh(("TULUA_TRACE=%s %s %s"):format(q(dir .. "/life.json"), q(support.TULUA), q(path)))
    assert.are.equal(1, status) -- the uncaught error
    assert.matches("boom", err)
    pid = tonumber(out:match("pid\t(%d+)"))
    port = tonumber(out:match("port\t(%d+)"))
    t = read_trace(dir .. "/life.json")
  end)

  it("names the process and the loop's track", function()
    assert.are.equal("tulua " .. pid, find(t, {ph = "M", name = "process_name", pid = pid})[1].args.name)
    assert.are.equal("loop", track_name(t, pid, 1))
  end)

  it("records each task's spawn, with its parent, and the end of its life", function()
    local main = find(t, {ph = "b", cat = "task", name = "Task-1"})
    assert.are.equal(1, #main)
    assert.are.equal("0x0", main[1].args.parent)
    local child = find(t, {ph = "b", cat = "task", name = "Task-2"})
    assert.are.equal(1, #child)
    assert.are.equal(main[1].id, child[1].args.parent)
    assert.are.equal(1, #find(t, {ph = "e", cat = "task", id = main[1].id, args = {outcome = "returned"}}))
    assert.are.equal(1, #find(t, {ph = "e", cat = "task", id = child[1].id, args = {outcome = "failed"}}))
  end)

  it("draws each run step as a slice on the loop's track, named as the task is then", function()
    local steps = find(t, {ph = "X", cat = "step", name = "boomer", pid = pid, tid = 1})
    assert.are.equal(2, #steps) -- up to its sleep, then to its error
    assert.is_true(steps[2].ts >= steps[1].ts + steps[1].dur + 0.02 * 1e6)
  end)

  it("records each wait, from the end of a step to the start of the next", function()
    local id = find(t, {ph = "b", cat = "task", name = "Task-2"})[1].id
    local steps = find(t, {ph = "X", cat = "step", name = "boomer"})
    local b = find(t, {ph = "b", cat = "task", name = "sleep", id = id})
    local e = find(t, {ph = "e", cat = "task", name = "sleep", id = id})
    assert.are.equal(1, #b)
    assert.are.equal(1, #e)
    assert.are.equal("sleep", b[1].args.kind)
    assert.matches("^sleep 0%.0[12]%d s$", b[1].args.detail)
    assert.is_true(math.abs(b[1].ts - (steps[1].ts + steps[1].dur)) < 0.01)
    assert.are.equal(steps[2].ts, e[1].ts)
  end)

  it("says what each wait waits for: sleep, future, connect, socket read, file", function()
    local main = find(t, {ph = "b", cat = "task", name = "Task-1"})[1].id
    local function wait_of(kind)
      local b = find(t, {ph = "b", cat = "task", name = kind, id = main})
      assert.is_true(#b >= 1, kind)
      assert.are.equal(kind, b[1].args.kind)
      assert.are.equal(#b, #find(t, {ph = "e", cat = "task", name = kind, id = main}))
      return b[1].args.detail
    end
    assert.matches("^sleep 0%.%d%d%d s$", wait_of("sleep"))
    assert.matches("^result future #%d+", wait_of("result"))
    assert.are.equal("net.connect 127.0.0.1:" .. port, wait_of("net.connect"))
    assert.are.equal("read_line tcp 127.0.0.1:" .. port, wait_of("read_line"))
    assert.matches("^fs.read_file", wait_of("fs.read_file"))
  end)

  it("records an uncaught error with its message", function()
    local errs = find(t, {ph = "i", cat = "error", name = "uncaught error"})
    assert.are.equal(1, #errs)
    assert.matches("life.lua:7: boom", errs[1].args.message, 1, true)
  end)

  it("puts every thread-pool job on its worker's named track, with the bytes each way", function()
    local jobs = find(t, {ph = "X", cat = "job", pid = pid})
    assert.are.equal(4, #jobs)
    for _, j in ipairs(jobs) do
      assert.matches("^thread worker [12]$", track_name(t, pid, j.tid))
      assert.are.equal(track_name(t, pid, j.tid), j.args.worker)
      assert.are.equal("ok", j.args.status)
      assert.is_true(j.args.bytes_out > 100) -- the 100-byte argument
      assert.is_true(j.args.bytes_in > 300) -- its three copies
      local submit = find(t, {ph = "i", name = "submit", args = {job = j.args.job}})
      assert.are.equal(1, #submit)
      assert.are.equal(j.args.bytes_out, submit[1].args.bytes_out)
      assert.is_true(j.ts >= submit[1].ts) -- one clock for every thread
    end
  end)

  it("says that nothing was dropped", function()
    assert.are.equal(0, t.otherData.dropped_events)
    assert.are.equal(0, find(t, {ph = "M", name = "trace_stats"})[1].args.dropped)
  end)

  it("is not inherited by the processes tulua starts", function()
    local path = script("child.lua", [[
      print(os.getenv("TULUA_TRACE"))
    ]])
    local status, out = sh(("TULUA_TRACE=%s %s -e %s"):format(q(dir .. "/parent.json"), q(support.TULUA),
      q(("print(require('tulua.process').run({%q, %q}, {stdout = 'pipe'}))"):format(support.TULUA, path))))
    assert.are.equal(0, status)
    assert.matches("nil", out)
  end)

  it("that cannot be written stops tulua with a message", function()
    local status, _, err = sh(("TULUA_TRACE=%s %s -e 'print(1)'")
      :format(q(dir .. "/no/such/dir/t.json"), q(support.TULUA)))
    assert.are.equal(1, status)
    assert.matches("TULUA_TRACE: cannot write .*no/such/dir/t.json: no such file or directory", err)
  end)
end)

describe("tulua.trace", function()
  after_each(function() trace.stop() end) -- a failed spec leaves none on
  it("start and stop record what runs in between, and stop counts the events", function()
    local path = dir .. "/inproc.json"
    assert.is_true(trace.start(path))
    assert.is_true(trace.active())
    local child = tulua.spawn(function() tulua.sleep(0.01) end)
    child:set_name("in between")
    child:join()
    tulua.sleep(0) -- a step of this task that ends before stop: recorded
    local written, dropped = trace.stop()
    assert.is_false(trace.active())
    assert.is_true(written >= 3)
    assert.are.equal(0, dropped)
    local t = read_trace(path)
    assert.is_true(#find(t, {ph = "X", cat = "step", name = "in between"}) >= 2)
    -- a task spawned before start is named by start
    assert.is_true(#find(t, {ph = "X", cat = "step", name = tulua.current():get_name()}) >= 1)
  end)

  it("writes every record made before stop, however soon stop comes", function()
    -- The writer polls the owner's ring. A stop that came right after the
    -- last records once found the writer's pass just ended on an empty
    -- ring, and the writer left without them. That took a writer thread
    -- slow to start (a fresh process, a busy machine): here it lost the
    -- records in 5-15% of the traces, four processes at a time, so 40 such
    -- traces catch it nearly always. A sure test would need a hook in the
    -- writer.
    local soon = dir .. "/soon.lua"
    support.write_file(soon, [[
local tulua = require("tulua")
local trace = require("tulua.trace")
assert(trace.start(arg[1]))
local child = tulua.spawn(function() tulua.sleep(0) end)
child:set_name("kid")
child:join()
print(trace.stop())
]])
    local status, out, err = sh(("for i in 1 2 3 4 5 6 7 8 9 10; do for j in 1 2 3 4; do %s %s %s/soon-$j.json & "
      .. "done; wait; done"):format(q(support.TULUA), q(soon), q(dir)))
    assert.are.same({0, ""}, {status, err})
    local runs = 0
    for written, dropped in out:gmatch("(%d+)\t(%d+)\n") do
      runs = runs + 1
      -- two names, the spawn, the child's two steps, its end; a slow
      -- collector step more
      assert.are.same({true, "0"}, {tonumber(written) >= 6, dropped}, "trace " .. runs .. ": " .. written)
    end
    assert.are.equal(40, runs)
  end)

  it("escapes names as JSON wants them, and writes times with their nanoseconds", function()
    local path = dir .. "/escapes.json"
    assert.is_true(trace.start(path))
    -- a quote, a backslash, a control character, UTF-8, and a byte that
    -- starts no UTF-8 sequence (a name cut inside a character)
    local name = 'q"b\\s\1\195\169\255x'
    local child = tulua.spawn(function() tulua.sleep(0) end)
    child:set_name(name)
    child:join()
    assert(trace.stop())
    local text = support.read_file(path)
    assert.truthy(text:find('"name":"q\\"b\\\\s\\u0001\195\169\\ufffdx"', 1, true))
    assert.matches('"ts":%d+%.%d%d%d,"dur":%d+%.%d%d%d,"args":{"task":"0x%x+"}', text)
    local t = read_trace(path)
    local steps = find(t, {ph = "X", cat = "step", name = 'q"b\\s\1\195\169\239\191\189x'})
    assert.are.equal(2, #steps)
    assert.is_true(steps[2].ts >= steps[1].ts + steps[1].dur)
  end)

  it("records the end of each collection cycle with the heap, and no more after stop", function()
    local path = dir .. "/gc.json"
    assert.is_true(trace.start(path))
    local junk = {}
    for i = 1, 3 do
      for j = 1, 20000 do junk[j] = {i, j} end
      collectgarbage("collect")
    end
    local kib = collectgarbage("count")
    assert.are.equal(20000, #junk)
    tulua.sleep(0) -- the cycles' records are posted: a turn of the loop
    trace.stop()
    collectgarbage("collect") -- after stop: not in the file
    local t = read_trace(path)
    local cycles, n = find(t, {ph = "i", cat = "gc", name = "gc cycle"}), 0
    assert.is_true(#cycles >= 1)
    for _, e in ipairs(cycles) do
      assert.is_true(e.args.kib > 0 and e.args.kib < kib * 4, e.args.kib)
      n = n + e.args.cycles
    end
    assert.is_true(n >= 3, n)
    for k = 2, #cycles do assert.is_true(cycles[k].ts >= cycles[k - 1].ts) end
  end)

  it("drops what a small ring cannot hold, and says how many", function()
    local path = dir .. "/small.json"
    assert.is_true(trace.start(path, {max_events = 16}))
    -- many steps in one turn of the loop: the writer cannot keep up
    local tasks = {}
    for i = 1, 200 do tasks[i] = tulua.spawn(function() end) end
    for _, task in ipairs(tasks) do task:join() end
    local written, dropped = trace.stop()
    assert.is_true(dropped > 0)
    local t = read_trace(path)
    assert.are.equal(dropped, t.otherData.dropped_events)
    assert.are.equal(16, t.otherData.max_events)
    assert.are.equal(written, find(t, {ph = "M", name = "trace_stats"})[1].args.records)
  end)

  it("puts process-pool jobs on the worker process's own track, on the loop's clock", function()
    local path = dir .. "/procs.json"
    assert.is_true(trace.start(path))
    local before = tulua.now()
    local pids = {}
    do
      local ex <close> = futures.ProcessPoolExecutor(2)
      local fs = {}
      for i = 1, 4 do
        fs[i] = ex:submit(function(n)
          local p = io.open("/proc/self/stat"):read("n")
          local s = 0
          for k = 1, n do s = s + k end
          return p, s
        end, 10 ^ 5 + i)
      end
      for _, f in ipairs(fs) do pids[f:result()] = true end
    end
    local after = tulua.now()
    assert(trace.stop())
    local t = read_trace(path)
    local jobs = find(t, {ph = "X", cat = "job"})
    assert.are.equal(4, #jobs)
    for _, j in ipairs(jobs) do
      assert.is_true(pids[j.pid], "a job on the track of a worker's PID")
      assert.are.equal(j.pid, j.tid)
      assert.are.equal("process " .. j.pid, track_name(t, j.pid, j.tid))
      assert.are.equal("process " .. j.pid, find(t, {ph = "M", name = "process_name", pid = j.pid})[1].args.name)
      assert.is_true(j.args.bytes_out > 0 and j.args.bytes_in > 0)
      -- the worker's clock is the loop's: its job lies inside the submit
      -- and the result as the loop saw them (tulua.now is uv_hrtime too)
      local submit = find(t, {ph = "i", name = "submit", args = {job = j.args.job}})[1]
      assert.is_true(j.ts >= submit.ts)
      assert.is_true(j.ts / 1e6 >= before and (j.ts + j.dur) / 1e6 <= after)
    end
  end)

  it("refuses a second trace and a stop with none, with nil, message, code", function()
    local path = dir .. "/busy.json"
    assert.is_true(trace.start(path))
    local ok, msg, code = trace.start(dir .. "/other.json")
    assert.is_nil(ok)
    assert.are.equal("a trace is on already", msg)
    assert.are.equal("EBUSY", code)
    assert(trace.stop())
    ok, msg, code = trace.stop()
    assert.is_nil(ok)
    assert.are.equal("no trace was started here", msg)
    assert.are.equal("EINVAL", code)
    ok, msg, code = trace.start(dir .. "/no/such/t.json")
    assert.is_nil(ok)
    assert.matches("no such file or directory", msg)
    assert.are.equal("ENOENT", code)
  end)

  it("raises for arguments of the wrong type, unknown options and out-of-range sizes", function()
    assert.has_error(function() trace.start(1) end, "bad argument #1 to 'start' (string expected, got number)")
    assert.has_error(function() trace.start("x", 5) end, "bad argument #2 to 'start' (table expected, got number)")
    assert.has_error(function() trace.start("x", {max_event = 5}) end,
      "bad argument #2 to 'start' (unknown option 'max_event')")
    for _, bad in ipairs({15, 1 << 25, 100.5, "100"}) do
      assert.has_error(function() trace.start("x", {max_events = bad}) end,
        "bad argument #2 to 'start' (field 'max_events' must be an integer from 16 to 16777216)")
    end
    assert.has_error(function() trace.svg("x", 2) end, "bad argument #2 to 'svg' (string expected, got number)")
    assert.has_error(function() trace.svg("x", "y", {colour = 1}) end,
      "bad argument #3 to 'svg' (unknown option 'colour')")
  end)

  it("svg refuses a file that is no trace, with nil, message, code", function()
    support.write_file(dir .. "/bad.json", "{\"traceEvents\": [1, 2")
    local ok, msg, code = trace.svg(dir .. "/bad.json", dir .. "/bad.svg")
    assert.is_nil(ok)
    assert.matches("bad.json: not JSON: offset %d+", msg)
    assert.are.equal("EINVAL", code)
    support.write_file(dir .. "/other.json", "[1, 2]")
    ok, msg, code = trace.svg(dir .. "/other.json", dir .. "/bad.svg")
    assert.is_nil(ok)
    assert.matches("not a trace", msg)
    assert.are.equal("EINVAL", code)
    ok, msg, code = trace.svg(dir .. "/none.json", dir .. "/bad.svg")
    assert.is_nil(ok)
    assert.matches("none.json: No such file", msg)
    assert.are.equal(2, code) -- io.open's errno
  end)

  it("reads JSON as the viewers do", function()
    assert.are.same({a = {1, 2.5, "x\"y\n\u{e9}"}, b = true, c = false},
      decode('{"a": [1, 2.5, "x\\"y\\n\\u00e9"], "b": true, "c": false, "d": null}'))
    assert.has_error(function() decode("[1,") end)
    assert.has_error(function() decode("{} x") end)
  end)
end)

-- ---- the pictures ----

-- Asks xmllint for the value of an XPath expression over the SVG at path
-- (local-name(): the SVG namespace needs no prefix).
local function xpath(path, expr)
  local status, out, err = sh(("xmllint --xpath %s %s"):format(q(expr), q(path)))
  assert.are.equal(0, status, err)
  return (out:gsub("\n$", ""))
end

-- Checks the SVG at path as a user would see it: it parses, has one lane
-- per name in lanes and one bar per record, each where its times say.
local function check_picture(path, records, lanes)
  local status, _, err = sh("xmllint --noout " .. q(path))
  assert.are.equal(0, status, err)
  assert.are.equal(tostring(#lanes), xpath(path, "count(//*[local-name()='g'][@class='lane'])"))
  for i, name in ipairs(lanes) do
    local lane = ("//*[local-name()='g'][@data-worker='%d']"):format(i)
    assert.are.equal(name, xpath(path, "string(" .. lane .. "/*[local-name()='text'])"))
  end
  assert.are.equal(tostring(#records), xpath(path, "count(//*[local-name()='g'][@class='job'])"))
  local x0 = tonumber(xpath(path, "string(/*/@data-x0)"))
  local scale = tonumber(xpath(path, "string(/*/@data-px-per-s)"))
  local lane_y = {}
  for i = 1, #lanes do
    local lane = ("//*[local-name()='g'][@data-worker='%d']"):format(i)
    lane_y[i] = tonumber(xpath(path, "string(" .. lane .. "/*[local-name()='rect']/@y)"))
  end
  for _, r in ipairs(records) do
    local bar = ("//*[local-name()='g'][@class='job'][@data-index='%d']/*[local-name()='rect']"):format(r.index)
    local x = tonumber(xpath(path, "string(" .. bar .. "/@x)"))
    local y = tonumber(xpath(path, "string(" .. bar .. "/@y)"))
    local w = tonumber(xpath(path, "string(" .. bar .. "/@width)"))
    assert.is_true(math.abs(x - (x0 + r.start * scale)) < 0.02, "bar of job " .. r.index .. " starts at its start")
    assert.is_true(math.abs(x + w - (x0 + r.finish * scale)) < 0.05 or w == 1, "and ends at its finish")
    assert.is_true(y > lane_y[r.worker] and y < lane_y[r.worker] + 26, "in its worker's lane")
  end
end

-- Renders the SVG at path with headless chromium, as a browser shows it:
-- the PNG must be there, a real PNG, within a minute.
local function check_renders(path)
  local png = path:gsub("%.svg$", ".png")
  local status, _, err = sh(("timeout 60 chromium --headless --no-sandbox --disable-gpu --hide-scrollbars"
    .. " --window-size=800,300 --screenshot=%s file://%s"):format(q(png), q(path)))
  assert.are.equal(0, status, err)
  local data = support.read_file(png)
  assert.are.equal("\137PNG\r\n\26\n", data:sub(1, 8))
  assert.is_true(#data > 1000)
end

describe("slow collector steps", function()
  -- The events of cat "gc" and phase "X" of trace t.
  local function gc_slices(t) return find(t, {ph = "X", cat = "gc"}) end

  -- Runs the script at path under lua5.4, then under tulua with a trace
  -- on: both must succeed and print the same; returns what they print.
  local function as_lua54(path)
    local status, want, err = sh(("lua5.4 %s"):format(q(path)))
    assert.are.equal(0, status, err)
    local got
    status, got, err = sh(("TULUA_TRACE=%s %s %s"):format(q(path .. ".json"), q(support.TULUA), q(path)))
    assert.are.equal(0, status, err)
    assert.are.equal(want, got)
    return got
  end

  it("are slices on the loop's track with the heap before and after, at least gc_slow long", function()
    -- a big heap built, dropped, and allocation going on: the collection
    -- that frees it takes milliseconds
    local path = script("big.lua", [[
      local t = {}
      for i = 1, 300000 do t[i] = {i} end
      t = nil
      for i = 1, 600000 do local x = {i} end
      print("pid", io.open("/proc/self/stat"):read("n"))
    ]])
    local status, out, err = sh(("TULUA_TRACE=%s %s %s"):format(q(dir .. "/big.json"), q(support.TULUA), q(path)))
    assert.are.equal(0, status, err)
    local pid = tonumber(out:match("pid\t(%d+)"))
    local t = read_trace(dir .. "/big.json")
    local slices, freed = gc_slices(t), nil
    assert.is_true(#slices >= 1)
    for _, e in ipairs(slices) do
      assert.are.equal("gc step", e.name)
      assert.are.equal(pid, e.pid)
      assert.are.equal(1, e.tid)
      assert.is_true(e.dur >= 1000, e.dur) -- the default threshold: 1 ms
      assert.is_true(e.args.kib_before > 0 and e.args.kib_after > 0)
      if e.args.kib_before > 20000 and e.args.kib_after < 1000 then freed = e end
    end
    assert.is_not_nil(freed, "the step that freed the dropped heap")
    -- it ran inside the main task's step, where the allocation was
    local inside = false
    for _, step in ipairs(find(t, {ph = "X", cat = "step", tid = 1})) do
      inside = inside or (step.ts <= freed.ts and freed.ts + freed.dur <= step.ts + step.dur + 1)
    end
    assert.is_true(inside)
  end)

  it("records steps as short as gc_slow says, and explicit collections", function()
    local path = dir .. "/slow0.json"
    assert.is_true(trace.start(path, {gc_slow = 0}))
    do
      local junk = {}
      for j = 1, 50000 do junk[j] = {j} end
      assert.are.equal(50000, #junk)
    end -- dropped
    collectgarbage("collect")
    collectgarbage("step", 100)
    trace.stop()
    collectgarbage("collect")
    local t = read_trace(path)
    local steps, named = 0, {}
    for _, e in ipairs(gc_slices(t)) do
      named[e.name] = true
      if e.name == "gc step" then steps = steps + 1 end
      assert.is_true(e.dur >= 0)
    end
    assert.is_true(steps >= 3, steps) -- the loop's: a check every 16 KiB at most
    assert.is_true(named["collectgarbage collect"])
    assert.is_true(named["collectgarbage step"])
  end)

  it("leave collectgarbage as lua5.4 has it: isrunning, stop, restart, count, step, modes, errors", function()
    local path = script("gcapi.lua", [[
      local function kib() return collectgarbage("count") end
      print(collectgarbage("isrunning"))
      print(collectgarbage("stop"), collectgarbage("isrunning"))
      local k0 = kib()
      local keep = {}
      for i = 1, 100000 do keep[i % 10] = {i} end -- garbage, not collected
      print("grew while stopped", kib() - k0 > 3000)
      print(math.type(collectgarbage("count")), collectgarbage("restart"), collectgarbage("isrunning"))
      print(type(collectgarbage("step")), type(collectgarbage("step", 10)))
      print(collectgarbage("incremental"), collectgarbage("generational"), collectgarbage("generational"))
      print(collectgarbage("incremental", 200, 100, 13), collectgarbage("incremental"))
      print(collectgarbage(), collectgarbage("collect"))
      local max = 0
      for i = 1, 300000 do keep[i % 10] = {i}; if i % 1000 == 0 and kib() > max then max = kib() end end
      print("bounded", max < 2048)
      print(pcall(collectgarbage, "bogus"))
      print(pcall(collectgarbage, "step", "x"))
      print(pcall(collectgarbage, "incremental", 1, {}))
      print(pcall(collectgarbage, {}))
    ]])
    assert.matches("grew while stopped\ttrue", as_lua54(path))
  end)

  -- A pool job: builds a heap of n tables, drops it and goes on
  -- allocating (a slow collection), and returns its process's PID and its last table's number.
  local function churn(n)
    do
      local t = {}
      for i = 1, n do t[i] = {i} end
      assert(#t == n)
    end -- dropped
    local x
    for i = 1, 2 * n do x = {i} end
    return io.open("/proc/self/stat"):read("n"), x[1]
  end

  it("go on a thread worker's track when its job's collection is slow", function()
    local path = dir .. "/workers.json"
    assert.is_true(trace.start(path, {gc_slow = 0.0005}))
    do
      local ex <close> = futures.ThreadPoolExecutor(1)
      assert.are.equal(400000, select(2, ex:submit(churn, 200000):result()))
    end
    assert(trace.stop())
    local t = read_trace(path)
    local on_worker = 0
    for _, e in ipairs(gc_slices(t)) do
      -- "thread worker 1", or "pool <n> worker 1" after other pools
      if (track_name(t, e.pid, e.tid) or ""):match(" worker 1$") then
        on_worker = on_worker + 1
        assert.is_true(e.dur >= 500, e.dur)
      end
    end
    assert.is_true(on_worker >= 1)
  end)

  it("go on a process worker's track, inside its job's slice, when its job's collection is slow", function()
    local path = dir .. "/procgc.json"
    assert.is_true(trace.start(path, {gc_slow = 0.0005}))
    local pid
    do
      local ex <close> = futures.ProcessPoolExecutor(1)
      pid = ex:submit(churn, 200000):result()
    end
    assert(trace.stop())
    local t = read_trace(path)
    local job = find(t, {ph = "X", cat = "job", pid = pid})
    assert.are.equal(1, #job)
    job = job[1]
    local mine, inside, freed = 0, 0, false
    for _, e in ipairs(gc_slices(t)) do
      if e.pid == pid then
        mine = mine + 1
        assert.are.equal(pid, e.tid)
        assert.are.equal("process " .. pid, track_name(t, e.pid, e.tid))
        assert.are.equal("gc step", e.name)
        assert.is_true(e.dur >= 500, e.dur) -- gc_slow reached the worker
        assert.is_true(e.args.kib_before > 0 and e.args.kib_after > 0)
        -- the worker's clock is the loop's: its steps lie in its job
        if e.ts >= job.ts and e.ts + e.dur <= job.ts + job.dur + 1 then inside = inside + 1 end
        freed = freed or (e.args.kib_before > 20000 and e.args.kib_after < 2000)
      end
    end
    assert.is_true(mine >= 1)
    assert.is_true(inside >= 1)
    assert.is_true(freed, "the step that freed the dropped heap")
  end)

  it("stay out of a process worker's jobs when no trace is on, and come back with the next trace", function()
    local ex <close> = futures.ProcessPoolExecutor(1)
    local pid = ex:submit(churn, 200000):result() -- untraced: no steps kept
    local path = dir .. "/procgc2.json"
    assert.is_true(trace.start(path, {gc_slow = 0}))
    assert.are.equal(pid, ex:submit(churn, 100000):result())
    assert(trace.stop())
    local t = read_trace(path)
    local job = find(t, {ph = "X", cat = "job", pid = pid})[1]
    local steps = 0
    for _, e in ipairs(gc_slices(t)) do
      if e.pid == pid then
        steps = steps + 1
        assert.is_true(e.ts >= job.ts, "no step from before the trace")
      end
    end
    assert.is_true(steps >= 3, steps) -- gc_slow 0: every step of the job
  end)

  it("leave a user's line and call hooks their events, as lua5.4 gives them", function()
    local path = script("hooks.lua", [[
      local seen = {}
      local function f(n)
        local t = {}
        for i = 1, n do
          t[i] = {i}
        end
        return #t
      end
      debug.sethook(function(ev, line) seen[#seen + 1] = ev .. (line or "") end, "lcr")
      f(100000)
      local h, mask = debug.gethook()
      debug.sethook()
      print(#seen, type(h), mask, table.concat(seen, " ", 1, 20), table.concat(seen, " ", #seen - 40))
      -- the same event list whole: its hash
      local sum = 0
      for i, e in ipairs(seen) do sum = (sum * 31 + #e + i) % 1000000007 end
      print(sum)
    ]])
    as_lua54(path)
  end)

  it("take their threshold from TULUA_TRACE_GC_SLOW, and stop tulua for one that is no number", function()
    local path = script("slowenv.lua", [[
      do
        local junk = {}
        for j = 1, 50000 do junk[j] = {j} end
        assert(#junk == 50000)
      end
      collectgarbage("collect")
    ]])
    local function run(value)
      local json = dir .. "/slowenv.json"
      os.remove(json)
      local status, _, err = sh(("TULUA_TRACE=%s TULUA_TRACE_GC_SLOW=%s %s %s")
        :format(q(json), q(value), q(support.TULUA), q(path)))
      return status, err, status == 0 and gc_slices(read_trace(json))
    end
    local status, err, all = run("0") -- every step: many, however short
    assert.are.equal(0, status, err)
    local steps = 0
    for _, e in ipairs(all) do if e.name == "gc step" then steps = steps + 1 end end
    assert.is_true(steps >= 3, steps)
    local none
    status, err, none = run("1000") -- nothing takes that long
    assert.are.equal(0, status, err)
    assert.are.equal(0, #none)
    for _, bad in ipairs({"-1", "86401", "nan", "fast", "0.1s"}) do
      status, err = run(bad)
      assert.are.equal(1, status)
      assert.matches("TULUA_TRACE_GC_SLOW must be a number of seconds from 0 to 86400", err, 1, true)
    end
  end)

  it("refuses a gc_slow that is no number of seconds from 0 to a day", function()
    for _, bad in ipairs({-1, 86401, 0 / 0, "0.1", true}) do
      assert.has_error(function() trace.start("x", {gc_slow = bad}) end,
        "bad argument #2 to 'start' (field 'gc_slow' must be a number from 0 to 86400)")
    end
  end)

  it("keep memory bounded in a loop that never yields, and in a C call that makes many objects", function()
    local path = script("bounded.lua", [[
      local max = 0
      for i = 1, 2000000 do
        local x = {i}
        if i % 1000 == 0 then max = math.max(max, collectgarbage("count")) end
      end
      print("loop", max)
      -- one call of string.gsub makes 10^6 strings without a Lua
      -- instruction between: Lua's own step comes past the margin
      local text = {}
      for i = 1, 1000000 do text[i] = i end
      text = table.concat(text, " ")
      collectgarbage()
      local before = collectgarbage("count")
      text:gsub("%d+", {})
      print("call", collectgarbage("count") - before, before)
      collectgarbage("stop") -- what it makes with no collection at all
      text:gsub("%d+", {})
      print("stopped", collectgarbage("count") - before)
    ]])
    local plain = {}
    local status, out, err = sh(("%s %s"):format(q(support.TULUA), q(path)))
    assert.are.equal(0, status, err)
    plain.loop, plain.call = tonumber(out:match("loop\t(%S+)")), tonumber(out:match("call\t(%S+)"))
    status, out, err = sh(("TULUA_TRACE=%s %s %s"):format(q(dir .. "/bounded.json"), q(support.TULUA), q(path)))
    assert.are.equal(0, status, err)
    local loop, call = tonumber(out:match("loop\t(%S+)")), tonumber(out:match("call\t(%S+)"))
    local before, stopped = tonumber(out:match("call\t%S+\t(%S+)")), tonumber(out:match("stopped\t(%S+)"))
    -- the loop's heap stays as small as without a trace (a check every
    -- 16 KiB); the call's garbage stays under the margin (1 MiB or the
    -- heap, here 7 MiB), far from what it makes uncollected (38 MiB)
    assert.is_true(loop < plain.loop + 1024, ("%s vs %s"):format(loop, plain.loop))
    assert.is_true(stopped > 4 * before, stopped)
    assert.is_true(call < before + 2048, ("%s, heap %s"):format(call, before))
  end)
end)

describe("the SVG pictures", function()
  it("timeline.svg draws a lane per worker and a bar per job where its times say", function()
    local records = {
      {index = 1, worker = 1, start = 0, finish = 0.5, name = "thread0"},
      {index = 2, worker = 2, start = 0.1, finish = 0.9, status = "failed"},
      {index = 3, worker = 1, start = 0.6, finish = 0.7, status = "cancelled"},
      {index = 4, worker = 3, start = 0.2, finish = 0.2},
    }
    local path = dir .. "/made_up.svg"
    support.write_file(path, timeline.svg(records, {title = "jobs <&>"}))
    check_picture(path, records, {"worker 1", "worker 2", "worker 3"})
    assert.are.equal("jobs <&>", xpath(path, "string(//*[local-name()='text'][@class='title'])"))
    assert.are.equal("1 thread0: 0.000 to 0.500 s",
      xpath(path, "string(//*[local-name()='g'][@data-index='1']//*[local-name()='title'])"))
    assert.are.equal("#d62728",
      xpath(path, "string(//*[local-name()='g'][@data-index='2']/*[local-name()='rect']/@fill)"))
    check_renders(path)
  end)

  it("executor:timeline{format = 'svg'} draws a real pool's jobs, idle workers too", function()
    local ex <close> = futures.ThreadPoolExecutor(3)
    local fs = {}
    for i = 1, 2 do fs[i] = ex:submit(function() return i end) end
    for _, f in ipairs(fs) do f:result() end
    local path = dir .. "/pool.svg"
    support.write_file(path, ex:timeline({format = "svg", width = 600}))
    local records = ex:timeline()
    check_picture(path, records, {"worker 1", "worker 2", "worker 3"})
    assert.are.equal(ex:timeline({format = "text"}), timeline.render(records, {workers = 3}))
    assert.has_error(function() ex:timeline({format = "png"}) end,
      "bad argument #2 to 'timeline' (field 'format' must be \"svg\" or \"text\")")
  end)

  it("tulua.trace.svg draws a trace file's jobs, one lane per worker track", function()
    local json, svg = dir .. "/pool.json", dir .. "/trace.svg"
    local status, _, err = sh(("TULUA_TRACE=%s %s -e %s"):format(q(json), q(support.TULUA), q([[
      local futures = require "concurrent.futures"
      local ex <close> = futures.ThreadPoolExecutor(2)
      local fs = {}
      for i = 1, 6 do fs[i] = ex:submit(function() local s = 0 for k = 1, 10^5 do s = s + k end return s end) end
      for _, f in ipairs(fs) do f:result() end
    ]])))
    assert.are.equal(0, status, err)
    status, _, err = sh(("%s -l trace=tulua.trace -e %s"):format(q(support.TULUA),
      q(("assert(trace.svg(%q, %q))"):format(json, svg))))
    assert.are.equal(0, status, err)
    local records, lanes = trace.jobs(decode(support.read_file(json)))
    assert.are.equal(6, #records)
    assert.is_true(#lanes >= 1 and #lanes <= 2)
    -- a loaded machine may leave one worker without a job: lanes are the
    -- tracks that ran some, in order
    local names = table.concat(lanes, ",")
    assert.is_true(names == "thread worker 1,thread worker 2" or names == "thread worker 1"
      or names == "thread worker 2", names)
    check_picture(svg, records, lanes)
    check_renders(svg)
  end)

  it("timeline.svg raises for options of the wrong shape", function()
    assert.has_error(function() timeline.svg({}, {width = 10}) end,
      "bad argument #2 to 'svg' (field 'width' must be an integer from 200 to 10000)")
    assert.has_error(function() timeline.svg({}, {size = 10}) end, "bad argument #2 to 'svg' (unknown option 'size')")
    assert.has_error(function() timeline.svg({{worker = 0, start = 0}}) end,
      "bad argument #1 to 'svg' (record 1: field 'worker' must be a positive integer)")
    assert.has_error(function() timeline.svg({}, {lanes = {1}}) end,
      "bad argument #2 to 'svg' (field 'lanes': item 1 must be a string)")
  end)
end)

describe("the debug threshold", function()
  after_each(function() tulua.set_debug(false) end)

  it("set_debug{slow = s} turns debug mode on with that threshold", function()
    tulua.set_debug({slow = 0.05})
    assert.is_true(tulua.get_debug())
    assert.are.equal(0.05, tulua.get_debug("slow"))
    tulua.set_debug(false)
    assert.is_false(tulua.get_debug())
    assert.are.equal(0.05, tulua.get_debug("slow")) -- kept for the next time
  end)

  it("refuses unknown keys and thresholds that are no positive number of seconds", function()
    assert.has_error(function() tulua.set_debug({slwo = 1}) end,
      "bad argument #1 to 'set_debug' (unknown option 'slwo')")
    for _, bad in ipairs({0, -1, 0 / 0, math.huge, 86401, "0.1"}) do
      assert.has_error(function() tulua.set_debug({slow = bad}) end,
        "bad argument #1 to 'set_debug' (field 'slow' must be a number of seconds above 0 and at most 86400)")
    end
    assert.has_error(function() tulua.set_debug(1) end,
      "bad argument #1 to 'set_debug' (boolean or table expected, got number)")
    assert.has_error(function() tulua.get_debug("fast") end, "bad argument #1 to 'get_debug' (invalid option 'fast')")
  end)

  -- A step of 70 ms at least: reported under a 50 ms threshold, not under
  -- one of 5 s (however loaded the machine).
  local BLOCK = "local t = require('tulua').now() + 0.07 while require('tulua').now() < t do end"
  local SHOW = "print(require('tulua').get_debug('slow'))"

  it("TULUA_DEBUG=<seconds> sets the threshold; TULUA_DEBUG=1 keeps 100 ms", function()
    local status, _, err = sh(("TULUA_DEBUG=0.05 %s -e %s"):format(q(support.TULUA), q(BLOCK)))
    assert.are.equal(0, status)
    assert.matches("Lua warning: task 'Task%-1' blocked the loop for %d+%.%d%d%d s", err)
    status, _, err = sh(("TULUA_DEBUG=5 %s -e %s"):format(q(support.TULUA), q(BLOCK)))
    assert.are.equal(0, status)
    assert.are.equal("", err)
    local _, out = sh(("TULUA_DEBUG=0.05 %s -e %s"):format(q(support.TULUA), q(SHOW)))
    assert.are.equal("0.05\n", out)
    _, out = sh(("TULUA_DEBUG=1 %s -e %s"):format(q(support.TULUA), q(SHOW)))
    assert.are.equal("0.1\n", out)
  end)

  it("set_debug{slow = s} applies to the next step", function()
    local status, _, err = sh(("%s -e %s"):format(q(support.TULUA),
      q("require('tulua').set_debug{slow = 0.05}; require('tulua').sleep(0); " .. BLOCK)))
    assert.are.equal(0, status)
    assert.matches("blocked the loop for %d+%.%d%d%d s", err)
  end)

  it("TULUA_DEBUG with a negative or NaN threshold stops tulua with a message", function()
    for _, bad in ipairs({"-1", "nan", "1e9"}) do
      local status, _, err = sh(("TULUA_DEBUG=%s %s -e 'print(1)'"):format(bad, q(support.TULUA)))
      assert.are.equal(1, status)
      assert.matches("TULUA_DEBUG must be 1 or a number of seconds above 0 and at most 86400", err)
    end
  end)
end)
