-- concurrent.futures (lua/concurrent/futures.md) with the thread pool:
-- futures, submit/map/shutdown, as_completed and wait, cancelling queued
-- and running jobs, errors and their tracebacks, what crosses to a worker,
-- initializers, the asyncio bridges, and what a pool leaves behind (threads,
-- descriptors, memory). The process pool's own behaviour (crashes, pids)
-- is in process_pool_spec.lua.
-- Spec bodies run in the main task, so they wait directly.
local futures = require("concurrent.futures")
local asyncio = require("asyncio")
local tulua = require("tulua")
local fs = require("tulua.fs")

package.path = (debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or ".") .. "/?.lua;" .. package.path
local support = require("support")

local raised = support.raised

-- The number of threads of this process.
local function thread_count()
  return #assert(fs.readdir("/proc/self/task"))
end

local temp_path = support.temp_path

-- Keeps the CPU busy in a worker until stopped (a job for cancel tests).
local function spin()
  local n = 0
  while true do n = n + 1 end
end

describe("concurrent.futures", function()
  local ex
  before_each(function() ex = futures.ThreadPoolExecutor(2) end)
  after_each(function()
    -- cancel what a failed test left running, so that shutdown ends
    ex:shutdown(false, true)
    ex = nil
    collectgarbage()
  end)

  describe("submit and result", function()
    it("runs the function in a worker and returns all its results", function()
      local f = ex:submit(function(a, b) return a + b, a * b, nil end, 6, 7)
      assert.are.same({13, 42, nil, n = 3}, table.pack(f:result()))
      assert.is_true(f:done())
      assert.is_false(f:cancelled())
      assert.is_false(f:running())
      assert.is_nil(f:exception())
    end)

    it("copies the arguments: the worker changes its own copy", function()
      local t = {1, 2}
      local f = ex:submit(function(x) x[1] = 99; return x[1] end, t)
      assert.are.equal(99, f:result())
      assert.are.equal(1, t[1])
    end)

    it("copies closures with nested upvalues and shared tables, cycles included", function()
      local shared = {n = 5}
      shared.self = shared
      local k = 10
      local function inner(x) return x + k + shared.n end
      local cfg = {a = shared, b = shared}
      local function outer(x) return inner(x), cfg.a == cfg.b, cfg.a.self == cfg.a end
      assert.are.same({16, true, true}, {ex:submit(outer, 1):result()})
    end)

    it("passes modules by name: the worker uses its own", function()
      local tfs = fs
      local path = os.tmpname()
      support.write_file(path, "hello")
      local f = ex:submit(function(p) return tfs.read_file(p) end, path)
      assert.are.equal("hello", f:result())
      os.remove(path)
    end)

    it("refuses a value that cannot cross at submit, naming its path", function()
      local err = raised(ex.submit, ex, function() end, 1, {config = {log = io.stdout}})
      assert.are.equal("submit: argument #3.config.log: cannot transfer a userdata", err)
      local file = io.stdout
      err = raised(ex.submit, ex, function() return file end)
      assert.are.equal("submit: argument #1.upvalue 'file': cannot transfer a userdata", err)
      assert.matches("function expected, got number", raised(ex.submit, ex, 42))
    end)

    it("raises a worker's error from result with the worker's traceback", function()
      local f = ex:submit(function()
        local t = nil
        return t.x -- line for the traceback
      end)
      local err = raised(f.result, f)
      assert.matches("futures_spec.lua:%d+: attempt to index a nil value %(local 't'%)", err)
      assert.matches("stack traceback %(in the worker%):", err)
      assert.matches("futures_spec.lua:%d+: in function", err)
      assert.are.equal(err, f:exception())
    end)

    it("keeps an error object's code and message across", function()
      local f = ex:submit(function() error(require("tulua").new_error("EMINE", "my error")) end)
      local err = raised(f.result, f)
      assert.are.equal("EMINE", err.code)
      assert.are.equal("my error", tostring(err))
      assert.matches("stack traceback", err.traceback)
    end)

    it("fails the job whose results cannot cross back", function()
      local f = ex:submit(function() return io.stdout end)
      assert.matches("argument #1: cannot transfer a userdata %(in the job's results%)", raised(f.result, f))
    end)

    it("lets the job use tulua's waiting operations in its worker", function()
      local f = ex:submit(function(s)
        local t = require("tulua")
        local t0 = t.now()
        t.sleep(s)
        return t.now() - t0
      end, 0.1)
      assert.is_true(f:result() >= 0.095)
    end)

    it("suspends only the waiting task: timers and other tasks go on", function()
      local ticks = 0
      local ticker = tulua.spawn(function()
        while true do tulua.sleep(0.01); ticks = ticks + 1 end
      end)
      ex:submit(function() require("tulua").sleep(0.2) end):result()
      ticker:cancel()
      assert.is_true(ticks >= 5, "ticks " .. ticks)
    end)

    it("runs two CPU-bound jobs at the same time on two workers", function()
      local function busy(s)
        local t = require("tulua")
        local t0 = t.now()
        while t.now() - t0 < s do end
      end
      local a, b = ex:submit(busy, 0.3), ex:submit(busy, 0.3)
      a:result()
      b:result()
      local tl = ex:timeline()
      assert.are.equal(2, #tl)
      assert.are_not.equal(tl[1].worker, tl[2].worker)
      assert.is_true(tl[2].start < tl[1].finish and tl[1].start < tl[2].finish, "the jobs overlap")
    end)

    it("times out result and exception without cancelling the job", function()
      local f = ex:submit(tulua.sleep, 0.3)
      local t0 = tulua.now()
      assert.is_true(futures.is_timeout(raised(f.result, f, 0.05)))
      assert.is_true(tulua.now() - t0 >= 0.045)
      assert.is_true(futures.is_timeout(raised(f.exception, f, 0)))
      assert.is_false(f:done())
      assert.is_nil(f:result())
    end)

    it("waits inside coroutines of the task, but not where C cannot yield", function()
      local f = ex:submit(tulua.sleep, 0.05, "slept")
      local gen = coroutine.wrap(function() coroutine.yield(f:result()) end)
      assert.are.equal("slept", gen())
      local g = ex:submit(tulua.sleep, 0.05)
      local err = raised(table.sort, {3, 1, 2}, function(a, b) g:result(); return a < b end)
      assert.matches("attempt to wait in 'result' inside a function called from C", err)
    end)
  end)

  describe("map", function()
    it("returns the results in order, whatever order the jobs end in", function()
      local out = {}
      for r in ex:map(function(x)
        require("tulua").sleep((5 - x) * 0.01)
        return x * x
      end, {1, 2, 3, 4, 5}) do
        out[#out + 1] = r
      end
      assert.are.same({1, 4, 9, 16, 25}, out)
    end)

    it("zips several iterables and stops at the shortest", function()
      local out = {}
      for r in ex:map(function(a, b) return a .. b end, {"a", "b", "c"}, {1, 2}) do out[#out + 1] = r end
      assert.are.same({"a1", "b2"}, out)
    end)

    it("takes iterator functions and chunks of items", function()
      local out = {}
      local i = 0
      local function gen() i = i + 1; if i <= 25 then return i end end
      for r in ex:map(function(x) return -x end, gen, {chunksize = 4}) do out[#out + 1] = r end
      assert.are.equal(25, #out)
      assert.are.equal(-1, out[1])
      assert.are.equal(-25, out[25])
    end)

    it("is lazy and bounded: an endless iterator works, and break cancels the rest", function()
      local pulled = 0
      local function endless() pulled = pulled + 1; return pulled end
      local got = 0
      for r in ex:map(function(x) return x end, endless, {buffersize = 3}) do
        got = got + 1
        assert.are.equal(got, r)
        if got == 10 then break end
      end
      assert.are.equal(10, got)
      assert.is_true(pulled <= 13, "pulled " .. pulled)
    end)

    it("raises a job's error when its turn comes, and TimeoutError after timeout", function()
      local it = ex:map(function(x) if x == 2 then error("two", 0) end; return x end, {1, 2, 3})
      assert.are.equal(1, it())
      assert.matches("^two", raised(it))
      local it2 = ex:map(function(s) require("tulua").sleep(s) end, {0.5}, {timeout = 0.05})
      assert.is_true(futures.is_timeout(raised(it2)))
    end)

    it("checks its arguments", function()
      assert.matches("function expected", raised(ex.map, ex, 1, {}))
      assert.matches("table or iterator function expected, got number", raised(ex.map, ex, print, 5))
      assert.matches("chunksize must be a positive integer", raised(ex.map, ex, print, {1}, {chunksize = 0}))
    end)

    it("bounds chunksize and buffersize, and a chunk never reads past the items", function()
      local out = {}
      for r in ex:map(function(x) return x * 2 end, {1, 2, 3}, {chunksize = 0x7fffffff}) do out[#out + 1] = r end
      assert.are.same({2, 4, 6}, out)
      out = {}
      for r in ex:map(function(x) return x end, {1, 2, 3, 4, 5}, {chunksize = 2, buffersize = 0x7fffffff}) do
        out[#out + 1] = r
      end
      assert.are.same({1, 2, 3, 4, 5}, out)
      assert.has_error(function() ex:map(print, {1}, {chunksize = math.maxinteger}) end,
        "bad argument #3 to 'map' (chunksize must be 1 to 2147483647)")
      assert.has_error(function() ex:map(print, {1}, {buffersize = 1 << 40}) end,
        "bad argument #3 to 'map' (buffersize must be 1 to 2147483647)")
      assert.has_error(function() ex:map(print, {1}, {buffersize = 0.5}) end,
        "bad argument #3 to 'map' (buffersize must be a positive integer)")
      assert.has_error(function() ex:map(print, {1}, {chunksize = 0 / 0}) end,
        "bad argument #3 to 'map' (chunksize must be a positive integer)")
    end)

    it("raises for an unknown option rather than take its table for an iterable", function()
      assert.has_error(function() ex:map(print, {1}, {chunk_size = 2}) end,
        "bad argument #3 to 'map' (unknown option 'chunk_size')")
      assert.has_error(function() ex:map(print, {1}, {2}, {timeout = 1, buffer_size = 2}) end,
        "bad argument #4 to 'map' (unknown option 'buffer_size')")
    end)
  end)

  describe("as_completed and wait", function()
    it("yields futures as they finish, each once", function()
      local done = ex:submit(function() return "done" end)
      done:result()
      -- a second apart: a loaded machine may delay fast by a lot
      local slow = ex:submit(function() require("tulua").sleep(1); return "slow" end)
      local fast = ex:submit(function() require("tulua").sleep(0.02); return "fast" end)
      local order = {}
      for f in futures.as_completed({slow, fast, done, done}) do order[#order + 1] = f:result() end
      assert.are.same({"done", "fast", "slow"}, order)
    end)

    it("raises TimeoutError once its timeout has passed", function()
      -- quick has the whole second, however loaded the machine
      local slow = ex:submit(tulua.sleep, 30)
      local quick = ex:submit(function() return 1 end)
      local got = {}
      local t0 = tulua.now()
      local err = raised(function()
        for f in futures.as_completed({slow, quick}, 1) do got[#got + 1] = f end
      end)
      assert.is_true(tulua.now() - t0 >= 0.95)
      assert.are.same({quick}, got)
      assert.is_true(futures.is_timeout(err))
      assert.matches("1 %(of 2%) futures unfinished", tostring(err))
      slow:cancel()
    end)

    it("waits for all, the first, or the first error, and returns done and not done", function()
      local a = ex:submit(function() return 1 end)
      -- b outlasts the other jobs by far, however loaded the machine
      local b = ex:submit(function() require("tulua").sleep(2) end)
      local done, not_done = futures.wait({a, b}, {return_when = futures.FIRST_COMPLETED})
      assert.is_true(done[a])
      assert.is_true(not_done[b])
      local c = ex:submit(function() require("tulua").sleep(0.03); error("c") end)
      done, not_done = futures.wait({b, c}, {return_when = futures.FIRST_EXCEPTION})
      assert.is_true(done[c])
      assert.is_true(not_done[b])
      done, not_done = futures.wait({a, b, c})
      assert.is_true(done[a] and done[b] and done[c])
      assert.is_nil(next(not_done))
    end)

    it("returns at the timeout with what is not done", function()
      local b = ex:submit(tulua.sleep, 0.3)
      local t0 = tulua.now()
      local done, not_done = futures.wait({b}, {timeout = 0.05})
      assert.is_true(tulua.now() - t0 >= 0.045)
      assert.is_nil(next(done))
      assert.is_true(not_done[b])
      assert.matches("invalid return_when", raised(futures.wait, {b}, {return_when = "SOON"}))
      assert.matches("not a Future", raised(futures.wait, {1}))
      assert.has_error(function() futures.wait({b}, {time_out = 1}) end,
        "bad argument #2 to 'wait' (unknown option 'time_out')")
    end)

    it("with a timeout of 0 or less returns what is done at the call, without letting a task run", function()
      local a = ex:submit(function() return 1 end)
      a:result()
      local b = ex:submit(tulua.sleep, 30)
      for _, timeout in ipairs({0, -1}) do
        local ran = false
        local t = tulua.spawn(function() ran = true end)
        local done, not_done = futures.wait({a, b}, {timeout = timeout})
        assert.are.same({[a] = true}, done)
        assert.are.same({[b] = true}, not_done)
        assert.is_false(ran, "timeout " .. timeout)
        t:join()
      end
      b:cancel()
    end)

    it("with no timeout waits as long as it takes", function()
      local a = ex:submit(tulua.sleep, 0.02)
      local done, not_done = futures.wait({a}, {return_when = futures.ALL_COMPLETED})
      assert.are.same({[a] = true}, done)
      assert.are.same({}, not_done)
    end)

    it("needs no task when it need not wait", function()
      local a = ex:submit(function() return 1 end)
      a:result()
      local got
      table.sort({1, 2}, function() got = futures.wait({a}); return false end)
      assert.are.same({[a] = true}, got)
    end)
  end)

  describe("cancel", function()
    it("drops a queued job: it never runs", function()
      local one = futures.ThreadPoolExecutor(1)
      local mark = temp_path("queued")
      local first = one:submit(tulua.sleep, 0.1)
      local second = one:submit(function(p) require("tulua.fs").write_file(p, "ran") end, mark)
      assert.is_true(second:cancel())
      assert.is_true(second:cancelled())
      assert.is_true(second:done())
      assert.is_true(futures.is_cancelled(raised(second.result, second)))
      first:result()
      one:shutdown(true)
      assert.is_nil(fs.stat(mark))
      assert.is_false(first:cancel())
      -- the executor's workers are gone: its futures still answer
      assert.are.equal("<Future finished>", tostring(first))
      assert.is_false(first:running())
    end)

    it("interrupts a running CPU-bound job, whose to-be-closed variables are closed", function()
      local mark = temp_path("closed")
      local f = ex:submit(function(p)
        local _ <close> = setmetatable({}, {__close = function()
          require("tulua.fs").write_file(p, "closed")
        end})
        local n = 0
        while true do n = n + 1 end
      end, mark)
      assert.is_true(support.eventually(function() return f:running() end))
      assert.are.equal("<Future running>", tostring(f))
      assert.is_true(f:cancel())
      assert.is_true(f:cancelled())
      assert.are.equal("<Future cancelled>", tostring(f))
      assert.is_true(futures.is_cancelled(raised(f.result, f)))
      assert.is_true(support.eventually(function() return fs.stat(mark) ~= nil end))
      assert.are.equal("closed", fs.read_file(mark))
      os.remove(mark)
      -- the worker is free again
      assert.are.equal(3, ex:submit(function() return 3 end):result())
      assert.is_true(support.eventually(function() return ex:timeline()[1].status == "cancelled" end))
    end)

    it("interrupts a running job that waits", function()
      local f = ex:submit(tulua.sleep, 30)
      assert.is_true(support.eventually(function() return f:running() end))
      f:cancel()
      ex:shutdown(true)
      -- a job left to run its 30 s would end "done": cancelled means interrupted
      assert.is_true(f:cancelled())
      assert.are.equal("cancelled", ex:timeline()[1].status)
    end)

    it("interrupts a job whose code runs in a nested coroutine while its task is ready", function()
      local status, stdout, stderr = support.run_fixture("cancel_nested_ready.lua")
      assert.are.equal("", stderr)
      assert.are.equal(("free\n"):rep(20), stdout)
      assert.are.equal(0, status)
    end)
  end)

  describe("a Future made by hand", function()
    it("takes results, an error or a cancel once, and says its state", function()
      local f = futures.Future()
      assert.are.equal("userdata", type(f))
      assert.are.equal("<Future pending>", tostring(f))
      assert.is_true(f:set_running_or_notify_cancel())
      assert.are.equal("<Future running>", tostring(f))
      assert.is_true(f:running())
      f:set_result(1, nil, "three")
      assert.are.equal("<Future finished>", tostring(f))
      assert.are.same({n = 3, 1, nil, "three"}, table.pack(f:result()))
      assert.is_nil(f:exception())
      local err = raised(f.set_result, f, 2)
      assert.is_true(futures.is_error(err, futures.InvalidStateError))
      assert.are.equal("the future is done", err.message)

      local g = futures.Future()
      g:set_exception(nil)
      assert.are.equal("<Future finished raised>", tostring(g))
      assert.are.equal("nil error", raised(g.result, g))
      assert.are.equal("nil error", g:exception())

      local h = futures.Future()
      assert.is_true(h:cancel())
      assert.are.equal("<Future cancelled>", tostring(h))
      assert.is_false(h:set_running_or_notify_cancel())
      assert.is_true(futures.is_cancelled(raised(h.result, h)))
      assert.is_true(futures.is_cancelled(raised(h.exception, h)))
      local r = futures.Future()
      r:set_running_or_notify_cancel()
      err = raised(r.set_running_or_notify_cancel, r)
      assert.is_true(futures.is_error(err, futures.InvalidStateError))
      assert.are.equal("the future is running", err.message)
    end)

    it("wakes the tasks that wait on it, which time out otherwise", function()
      local f = futures.Future()
      local t0 = tulua.now()
      assert.is_true(futures.is_timeout(raised(f.result, f, 0.05)))
      assert.is_true(tulua.now() - t0 >= 0.045)
      local got
      local waiter = tulua.spawn(function() got = table.pack(f:result()) end)
      tulua.sleep(0.01)
      assert.is_nil(got)
      f:set_result("a", "b")
      waiter:join()
      assert.are.same({n = 2, "a", "b"}, got)
      assert.matches("concurrent.futures.Future expected, got table", raised(f.result, {}))
    end)

    it("wakes every waiting task, in the order they waited, and ends a timed wait early", function()
      local f, order = futures.Future(), {}
      local waiters = {}
      for i = 1, 3 do
        waiters[i] = tulua.spawn(function()
          local r = f:result(i == 2 and 30 or nil) -- one waits with a timeout
          order[#order + 1] = i .. r
        end)
      end
      local setter = tulua.spawn(function() tulua.sleep(0.02); f:set_result("x") end)
      for i = 1, 3 do waiters[i]:join() end
      setter:join()
      -- "2x": the timed wait got the result, it did not time out
      assert.are.same({"1x", "2x", "3x"}, order)
      local g = futures.Future()
      local got
      local waiter = tulua.spawn(function() got = g:exception(30) end)
      tulua.spawn(function() g:set_exception("bad") end)
      waiter:join()
      assert.are.equal("bad", got)
    end)

    it("lets a task waiting on result be cancelled, with or without a timeout", function()
      local f = futures.Future()
      for _, timeout in ipairs({false, 30}) do
        local waiter = tulua.spawn(function() return f:result(timeout or nil) end)
        tulua.sleep(0.01)
        waiter:cancel()
        assert.is_true(futures.is_cancelled(raised(waiter.join, waiter)))
        assert.are.equal("<Future pending>", tostring(f))
      end
      -- a task woken by the future, then cancelled before it runs, raises
      -- the cancellation and not the results
      local woken = tulua.spawn(function() return f:result() end)
      tulua.sleep(0.01)
      f:set_result("late")
      woken:cancel()
      assert.is_true(futures.is_cancelled(raised(woken.join, woken)))
      assert.are.equal("late", f:result(0))
    end)

    it("raises CancelledError in the tasks waiting on a future that is cancelled", function()
      local f = futures.Future()
      local errs = {}
      local waiters = {}
      for i = 1, 2 do
        waiters[i] = tulua.spawn(function()
          errs[i] = raised(i == 1 and f.result or f.exception, f, i == 1 and 30 or nil)
        end)
      end
      tulua.sleep(0.01)
      assert.is_true(f:cancel())
      for i = 1, 2 do waiters[i]:join() end
      assert.is_true(futures.is_cancelled(errs[1]))
      assert.is_true(futures.is_cancelled(errs[2]))
      assert.are.equal("future cancelled", tostring(errs[1]))
    end)

    it("checks result's timeout, and times out at once with zero even when not in a task", function()
      local f = futures.Future()
      assert.matches("bad argument #1 to 'result' %(number expected, got string%)$", raised(f.result, f, "1"))
      assert.matches("bad argument #1 to 'exception' %(number expected, got nan%)$", raised(f.exception, f, 0 / 0))
      assert.are.equal("timed out", tostring(raised(f.result, f, -1)))
      local err
      local g = futures.Future()
      g:add_done_callback(function() err = raised(f.result, f) end)
      g:set_result(true)
      assert.matches("attempt to wait in 'result' inside a function called from C", err)
    end)

    it("takes exactly the hooks of bindings/future.h from concurrent.futures", function()
      local set_hooks = require("tulua._future").set_hooks
      local fn = function() end
      assert.matches("%(function 'idle' expected%)$", raised(set_hooks, {remote_error = fn, report = fn}))
      assert.matches("%(unknown hook wait%)$",
        raised(set_hooks, {remote_error = fn, report = fn, idle = fn, wait = fn}))
    end)

    it("reports a failing callback on stderr and still calls the others", function()
      local f, calls, written = futures.Future(), {}, {}
      -- the report goes to the runtime's error callback (the CLI prints it
      -- on stderr as a line of its own), as Python's goes through logging
      local report = tulua._report
      tulua._report = function(text) written[#written + 1] = text end
      local ok, err = pcall(function()
        f:add_done_callback(function() calls[#calls + 1] = 1; error("boom") end)
        f:add_done_callback(function() calls[#calls + 1] = 2 end)
        f:set_result(true)
      end)
      tulua._report = report
      assert(ok, err)
      assert.are.same({1, 2}, calls)
      assert.matches("^exception calling callback for <Future finished>: .*boom$", table.concat(written))
    end)
  end)

  describe("done callbacks", function()
    it("are called with the future when it is done, and at once if it is", function()
      local f = ex:submit(function() return 5 end)
      local seen = {}
      f:add_done_callback(function(g) seen[#seen + 1] = g:result() end)
      f:result()
      assert.are.same({5}, seen)
      f:add_done_callback(function(g) seen[#seen + 1] = g:result() * 2 end)
      assert.are.same({5, 10}, seen)
      assert.matches("function expected", raised(f.add_done_callback, f, 1))
    end)
  end)

  describe("shutdown", function()
    it("waits for the jobs, then refuses new ones", function()
      local f = ex:submit(tulua.sleep, 0.1, "late")
      local t0 = tulua.now()
      ex:shutdown()
      assert.is_true(tulua.now() - t0 >= 0.09)
      assert.is_true(f:done())
      assert.are.equal("cannot schedule new futures after shutdown", raised(ex.submit, ex, print))
    end)

    it("with wait false and cancel_futures returns at once and cancels what is queued", function()
      local one = futures.ThreadPoolExecutor(1)
      -- long enough to be seen running before it ends, however loaded
      local running = one:submit(tulua.sleep, 1)
      local queued = {}
      for i = 1, 5 do queued[i] = one:submit(function() return i end) end
      assert.is_true(support.eventually(function() return running:running() end))
      one:shutdown(false, true)
      -- at once: the running job's result comes only once this task waits
      assert.is_false(running:done())
      for i = 1, 5 do assert.is_true(queued[i]:cancelled()) end
      assert.is_nil(running:result())
    end)

    it("is Python's with as a to-be-closed variable", function()
      local f
      do
        local pool <close> = futures.ThreadPoolExecutor(2)
        f = pool:submit(tulua.sleep, 0.05, "x")
      end
      assert.is_true(f:done())
    end)

    it("leaves no thread, descriptor or memory behind after 10,000 futures", function()
      local threads, fds = thread_count(), support.fd_count()
      local function round()
        local pool <close> = futures.ThreadPoolExecutor(2)
        local list = {}
        for i = 1, 10000 do list[i] = pool:submit(function(x) return x + 1 end, i) end
        local sum = 0
        for i = 1, #list do sum = sum + list[i]:result() end
        assert.are.equal(10000 * 10001 // 2 + 10000, sum)
      end
      round()
      collectgarbage()
      collectgarbage()
      local kb = collectgarbage("count")
      round()
      collectgarbage()
      collectgarbage()
      assert.is_true(collectgarbage("count") < kb + 64, "grew from " .. kb .. " to " .. collectgarbage("count"))
      assert.are.equal(fds, support.fd_count())
      assert.is_true(support.eventually(function() return thread_count() == threads end))
    end)

    it("joins the threads of an executor collected without shutdown", function()
      local threads = thread_count()
      do
        local pool = futures.ThreadPoolExecutor(3)
        for i = 1, 3 do pool:submit(tulua.sleep, 0.01 * i):result() end
      end
      assert.is_true(support.eventually(function()
        collectgarbage()
        return thread_count() == threads
      end))
    end)
  end)

  describe("workers", function()
    it("are whole runtimes on threads of their own, not libuv's", function()
      local hog = futures.ThreadPoolExecutor(4)
      local spinning = {}
      for i = 1, 4 do spinning[i] = hog:submit(spin) end
      assert.is_true(support.eventually(function()
        for i = 1, 4 do if not spinning[i]:running() then return false end end
        return true
      end))
      -- on libuv's 4 threads, the stat would wait for a spinner to end,
      -- which only the cancels below make them do
      assert.is_truthy(fs.stat("/"))
      for i = 1, 4 do assert.is_true(spinning[i]:running()) end
      for i = 1, 4 do spinning[i]:cancel() end
      hog:shutdown(true)
      assert.are.equal(4, #hog:timeline())
    end)

    it("refuse os.exit, which would end the whole process", function()
      local f = ex:submit(function() os.exit(3) end)
      assert.matches("os.exit in a thread%-pool worker would end the whole process", raised(f.result, f))
    end)

    it("run an initializer with its arguments first", function()
      local pool <close> = futures.ThreadPoolExecutor(1, {
        initializer = function(a, b) _G.worker_setting = a .. b end, initargs = {"x", "y"}})
      assert.are.equal("xy", pool:submit(function() return _G.worker_setting end):result())
    end)

    it("break the pool when the initializer fails", function()
      local pool = futures.ThreadPoolExecutor(1, {initializer = function() error("no init", 0) end})
      local f = pool:submit(function() return 1 end)
      local err = raised(f.result, f)
      assert.are.equal("EBROKEN", err.code)
      assert.matches("the initializer failed: no init", tostring(err))
      assert.is_true(support.eventually(function()
        local ok, e = pcall(pool.submit, pool, print)
        return not ok and e.code == "EBROKEN"
      end))
      pool:shutdown(true)
    end)

    it("may run an executor of their own", function()
      local f = ex:submit(function()
        local inner <close> = require("concurrent.futures").ThreadPoolExecutor(1)
        return inner:submit(function(x) return x * 3 end, 14):result()
      end)
      assert.are.equal(42, f:result())
    end)

    it("say which worker ran each job in the timeline", function()
      for i = 1, 4 do ex:submit(tulua.sleep, 0.01 * i) end
      ex:shutdown(true)
      local tl = ex:timeline()
      assert.are.equal(4, #tl)
      for i, rec in ipairs(tl) do
        assert.are.equal(i, rec.index)
        assert.is_true(rec.worker == 1 or rec.worker == 2)
        assert.is_true(rec.finish >= rec.start and rec.start >= 0)
        assert.are.equal("done", rec.status)
      end
    end)

    it("load a function without upvalues once, and give it its own globals", function()
      local one <close> = futures.ThreadPoolExecutor(1)
      local function same_as_last()
        local me = debug.getinfo(1, "f").func
        local same = rawget(_G, "last_job") == me
        rawset(_G, "last_job", me)
        return same, _ENV == _G
      end
      assert.are.same({false, true}, {one:submit(same_as_last):result()})
      for _ = 1, 3 do assert.are.same({true, true}, {one:submit(same_as_last):result()}) end
      assert.is_nil(rawget(_G, "last_job"), "the worker's globals are its own")
    end)

    it("run more distinct functions than a worker keeps loaded", function()
      local one <close> = futures.ThreadPoolExecutor(1)
      local fns, futs = {}, {}
      for i = 1, 600 do -- each its own bytecode
        fns[i] = load("return function(x) return x + " .. i .. " end")()
        futs[i] = one:submit(fns[i], 1000)
      end
      for i = 1, 600 do assert.are.equal(1000 + i, futs[i]:result()) end
      -- one sent before the worker emptied its cache is loaded again
      assert.are.equal(1001, one:submit(fns[1], 1000):result())
    end)
  end)

  describe("job numbers", function()
    local job_of = require("tulua._future").job

    it("are reused once a job is done, while the timeline keeps the submission order", function()
      local a = ex:submit(tulua.sleep, 1) -- still in flight when c comes
      local b = ex:submit(tulua.sleep, 0.01)
      local _, ida = job_of(a)
      local _, idb = job_of(b)
      assert.are_not.equal(ida, idb, "two jobs in flight have two numbers")
      b:result()
      local c = ex:submit(function() return "c" end)
      local _, idc = job_of(c)
      assert.are.equal(idb, idc, "b's number is free once b is done")
      assert.are.equal("c", c:result())
      a:result()
      local tl = ex:timeline()
      assert.are.same({1, 2, 3}, {tl[1].index, tl[2].index, tl[3].index})
      assert.is_nil(job_of(futures.Future()), "a future made by hand has no job")
    end)

    it("of a job refused at submit are not lost", function()
      local first = ex:submit(function() return 1 end)
      local _, id1 = job_of(first)
      assert.matches("cannot transfer a userdata", raised(ex.submit, ex, print, io.stdout))
      local second = ex:submit(function() return 2 end)
      local _, id2 = job_of(second)
      assert.are.equal(id1 + 1, id2)
      assert.are.same({1, 2}, {first:result(), second:result()})
    end)
  end)

  describe("the module", function()
    it("counts CPUs and picks Python's default worker counts", function()
      assert.is_true(math.type(futures.cpu_count()) == "integer" and futures.cpu_count() >= 1)
      assert.is_true(futures.process_cpu_count() <= futures.cpu_count())
      local pool = futures.ThreadPoolExecutor()
      assert.are.equal(math.min(32, futures.process_cpu_count() + 4), pool:max_workers())
      pool:shutdown()
      assert.matches("max_workers must be a positive integer", raised(futures.ThreadPoolExecutor, 0))
      assert.has_error(function() futures.ThreadPoolExecutor(1025) end,
        "bad argument #1 to 'ThreadPoolExecutor' (max_workers must be 1 to 1024)")
      assert.matches("initializer must be a function", raised(futures.ThreadPoolExecutor, 1, {initializer = 1}))
    end)

    it("raises for an unknown option of an executor, as process.spawn does", function()
      assert.has_error(function() futures.ThreadPoolExecutor(1, {initialiser = print}) end,
        "bad argument #2 to 'ThreadPoolExecutor' (unknown option 'initialiser')")
      assert.has_error(function() futures.ThreadPoolExecutor(1, {max_tasks_per_child = 1}) end,
        "bad argument #2 to 'ThreadPoolExecutor' (unknown option 'max_tasks_per_child')")
      assert.has_error(function() futures.ProcessPoolExecutor(1, {max_task_per_child = 1}) end,
        "bad argument #2 to 'ProcessPoolExecutor' (unknown option 'max_task_per_child')")
      assert.has_error(function() futures.ProcessPoolExecutor(1, {mp_context = "spawn"}) end,
        "bad argument #2 to 'ProcessPoolExecutor' (unknown option 'mp_context')")
      assert.has_error(function() futures.ProcessPoolExecutor(1, {thread_name_prefix = "x"}) end,
        "bad argument #2 to 'ProcessPoolExecutor' (unknown option 'thread_name_prefix')")
      assert.has_error(function() futures.ThreadPoolExecutor(1, {"x"}) end,
        "bad argument #2 to 'ThreadPoolExecutor' (unknown option '1')")
    end)

    it("lets a script end while its jobs finish, and an idle pool does not keep it alive", function()
      local status, stdout, stderr = support.run_fixture("futures_exit.lua")
      assert.are.equal("", stderr)
      assert.are.equal(0, status)
      assert.are.equal("main done\ncallback 42\n", stdout)
    end)
  end)

  describe("at the REPL", function()
    it("runs functions typed at the prompt in a thread pool and a process pool", function()
      local input = os.tmpname()
      support.write_file(input, table.concat({
        'futures = require "concurrent.futures"',
        'ex = futures.ThreadPoolExecutor(2)',
        'function sq(x) return x * x end',
        'print("sq", ex:submit(sq, 7):result())',
        'for r in ex:map(sq, {1, 2, 3}) do io.write(r, " ") end print()',
        'ex:shutdown()',
        -- Python's process pool cannot pickle a function defined at the prompt
        'px = futures.ProcessPoolExecutor(1)',
        'local k = 3 function cube(x) return x ^ k // 1 end',
        'print("cube", px:submit(cube, 4):result())',
        'px:shutdown()',
      }, "\n") .. "\n")
      local cmd = support.shell_quote(support.TULUA) .. " -i < " .. support.shell_quote(input) .. " 2>&1"
      local p = assert(io.popen(cmd))
      local out = p:read("a")
      p:close()
      os.remove(input)
      assert.matches("sq\t49\n", out)
      assert.matches("1 4 9 \n", out)
      assert.matches("cube\t64.0\n", out)
    end)
  end)

  describe("asyncio", function()
    it("wraps a future, runs in an executor and runs to_thread", function()
      asyncio.run(function()
        assert.are.same({3, "x"}, {asyncio.to_thread(function(a, b) return a + b, "x" end, 1, 2)})
        local loop = asyncio.get_running_loop()
        local af = loop:run_in_executor(ex, function() return "from pool" end)
        assert.are.equal("from pool", af:join())
        local failing = asyncio.wrap_future(ex:submit(function() error("bad", 0) end))
        assert.matches("^bad", raised(failing.join, failing))
        loop:shutdown_default_executor()
      end)
    end)

    it("cancels the job when the asyncio side is cancelled", function()
      local f = ex:submit(spin)
      asyncio.run(function()
        assert.is_true(asyncio.is_timeout(raised(asyncio.wait_for, asyncio.wrap_future(f), 0.05)))
      end)
      assert.is_true(support.eventually(function() return f:cancelled() end))
    end)
  end)

  describe("at the API boundary", function()
    it("checks an executor method's self, blaming the caller with a bad argument error", function()
      assert.has_error(function() futures.Executor.map({}, print, {1}) end,
        "bad argument #1 to 'map' (concurrent.futures.Executor expected, got table)")
      assert.has_error(function() futures.Executor.shutdown(3) end,
        "bad argument #1 to 'shutdown' (concurrent.futures.Executor expected, got number)")
      assert.has_error(function() futures.Executor.max_workers() end,
        "bad argument #1 to 'max_workers' (concurrent.futures.Executor expected, got nil)")
    end)
  end)
end)
