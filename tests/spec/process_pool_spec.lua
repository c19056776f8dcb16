-- concurrent.futures' ProcessPoolExecutor (lua/concurrent/_process_pool.lua
-- over bindings/process_pool.c): jobs in tulua worker processes, crashes
-- that fail only their own job, cancelling queued and running jobs,
-- shutdown, max_tasks_per_child, initializers, and what a pool leaves
-- behind (processes, descriptors) or keeps alive. What every executor
-- shares is in futures_spec.lua. Spec bodies run in the main task; those
-- that wait on a worker run under a watchdog.
local futures = require("concurrent.futures")
local tulua = require("tulua")
local fs = require("tulua.fs")
local process = require("tulua.process")
local job_of = require("tulua._future").job

package.path = (debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or ".") .. "/?.lua;" .. package.path
local support = require("support")
local eventually = support.eventually

local function bounded(fn) return support.bounded(fn, 20) end

local raised = support.raised

local temp_path = support.temp_path

local proc_state = support.proc_state

-- The pids of this process's children.
local function children()
  local f = io.open("/proc/self/task/" .. process.getpid() .. "/children")
  local s = f and f:read("a") or ""
  if f then f:close() end
  local pids = {}
  for pid in s:gmatch("%d+") do pids[#pids + 1] = tonumber(pid) end
  return pids
end

-- The backend's number for the job of future f.
local function job_id(f) return select(2, job_of(f)) end

local function getpid()
  return require("tulua.process").getpid()
end

-- A job that marks that it started, then waits (polling) until the file
-- go exists, and returns its worker's pid.
local function wait_for_go(started, go)
  local tfs = require("tulua.fs")
  tfs.write_file(started, "")
  while not tfs.stat(go) do require("tulua").sleep(0.005) end
  return require("tulua.process").getpid()
end

local function exists(path)
  return function() return fs.stat(path) ~= nil end
end

-- Runs a fixture under process.run; returns status, stdout, stderr and the
-- time it took.
local function run_fixture(name)
  local t0 = tulua.now()
  local status, out, err = process.run({support.TULUA, name},
    {cwd = support.FIXTURES, stdin = "null", timeout = 20})
  return status, out, err, tulua.now() - t0
end

describe("ProcessPoolExecutor", function()
  local ex, files

  before_each(function()
    ex = futures.ProcessPoolExecutor(2)
    files = {}
  end)

  after_each(function()
    -- a spec that failed may have left a job waiting for its go file
    for _, p in ipairs(files) do
      if p:match("%-go$") then fs.write_file(p, "") end
    end
    ex:shutdown(true)
    for _, p in ipairs(files) do os.remove(p) end
  end)

  local function temp(tag)
    local p = temp_path(tag)
    files[#files + 1] = p
    return p
  end

  describe("submit and result", function()
    it("runs the function in another process and returns all its results", bounded(function()
      local f = ex:submit(function(a, b) return a + b, a * b, nil, require("tulua.process").getpid() end, 6, 7)
      local sum, product, none, pid = f:result()
      assert.are.same({13, 42}, {sum, product})
      assert.is_nil(none)
      assert.are_not.equal(process.getpid(), pid)
      assert.are.equal(4, select("#", f:result()))
    end))

    it("maps in order, with chunks of items", bounded(function()
      local out = {}
      for r in ex:map(function(x) return x * x end, {1, 2, 3, 4, 5, 6, 7}) do out[#out + 1] = r end
      assert.are.same({1, 4, 9, 16, 25, 36, 49}, out)
      local items = {}
      for i = 1, 2500 do items[i] = i end
      local n, sum = 0, 0
      for r in ex:map(function(x, y) return x + y end, items, items, {chunksize = 100}) do
        n = n + 1
        assert.are.equal(2 * n, r)
        sum = sum + r
      end
      assert.are.same({2500, 2500 * 2501}, {n, sum})
      -- one array: its slices share a table (the last one is shorter)
      n = 0
      for r in ex:map(function(x) return -x end, items, {chunksize = 300}) do
        n = n + 1
        assert.are.equal(-n, r)
      end
      assert.are.equal(2500, n)
    end))

    it("streams many small jobs to two workers", bounded(function()
      local fs_ = {}
      for i = 1, 5000 do fs_[i] = ex:submit(function(x) return x + 1, require("tulua.process").getpid() end, i) end
      local pids, n = {}, 0
      for i = 1, 5000 do
        local r, pid = fs_[i]:result()
        assert.are.equal(i + 1, r)
        if not pids[pid] then pids[pid] = true; n = n + 1 end
      end
      assert.are.equal(2, n)
    end))

    it("moves megabytes both ways", bounded(function()
      local big = string.rep("0123456789abcdef", 256 * 1024) -- 4 MiB
      local list = {}
      for i = 1, 6 do list[i] = ex:submit(function(s, n) return s .. n, #s end, big, i) end
      for i = 1, 6 do assert.are.same({big .. i, #big}, {list[i]:result()}) end
    end))

    it("sends no job ahead to a worker busy with a long one", bounded(function()
      for _ = 1, 20 do ex:submit(function() end):result() end -- quick jobs open the windows
      local started, go = temp("started"), temp("go")
      local long = ex:submit(wait_for_go, started, go)
      assert.is_true(eventually(exists(started)))
      tulua.sleep(0.01) -- silent for over 1 ms: it may be a long job
      local short = {}
      for i = 1, 6 do short[i] = ex:submit(function(x) require("tulua").sleep(0.01); return x end, i) end
      for i = 1, 6 do assert.are.equal(i, short[i]:result(5)) end
      assert.is_false(long:done())
      fs.write_file(go, "")
      long:result()
    end))

    it("raises a worker's error from result with the worker's traceback", bounded(function()
      local f = ex:submit(function()
        local t = nil
        return t.x
      end)
      local err = raised(f.result, f)
      assert.are.equal("string", type(err))
      local first = err:match("^[^\n]*")
      assert.matches("process_pool_spec.lua:%d+: attempt to index a nil value %(local 't'%)$", first)
      local tb = err:match("\nstack traceback %(in the worker%):\n(.*)$")
      assert.is_truthy(tb, err)
      -- the job's frames only, not the worker's job runner
      assert.matches("^\t[^\n]*process_pool_spec.lua:%d+: in function <", tb)
      assert.is_nil(tb:find("\n"), tb)
      local g = ex:submit(function() error(require("tulua").new_error("EMINE", "my error")) end)
      err = raised(g.result, g)
      assert.are.same({"EMINE", "my error"}, {err.code, tostring(err)})
      assert.matches("stack traceback", err.traceback)
    end))

    it("refuses a value that cannot cross at submit, naming its path", bounded(function()
      local err = raised(ex.submit, ex, function() end, 1, {config = {log = io.stdout}})
      assert.are.equal("submit: argument #3.config.log: cannot transfer a userdata", err)
      local f = ex:submit(function() return io.stdout end)
      assert.matches("argument #1: cannot transfer a userdata %(in the job's results%)", raised(f.result, f))
    end))

    it("runs with the parent's package.path, stdin from /dev/null", bounded(function()
      local m = require("fixtures.process_pool_module")
      assert.are.same({"found", ""}, {ex:submit(function() return m.where(), io.read("a") end):result()})
    end))

    it("may run a pool of its own in the worker", bounded(function()
      local f = ex:submit(function()
        local inner = require("concurrent.futures").ProcessPoolExecutor(1)
        local r = inner:submit(function(x) return x * 7 end, 6):result()
        inner:shutdown(true)
        return r
      end)
      assert.are.equal(42, f:result())
    end))

    it("prints to the parent's stdout, before the job's result comes", bounded(function()
      local status, out, err = run_fixture("process_pool_print.lua")
      assert.are.equal("", err)
      assert.are.equal(0, status)
      assert.are.equal("from the worker 1\nresult 1\nfrom the worker 2\nresult 2\n", out)
    end))
  end)

  describe("a worker that dies", function()
    it("fails only the job it was running; the pool replaces it", bounded(function()
      local one = futures.ProcessPoolExecutor(1)
      one._backend.fast = 60 -- every job counts as quick, however loaded the machine: one is sent ahead
      local started, go = temp("started"), temp("go")
      local pid = one:submit(getpid):result()
      local f = one:submit(wait_for_go, started, go)
      local after = one:submit(function(x) return x * 3, require("tulua.process").getpid() end, 5)
      assert.is_true(eventually(exists(started)))
      assert.is_truthy(one._backend.where[job_id(after)]) -- sent ahead: it goes back to the queue
      assert.is_true(process.kill(pid, "SIGKILL"))
      local err = raised(f.result, f)
      assert.are.equal("EWORKER", err.code)
      assert.are.equal(("worker process %d died (signal 9, Killed) while running this job"):format(pid),
        tostring(err))
      local r, new_pid = after:result()
      assert.are.equal(15, r)
      assert.are_not.equal(pid, new_pid)
      assert.is_true(eventually(function() return proc_state(pid) == nil end))
      -- os.exit in a job
      local g = one:submit(function() os.exit(3) end)
      err = raised(g.result, g)
      assert.matches("^worker process %d+ died %(exit status 3%) while running this job$", tostring(err))
      assert.are.equal("ok", one:submit(function() return "ok" end):result())
      one:shutdown(true)
      local tl = one:timeline()
      assert.are.same({"done", "failed", "done", "failed", "done"},
        {tl[1].status, tl[2].status, tl[3].status, tl[4].status, tl[5].status})
    end))
  end)

  describe("cancel", function()
    it("drops a queued job: it never runs", bounded(function()
      local one = futures.ProcessPoolExecutor(1)
      local started, go, mark = temp("started"), temp("go"), temp("queued")
      local first = one:submit(wait_for_go, started, go)
      local second = one:submit(function(p) require("tulua.fs").write_file(p, "ran") end, mark)
      assert.is_true(second:cancel())
      assert.is_true(second:cancelled())
      assert.is_true(futures.is_cancelled(raised(second.result, second)))
      fs.write_file(go, "")
      first:result()
      one:shutdown(true)
      assert.is_nil(fs.stat(mark))
    end))

    it("skips a job sent ahead to a busy worker", bounded(function()
      local one = futures.ProcessPoolExecutor(1)
      one._backend.fast = 60 -- every job counts as quick, however loaded the machine
      -- quick jobs open the worker's window: it gets jobs ahead of their turn
      for _ = 1, 10 do one:submit(function() end):result() end
      local started, go, mark = temp("started"), temp("go"), temp("ahead")
      local first = one:submit(wait_for_go, started, go)
      local second = one:submit(function(p) require("tulua.fs").write_file(p, "ran") end, mark)
      assert.is_true(eventually(exists(started)))
      assert.is_false(second:running())
      assert.is_truthy(one._backend.where[job_id(second)]) -- sent to the worker, not queued here
      assert.is_true(second:cancel())
      fs.write_file(go, "")
      first:result()
      one:shutdown(true)
      assert.is_nil(fs.stat(mark))
      assert.are.equal("cancelled", one:timeline()[12].status)
    end))

    it("interrupts a running CPU-bound job, whose to-be-closed variables are closed", bounded(function()
      local one = futures.ProcessPoolExecutor(1)
      local started, mark = temp("started"), temp("closed")
      local pid = one:submit(getpid):result()
      local f = one:submit(function(s, p)
        local _ <close> = setmetatable({}, {__close = function()
          require("tulua.fs").write_file(p, "closed")
        end})
        require("tulua.fs").write_file(s, "")
        local n = 0
        while true do n = n + 1 end
      end, started, mark)
      assert.is_true(eventually(exists(started)))
      assert.is_true(f:running())
      assert.is_true(f:cancel())
      assert.is_true(f:cancelled())
      assert.is_true(futures.is_cancelled(raised(f.result, f)))
      -- the same worker is free again, and the job's variable was closed
      assert.are.equal(pid, one:submit(getpid):result())
      assert.are.equal("closed", fs.read_file(mark))
      one:shutdown(true)
      assert.are.equal("cancelled", one:timeline()[2].status)
    end))

    it("interrupts a running job that waits", bounded(function()
      local f = ex:submit(tulua.sleep, 30)
      assert.is_true(eventually(function() return f:running() end))
      f:cancel()
      ex:shutdown(true)
      -- a job left to run its 30 s would end "done": cancelled means interrupted
      assert.is_true(f:cancelled())
      assert.are.equal("cancelled", ex:timeline()[1].status)
    end))
  end)

  describe("shutdown", function()
    it("with wait false and cancel_futures cancels what is queued, and the workers end", bounded(function()
      local one = futures.ProcessPoolExecutor(1)
      local started, go = temp("started"), temp("go")
      local running = one:submit(wait_for_go, started, go)
      local queued = {}
      for i = 1, 5 do queued[i] = one:submit(function(x) return x end, i) end
      assert.is_true(eventually(exists(started)))
      one:shutdown(false, true)
      for i = 1, 5 do assert.is_true(queued[i]:cancelled()) end
      assert.is_false(running:done())
      assert.matches("cannot schedule new futures after shutdown", raised(one.submit, one, getpid))
      fs.write_file(go, "")
      local pid = running:result()
      assert.is_true(eventually(function() return proc_state(pid) == nil end))
    end))

    it("leaves no process, zombie or descriptor behind", bounded(function()
      local first = futures.ProcessPoolExecutor(1) -- libuv opens descriptors of its own once
      first:submit(getpid):result()
      first:shutdown(true)
      local fds = support.fd_count()
      local pool = futures.ProcessPoolExecutor(2)
      local list = {}
      for i = 1, 200 do list[i] = pool:submit(function(x) require("tulua").sleep(0.001); return x end, i) end
      local pids = {}
      for i = 1, 200 do
        assert.are.equal(i, list[i]:result())
      end
      for _, pid in ipairs(children()) do pids[#pids + 1] = pid end
      assert.is_true(#pids >= 2)
      pool:shutdown(true)
      for _, pid in ipairs(pids) do assert.is_nil(proc_state(pid)) end
      assert.are.same({}, children())
      assert.are.equal(fds, support.fd_count())
    end))

    it("ends the workers of an executor collected without shutdown", bounded(function()
      local pid
      do
        local pool = futures.ProcessPoolExecutor(1)
        pid = pool:submit(getpid):result()
      end
      collectgarbage()
      collectgarbage()
      assert.is_nil(proc_state(pid))
    end))
  end)

  describe("max_tasks_per_child", function()
    it("is a positive integer up to 2^31 - 1", function()
      assert.has_error(function() futures.ProcessPoolExecutor(1, {max_tasks_per_child = 0}) end,
        "bad argument #2 to 'ProcessPoolExecutor' (max_tasks_per_child must be a positive integer)")
      assert.has_error(function() futures.ProcessPoolExecutor(1, {max_tasks_per_child = math.maxinteger}) end,
        "bad argument #2 to 'ProcessPoolExecutor' (max_tasks_per_child must be 1 to 2147483647)")
    end)

    it("replaces a worker after that many jobs", bounded(function()
      local one = futures.ProcessPoolExecutor(1, {max_tasks_per_child = 2})
      local pids = {}
      for i = 1, 6 do pids[i] = one:submit(getpid):result() end
      one:shutdown(true)
      assert.are.equal(pids[1], pids[2])
      assert.are.equal(pids[3], pids[4])
      assert.are.equal(pids[5], pids[6])
      assert.are_not.equal(pids[1], pids[3])
      assert.are_not.equal(pids[3], pids[5])
      assert.is_nil(proc_state(pids[1]))
      -- and when jobs queue up
      local two = futures.ProcessPoolExecutor(2, {max_tasks_per_child = 1})
      local list, seen = {}, {}
      for i = 1, 6 do list[i] = two:submit(getpid) end
      for i = 1, 6 do
        local pid = list[i]:result()
        assert.is_nil(seen[pid])
        seen[pid] = true
      end
      two:shutdown(true)
    end))
  end)

  describe("initializer", function()
    it("runs first in every worker, with initargs", bounded(function()
      local pool = futures.ProcessPoolExecutor(2, {
        initializer = function(a, b) _G.GREETING = a .. " " .. b end,
        initargs = {"hello", "worker"},
      })
      local function greeting() return _G.GREETING end
      local a = pool:submit(function(g) require("tulua").sleep(0.05); return g() end, greeting)
      local b = pool:submit(greeting)
      assert.are.same({"hello worker", "hello worker"}, {a:result(), b:result()})
      pool:shutdown(true)
    end))

    it("that fails breaks the pool", bounded(function()
      local pool = futures.ProcessPoolExecutor(1, {initializer = function() error("no config") end})
      local f = pool:submit(function() return 1 end)
      local err = raised(f.result, f)
      assert.is_true(futures.is_error(err, futures.BrokenExecutor))
      assert.matches("^the initializer failed: .*process_pool_spec.lua:%d+: no config", tostring(err))
      err = raised(pool.submit, pool, function() end)
      assert.is_true(futures.is_error(err, futures.BrokenExecutor))
      assert.matches("the pool is broken", tostring(err))
      pool:shutdown(true)
    end))

    it("that ends the worker breaks the pool once workers keep dying as they start", bounded(function()
      local pool = futures.ProcessPoolExecutor(1, {initializer = function() os.exit(5) end})
      local f = pool:submit(function() return 1 end)
      local err = raised(f.result, f)
      assert.is_true(futures.is_error(err, futures.BrokenExecutor))
      assert.matches("^worker processes die as they start %(worker process %d+: exit status 5%)$", tostring(err))
      pool:shutdown(true)
      assert.are.same({}, children())
    end))

    it("must be able to cross", function()
      local file = io.stdout
      assert.matches("cannot transfer a userdata",
        raised(futures.ProcessPoolExecutor, 1, {initializer = function() return file end}))
    end)
  end)

  describe("max_workers", function()
    it("is at most 1024, as the thread pool's", function()
      assert.has_error(function() futures.ProcessPoolExecutor(1 << 40) end,
        "bad argument #1 to 'ProcessPoolExecutor' (max_workers must be 1 to 1024)")
      assert.has_error(function() futures.ProcessPoolExecutor(1025) end,
        "bad argument #1 to 'ProcessPoolExecutor' (max_workers must be 1 to 1024)")
      assert.has_error(function() futures.ProcessPoolExecutor(0) end,
        "bad argument #1 to 'ProcessPoolExecutor' (max_workers must be a positive integer)")
      local pool = futures.ProcessPoolExecutor(1024)
      assert.are.equal(1024, pool:max_workers())
      pool:shutdown(true)
    end)

    it("costs only the workers started: no loop runs up to the bound", bounded(function()
      local status, out, err = run_fixture("process_pool_wide.lua")
      assert.are.equal("", err)
      assert.are.equal("sum 42\ndone\n", out)
      assert.are.equal(0, status)
    end))
  end)

  describe("the program", function()
    it("waits for the jobs left when the main chunk ends, and an idle pool does not keep it alive",
      bounded(function()
        -- a pool that kept the program alive would meet run_fixture's timeout
        local status, out, err = run_fixture("process_pool_exit.lua")
        assert.are.equal("", err)
        assert.are.equal(0, status)
        local pid
        out = out:gsub("^worker (%d+)\n", function(p) pid = tonumber(p); return "" end)
        assert.are.equal("main done\njob 1\njob 2\njob 3\ncallback 3\n", out)
        assert.is_nil(proc_state(pid))
      end))
  end)
end)
