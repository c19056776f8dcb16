-- tulua --ps PID and --pstree PID against running tulua scripts (tasks in
-- every kind of wait, a busy loop), their failures (not tulua, gone,
-- another user's, bad arguments), and tulua.ps() in the REPL.
local tulua = require("tulua")
local process = require("tulua.process")
local fs = require("tulua.fs")

package.path = (debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or ".") .. "/?.lua;" .. package.path
local support = require("support")
local terminal = require("terminal")
local TULUA, bounded, write_file = support.TULUA, support.bounded, support.write_file

-- The script of the waits: each task named after what it waits for. It
-- prints "ready <pid> <child pid> <port>" once every task waits.
local WAITS = [[
local tulua = require "tulua"
local asyncio = require "asyncio"
local fs = require "tulua.fs"
local net = require "tulua.net"
local process = require "tulua.process"
local futures = require "concurrent.futures"
local dir = ...
local function named(name, fn, ...) local t = tulua.spawn(fn, ...); t:set_name(name); return t end
named("sleeper", function() tulua.sleep(60) end)
local srv = assert(net.serve("127.0.0.1", 0, function(c) c:read() end))
local _, port = srv:address()
named("reader", function() local c = assert(net.connect("127.0.0.1", port)); c:read() end)
named("opener", function() fs.open(dir .. "/fifo") end)
local child = assert(process.spawn({"sleep", "60"}))
named("waiter", function() child:wait() end)
local lock = asyncio.Lock()
lock:acquire()
named("locker", function() lock:acquire() end)
local q = asyncio.Queue()
named("getter", function() q:get() end)
local ex = futures.ThreadPoolExecutor(1)
local f = ex:submit(function() require("tulua").sleep(60) end)
named("resulter", function() f:result() end)
named("gatherer", function()
  local a = named("child-a", function() tulua.sleep(60) end)
  local b = named("child-b", function() tulua.sleep(60) end)
  asyncio.gather(a, b)
end)
named("grouper", function()
  local tg <close> = asyncio.TaskGroup()
  tg:create_task(function() tulua.sleep(60) end):set_name("member")
end)
tulua.sleep(0.2)
print("ready", process.getpid(), child.pid, port)
io.stdout:flush()
]]

-- Starts `tulua script args...` in dir; returns the Process and the words
-- of its "ready" line.
local function start(dir, script, ...)
  write_file(dir .. "/script.lua", script)
  local p = assert(process.spawn({TULUA, "script.lua", ...}, {cwd = dir, stdout = "pipe", stderr = "pipe"}))
  local line = p.stdout:read_line()
  if not (line and line:match("^ready")) then
    error("no ready line: " .. tostring(line) .. " " .. tostring(p.stderr:read_all()))
  end
  local words = {}
  for w in line:gmatch("%S+") do words[#words + 1] = w end
  tulua.sleep(0.3) -- for the main chunk, which printed the line, to end
  return p, words
end

local function stop(p)
  p:kill("SIGKILL")
  p:wait()
  p:close()
end

-- Runs tulua with args; returns exit status, stdout, stderr.
local function run(...)
  local status, out, err = process.run({TULUA, ...})
  return status, out, err
end

-- Returns the line of out about the task called name.
local function line_of(out, name)
  for line in out:gmatch("[^\n]+") do
    if line:match("^%s*%d+%s+" .. name:gsub("%-", "%%-") .. "%s") then return line end
  end
  return nil
end

local function id_of(out, name)
  return tonumber((line_of(out, name) or ""):match("^%s*(%d+)"))
end

local function uid()
  return support.read_file("/proc/self/status"):match("\nUid:%s+(%d+)")
end

describe("tulua --ps", function()
  local dir

  before_each(function()
    dir = assert(fs.mkdtemp("/tmp/tulua-ps-XXXXXX"))
  end)

  after_each(function()
    support.remove_tree(dir)
  end)

  -- Runs the script of the waits, calls check(pid, child pid, port), then
  -- ends the script and its child.
  local function with_waits(check)
    assert(os.execute("mkfifo " .. dir .. "/fifo"))
    local p, w = start(dir, WAITS, dir)
    local ok, err = pcall(check, w[2], w[3], w[4])
    stop(p)
    process.kill(tonumber(w[3]), "SIGKILL")
    if not ok then error(err, 0) end
  end

  local EXECUTORS = "\n\nexecutors:\n  <ThreadPoolExecutor max_workers=1>\n    job #1 running on thread worker 1\n$"

  it("lists each task with its state, its time and what it waits for", bounded(function()
    with_waits(function(pid, child, port)
      local status, out, stderr = run("--ps", pid)
      assert.are.same({0, ""}, {status, stderr})
      assert.matches("^tulua process " .. pid .. ": 13 tasks\nID%s+NAME%s+STATE%s+FOR%s+WAITS FOR\n", out)
      local function has(name, waits)
        local line = line_of(out, name)
        assert.is_truthy(line, name .. " missing in:\n" .. out)
        assert.matches("^%s*%d+%s+" .. name:gsub("%-", "%%-") .. "%s+waiting%s+%d+%.%d s%s+" .. waits .. "$", line)
      end
      has("sleeper", "sleep %d+%.%d%d%d s left")
      has("reader", "read tcp 127%.0%.0%.1:" .. port)
      has("opener", "fs%.open " .. (dir .. "/fifo"):gsub("%p", "%%%0"))
      has("waiter", "process%.wait pid " .. child .. " sleep")
      has("locker", "lock")
      has("getter", "queue get")
      has("resulter", "result future #1 on thread worker 1")
      has("gatherer", "gather: awaits #" .. id_of(out, "child-a") .. " #" .. id_of(out, "child-b"))
      has("grouper", "TaskGroup: awaits #" .. id_of(out, "member"))
      has("member", "sleep %d+%.%d%d%d s left")
      assert.matches(EXECUTORS, out)
      -- the report went through a 0700 directory of ours and is gone
      local st = assert(fs.stat("/tmp/tulua-" .. uid()))
      assert.are.same({"directory", "700"}, {st.type, string.format("%o", st.mode & 511)})
      assert.is_nil(fs.stat("/tmp/tulua-" .. uid() .. "/" .. pid .. ".ps"))
    end)
  end, 30))

  it("--pstree puts tasks under their spawner, with what they await and their tracebacks", bounded(function()
    with_waits(function(pid)
      local status, out, stderr = run("--pstree", pid)
      assert.are.same({0, ""}, {status, stderr})
      assert.matches("^tulua process " .. pid .. ": 13 tasks\n", out)
      -- the tasks the main chunk spawned are roots (it has ended); the
      -- gather's and the TaskGroup's children are under their parent
      assert.matches("\n#%d+ sleeper %(waiting %d+%.%d s%): sleep [%d.]+ s left\n"
        .. "      %[C%]: in function '[%w._]+'\n      script%.lua:9: in function <script%.lua:9>\n", out)
      assert.matches("\n#%d+ gatherer %(waiting [%d.]+ s%): gather: awaits #%d+ #%d+\n"
        .. "|     %[C%]: in function '[%w._]+'\n.-|     script%.lua:27: in function <script%.lua:24>\n"
        .. "|%-%- #%d+ child%-a %(waiting [%d.]+ s%): sleep [%d.]+ s left\n"
        .. "|         %[C%]: in function '[%w._]+'\n|         script%.lua:25: in function <script%.lua:25>\n"
        .. "`%-%- #%d+ child%-b ", out)
      assert.matches("\n#%d+ grouper %(waiting [%d.]+ s%): TaskGroup: awaits #%d+\n.-\n"
        .. "`%-%- #%d+ member %(waiting", out)
      assert.matches("\n#%d+ resulter %(waiting [%d.]+ s%): result future #1 on thread worker 1\n"
        .. "      %[C%]: in method 'result'\n      script%.lua:23: in function <script%.lua:23>\n", out)
      assert.matches(EXECUTORS, out)
    end)
  end, 30))

  it("answers from inside a task that keeps the loop busy, naming it", bounded(function()
    local p, w = start(dir, [[
local tulua = require "tulua"
tulua.spawn(function() tulua.sleep(60) end):set_name("idle")
tulua.spawn(function()
  print("ready", require("tulua.process").getpid())
  io.stdout:flush()
  local t0 = os.clock()
  while os.clock() - t0 < 20 and not io.open("stop") do end
end):set_name("spinner")
]])
    local pid = w[2]
    local ok, err = pcall(function()
      local status, out, stderr = run("--ps", pid)
      assert.are.same({0, ""}, {status, stderr})
      assert.matches("^tulua process " .. pid .. ": 2 tasks\n%(the loop is busy: task #3 'spinner' has run Lua code"
        .. " for %d+%.%d s; this report was made inside it%)\n", out)
      assert.matches("\n%s+3%s+spinner%s+running%s+%d+%.%d s%s+running Lua code\n", out)
      assert.matches("\n%s+2%s+idle%s+waiting%s+%d+%.%d s%s+sleep [%d.]+ s left\n", out)
      status, out = run("--pstree", pid)
      assert.are.equal(0, status)
      assert.matches("\n#3 spinner %(running [%d.]+ s%): running Lua code\n"
        .. ".-      script%.lua:7: in function <script%.lua:3>\n", out)
    end)
    write_file(dir .. "/stop", "")
    stop(p)
    if not ok then error(err, 0) end
  end, 30))

  it("fails clearly for a process that is not tulua, one that is gone, and bad arguments", bounded(function()
    local p = assert(process.spawn({"sleep", "30"}))
    local status, out, err = run("--ps", tostring(p.pid))
    assert.are.same({1, "", TULUA .. ": --ps: process " .. p.pid
      .. " is not a tulua process, or its runtime does not answer --ps\n"}, {status, out, err})
    p:kill("SIGKILL")
    p:wait()
    p:close()
    status, out, err = run("--pstree", tostring(p.pid))
    assert.are.same({1, "", TULUA .. ": --pstree: no process " .. p.pid .. "\n"}, {status, out, err})
    assert.are.same({1, "", TULUA .. ": --ps: 'x1' is not a process id\n"}, {run("--ps", "x1")})
    assert.are.same({1, "", "usage: " .. TULUA .. " --ps PID\n"}, {run("--ps")})
    assert.are.same({1, "", "usage: " .. TULUA .. " --pstree PID\n"}, {run("--pstree", "1", "2")})
  end))

  it("gives up after 5 s on a stopped tulua process, saying why", bounded(function()
    local p, w = start(dir, "print('ready', require('tulua.process').getpid())\nio.stdout:flush()\n"
      .. "require('tulua').sleep(30)\n")
    p:kill("SIGSTOP")
    local t0 = tulua.now()
    local status, out, err = run("--ps", w[2])
    local took = tulua.now() - t0
    p:kill("SIGCONT")
    stop(p)
    assert.are.same({1, "", TULUA .. ": --ps: no answer from process " .. w[2] .. " within 5 s: it is not a tulua"
      .. " process (it catches SIGURG), or its runtime is blocked outside Lua code (a C call, or the process"
      .. " is stopped)\n"}, {status, out, err})
    assert.is_true(took >= 5)
  end, 20))

  it("refuses another user's process", bounded(function()
    local p, pid, owner
    if uid() == "0" then -- root: a process of nobody's
      p = assert(process.spawn({"setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "sleep", "30"}))
      pid, owner = p.pid, "65534"
      support.eventually(function()
        return support.read_file("/proc/" .. pid .. "/status"):match("\nUid:%s+(%d+)") == owner
      end)
    else
      pid, owner = 1, support.read_file("/proc/1/status"):match("\nUid:%s+(%d+)")
    end
    local status, out, err = run("--ps", tostring(pid))
    if p then p:kill("SIGKILL"); p:wait(); p:close() end
    assert.are.same({1, "", TULUA .. ": --ps: process " .. pid .. " belongs to another user (uid " .. owner
      .. "); only your own processes answer\n"}, {status, out, err})
  end))

  it("keeps a bare word a script name, as lua5.4 does", bounded(function()
    write_file(dir .. "/ps", "print('the script ps', ...)\n")
    local status, out = process.run({TULUA, "ps", "--ps"}, {cwd = dir})
    assert.are.same({0, "the script ps\t--ps\n"}, {status, out})
    -- and a long option after another one is not --ps: lua5.4's usage
    status = process.run({TULUA, "-W", "--ps", "1"})
    assert.are.equal(1, status)
  end))
end)

-- Returns what tulua.ps(tree) prints.
local function capture_ps(tree)
  local path = os.tmpname()
  local f = assert(io.open(path, "w"))
  local old = io.output()
  io.output(f)
  local ok, err = pcall(tulua.ps, tree)
  io.output(old)
  f:close()
  local out = support.read_file(path)
  os.remove(path)
  assert(ok, err)
  return out
end

describe("tulua.ps()", function()
  it("names the other waits: join, udp, process.run, a full queue, events, conditions, semaphores",
    bounded(function()
      local asyncio = require("asyncio")
      local udp = require("tulua.udp")
      local tasks = {}
      local function named(name, fn)
        local t = tulua.spawn(fn)
        t:set_name(name)
        tasks[#tasks + 1] = t
        return t
      end
      local target = named("target", function() tulua.sleep(60) end)
      named("joiner", function() target:join() end)
      local sock = assert(udp.bind("127.0.0.1", 0))
      local _, uport = sock:local_address()
      named("receiver", function() sock:recv_from() end)
      named("runner", function() process.run({"sleep", "30"}) end)
      local q = asyncio.Queue(1)
      q:put_nowait(1)
      named("putter", function() q:put(2) end)
      local ev = asyncio.Event()
      named("event", function() ev:wait() end)
      local cond = asyncio.Condition()
      named("cond", function() cond:acquire(); cond:wait() end)
      local sem = asyncio.Semaphore(0)
      named("sem", function() sem:acquire() end)
      tulua.sleep(0.05)
      local out = capture_ps()
      for _, t in ipairs(tasks) do t:cancel() end
      for _, t in ipairs(tasks) do pcall(t.join, t) end
      sock:close()
      local function has(name, waits)
        local line = line_of(out, name)
        assert.is_truthy(line, name .. " missing in:\n" .. out)
        assert.matches("^%s*%d+%s+" .. name .. "%s+waiting%s+%d+%.%d s%s+" .. waits .. "$", line)
      end
      has("joiner", "join task #" .. id_of(out, "target"))
      has("receiver", "udp%.recv_from 127%.0%.0%.1:" .. uport)
      has("runner", "process%.run pid %d+ sleep")
      has("putter", "queue put")
      has("event", "event")
      has("cond", "condition")
      has("sem", "semaphore")
    end))

  it("prints this runtime's tasks", bounded(function()
    local t = tulua.spawn(function() tulua.sleep(60) end)
    t:set_name("napper")
    tulua.sleep(0.01)
    local out = capture_ps()
    local tree = capture_ps(true)
    t:cancel()
    assert.matches("\n%s*%d+%s+napper%s+waiting%s+%d+%.%d s%s+sleep [%d.]+ s left\n", out)
    -- the tree: the napper under the spec's task that spawned it, which
    -- made the list (its frames that made it left out)
    assert.matches("\n    `%-%- #%d+ napper %(waiting [%d.]+ s%): sleep [%d.]+ s left\n"
      .. "              %[C%]: in function '[%w._]+'\n", tree)
    assert.matches("#%d+ Task%-%d+ %(running [%d.]+ s%): running: it made this list\n"
      .. "    |     %[C%]: in function 'pcall'\n"
      .. "    |     [^\n]*ps_spec%.lua:%d+: in upvalue 'capture_ps'\n", tree)
  end))

  it("lists the REPL's background tasks at the prompt", function()
    local term <close> = terminal.open({args = {"-i"}})
    local _, ok = term:poll(function(lines) return lines[#lines] == ">" end)
    assert.is_true(ok, "no prompt")
    term:type("t = tulua.spawn(function() tulua.sleep(60) end) t:set_name('bg')")
    term:press("Enter")
    term:type("tulua.ps()")
    term:press("Enter")
    local row = "^%s*%d+%s+bg%s+waiting%s+%d+%.%d s%s+sleep [%d.]+ s left$"
    local function find(lines)
      for i, line in ipairs(lines) do
        if line:match(row) then return i end
      end
    end
    local lines = term:poll(find)
    local at = find(lines)
    assert.is_truthy(at, table.concat(lines, "\n"))
    assert.are.same({"> tulua.ps()", "ID  NAME  STATE      FOR  WAITS FOR"}, {lines[at - 3], lines[at - 1]})
    assert.matches("^tulua process %d+: 1 task$", lines[at - 2])
  end)
end)
