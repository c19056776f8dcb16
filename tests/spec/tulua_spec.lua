-- The core module 'tulua': tasks (spawn, Task methods, current), sleep and
-- now. Spec bodies run in the main task, so they wait directly. Fixtures run
-- as separate tulua processes: TULUA names the binary (default build/tulua).
local tulua = require("tulua")

local HERE = debug.getinfo(1, "S").short_src -- as error positions show it
package.path = (debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or ".") .. "/?.lua;" .. package.path
local support = require("support")
local run_fixture = support.run_fixture
local TULUA, FIXTURES = support.TULUA, support.FIXTURES
local error_of = support.error_in(HERE)

local raised = support.raised

-- The traceback a string error raised by error() at line `line` of the
-- function defined at line `defined` of this file gets in a task.
local function task_traceback(msg, line, defined)
  return string.format("%s:%d: %s\nstack traceback:\n\t[C]: in function 'error'\n\t%s:%d: in function <%s:%d>",
    HERE, line, msg, HERE, line, HERE, defined)
end

describe("tulua", function()
  describe("main chunk", function()
    it("is a task, so a script may sleep at its top level", function()
      assert.are.same({0, "slept true\nmain is a task: true\n", ""}, {run_fixture("main_sleep.lua")})
    end)

    it("runs the spec bodies in a running task", function()
            local me = tulua.current()
      assert.are.equal("thread", type(me)) -- a Task is its own thread
      assert.are.equal("running", me:status())
    end)

    it("lets the process run until the spawned tasks have finished", function()
      assert.are.same({0, "main returns\ntask done\n", ""}, {run_fixture("wait_for_tasks.lua")})
    end)

    it("lets the process exit 0 after a timer pending at the end of the script ran", function()
      assert.are.same({0, "main returns\ntimer ran: late\n", ""}, {run_fixture("pending_timer.lua")})
    end)
  end)

  describe("spawn", function()
    it("returns a Task that has not run yet", function()
      local ran = false
      local t = tulua.spawn(function() ran = true end)
            assert.are.equal("thread", type(t))
      assert.are.equal("ready", t:status())
      assert.is_truthy(tostring(t):match("^thread: 0x")) -- as in lua5.4
      assert.is_false(ran)
      t:join()
      assert.is_true(ran)
    end)

    it("passes every argument, nils included", function()
      local t = tulua.spawn(function(...) return select("#", ...), ... end, 1, nil, "three", nil)
      assert.are.same({n = 5, 4, 1, nil, "three", nil}, table.pack(t:join()))
    end)

    it("raises for a value that is not a function", function()
      assert.are.equal("bad argument #1 to 'spawn' (function expected, got number)",
        error_of(function() tulua.spawn(42) end))
    end)

    it("runs tasks in the order they were spawned", function()
      local order = {}
      local tasks = {}
      for i = 1, 5 do
        tasks[i] = tulua.spawn(function() order[#order + 1] = i end)
      end
      for _, t in ipairs(tasks) do t:join() end
      assert.are.same({1, 2, 3, 4, 5}, order)
    end)

    it("runs a task nobody refers to until its end", function()
      local reached = {}
      tulua.spawn(function()
        tulua.sleep(0.01)
        collectgarbage("collect")
        tulua.sleep(0.01)
        reached.yes = true
      end)
      collectgarbage("collect")
      for _ = 1, 200 do
        if reached.yes then break end
        tulua.sleep(0.005)
        collectgarbage("collect")
      end
      assert.is_true(reached.yes)
    end)
  end)

  describe("current", function()
    it("returns the Task that runs the calling code", function()
      local t
      t = tulua.spawn(function() return tulua.current() end)
      assert.are.equal(t, (t:join()))
    end)

    it("returns a different Task in every task", function()
      local a = tulua.spawn(tulua.current)
      local b = tulua.spawn(tulua.current)
      assert.are_not.equal(a:join(), b:join())
      assert.are_not.equal(tulua.current(), (a:join()))
    end)
  end)

  describe("Task", function()
    describe("join", function()
      it("returns the function's results, nils included", function()
        local t = tulua.spawn(function()
          tulua.sleep(0.01)
          return 1, nil, "three", nil
        end)
        assert.are.same({n = 4, 1, nil, "three", nil}, table.pack(t:join()))
      end)

      it("returns no value for a function that returns nothing", function()
        local t = tulua.spawn(function() end)
        assert.are.equal(0, select("#", t:join()))
      end)

      it("returns the results again when joined twice", function()
        local t = tulua.spawn(function() return "a", "b" end)
        assert.are.same({"a", "b"}, {t:join()})
        assert.are.same({"a", "b"}, {t:join()})
      end)

      it("waits for the task to finish", function()
        local t0 = tulua.now()
        local t = tulua.spawn(function() tulua.sleep(0.1) return "late" end)
        assert.are.equal("late", t:join())
        assert.is_true(tulua.now() - t0 >= 0.095)
      end)

      it("lets several tasks wait for the same task", function()
        local target = tulua.spawn(function() tulua.sleep(0.02) return 7 end)
        local a = tulua.spawn(function() return target:join() * 2 end)
        local b = tulua.spawn(function() return target:join() * 3 end)
        assert.are.same({14, 21}, {a:join(), b:join()})
      end)

      it("re-raises a string error with the task's traceback attached", function()
        local defined = debug.getinfo(1, "l").currentline + 1
        local t = tulua.spawn(function()
          error("boom")
        end)
        local expected = task_traceback("boom", defined + 1, defined)
        assert.are.equal(expected, raised(t.join, t))
        assert.are.equal(expected, raised(t.join, t))
      end)

      it("re-raises a table error as the same object", function()
        local e = {reason = "mine"}
        local t = tulua.spawn(function()
          tulua.sleep(0)
          error(e)
        end)
        assert.are.equal(e, raised(t.join, t))
      end)

      it("re-raises an error object with __tostring as the same object", function()
        local e = setmetatable({}, {__tostring = function() return "custom" end})
        local t = tulua.spawn(function() error(e) end)
        assert.are.equal(e, raised(t.join, t))
      end)

      it("raises when a task joins itself", function()
        local t = tulua.spawn(function()
          local me = tulua.current()
          return error_of(function() me:join() end)
        end)
        assert.are.equal("a task cannot join itself", t:join())
      end)

      it("raises for a value that is not a Task", function()
        local join = tulua.current().join
        assert.are.equal("bad argument #1 to 'join' (Task expected, got table)",
          error_of(function() join({}) end))
      end)
    end)

    describe("result", function()
      it("raises for a task that has not finished", function()
        local t = tulua.spawn(function() tulua.sleep(0.01) end)
        local err = raised(t.result, t)
        assert.are.equal("EINVALIDSTATE", err.code)
        assert.are.equal("attempt to get the result of an unfinished task", tostring(err))
        tulua.sleep(0)
        assert.are.equal("waiting", t:status())
        err = raised(t.result, t)
        assert.are.equal("attempt to get the result of an unfinished task", tostring(err))
        t:join()
      end)

      it("returns the results of a finished task without waiting", function()
        local t = tulua.spawn(function() return 1, nil, 3 end)
        t:join()
        assert.are.same({n = 3, 1, nil, 3}, table.pack(t:result()))
      end)

      it("raises the error of a failed task, with its traceback", function()
        local defined = debug.getinfo(1, "l").currentline + 1
        local t = tulua.spawn(function()
          error("bad")
        end)
        local expected = task_traceback("bad", defined + 1, defined)
        assert.are.equal(expected, raised(t.join, t)) -- joined: not reported
        assert.are.equal(expected, raised(t.result, t))
      end)
    end)

    describe("done", function()
      it("is false until the task returned, then true", function()
        local t = tulua.spawn(function() tulua.sleep(0.01) end)
        assert.is_false(t:done())
        tulua.sleep(0)
        assert.is_false(t:done())
        t:join()
        assert.is_true(t:done())
      end)

      it("is true for a task that failed or was cancelled", function()
        local failed = tulua.spawn(function() error("x") end)
        pcall(failed.join, failed)
        local cancelled = tulua.spawn(function() tulua.sleep(10) end)
        cancelled:cancel()
        pcall(cancelled.join, cancelled)
        assert.are.same({true, true}, {failed:done(), cancelled:done()})
      end)
    end)

    describe("status", function()
      it("names each state of a task's life", function()
        local t = tulua.spawn(function()
          tulua.sleep(0.01)
          return tulua.current():status()
        end)
        assert.are.equal("ready", t:status())
        tulua.sleep(0)
        assert.are.equal("waiting", t:status())
        assert.are.equal("running", t:join())
        assert.are.equal("done", t:status())
      end)

      it("is 'failed' for a task that raised", function()
        local t = tulua.spawn(function() error("x") end)
        pcall(t.join, t)
        assert.are.equal("failed", t:status())
        assert.is_false(t:cancelled())
      end)
    end)

    describe("cancel", function()
      it("makes a sleeping task raise a cancellation error", function()
        local t = tulua.spawn(function() tulua.sleep(10) end)
        tulua.sleep(0)
        assert.are.equal("waiting", t:status())
        assert.is_true(t:cancel())
        local err = raised(t.join, t)
        assert.are.equal("ECANCELED", err.code)
        assert.are.equal("cancelled", t:status())
        assert.is_true(t:cancelled())
        assert.is_true(t:done())
      end)

      it("raises the cancellation error from result() too", function()
        local t = tulua.spawn(function() tulua.sleep(10) end)
        tulua.sleep(0)
        t:cancel()
        assert.are.equal("ECANCELED", raised(t.join, t).code)
        assert.are.equal("ECANCELED", raised(t.result, t).code)
      end)

      it("stops a task that never ran: it never runs", function()
        local ran = false
        local t = tulua.spawn(function() ran = true end)
        assert.is_true(t:cancel())
        assert.are.equal("ECANCELED", raised(t.join, t).code)
        assert.is_false(ran)
        assert.are.equal("cancelled", t:status())
      end)

      it("returns false for a task that finished", function()
        local done = tulua.spawn(function() return "ok" end)
        local failed = tulua.spawn(function() error("x") end)
        pcall(failed.join, failed)
        done:join()
        assert.are.same({false, false}, {done:cancel(), failed:cancel()})
        assert.are.same({"done", "failed"}, {done:status(), failed:status()})
        assert.are.equal("ok", done:join())
      end)

      it("lets a task that catches the cancellation clean up and return normally", function()
        local t = tulua.spawn(function()
          local ok, err = pcall(tulua.sleep, 10)
          tulua.sleep(0.01) -- waiting again works after a caught cancellation
          return "cleaned up", ok, err.code
        end)
        tulua.sleep(0)
        assert.is_true(t:cancel())
        assert.are.same({"cleaned up", false, "ECANCELED"}, {t:join()})
        assert.are.equal("done", t:status())
        assert.is_false(t:cancelled())
      end)

      it("closes the to-be-closed variables of the cancelled task", function()
        local closed_with
        local t = tulua.spawn(function()
          local guard <close> = setmetatable({}, { -- luacheck: no unused
            __close = function(_, err) closed_with = err end,
          })
          tulua.sleep(10)
        end)
        tulua.sleep(0)
        t:cancel()
        local err = raised(t.join, t)
        assert.are.equal("ECANCELED", err.code)
        assert.are.equal(err, closed_with)
      end)

      it("lets a task cancel itself: it gets the error at its next wait", function()
        local steps = {}
        local t = tulua.spawn(function()
          steps[#steps + 1] = tulua.current():cancel()
          steps[#steps + 1] = "still running"
          tulua.sleep(0)
          steps[#steps + 1] = "not reached"
        end)
        assert.are.equal("ECANCELED", raised(t.join, t).code)
        assert.are.same({true, "still running"}, steps)
        assert.are.equal("cancelled", t:status())
      end)

      it("ends a task that cancelled itself and returned without waiting as cancelled", function()
        local t = tulua.spawn(function()
          tulua.current():cancel()
          return "ignored"
        end)
        assert.are.equal("ECANCELED", raised(t.join, t).code)
        assert.is_true(t:cancelled())
      end)

      it("stops a task waiting in join, not the task it joins", function()
        local target = tulua.spawn(function() tulua.sleep(0.02) return "target done" end)
        local joiner = tulua.spawn(function() return target:join() end)
        tulua.sleep(0)
        joiner:cancel()
        assert.are.equal("ECANCELED", raised(joiner.join, joiner).code)
        assert.are.equal("target done", target:join())
      end)

      it("raises an error object that tostring turns into text", function()
        local t = tulua.spawn(function() tulua.sleep(10) end)
        tulua.sleep(0)
        t:cancel()
        local err = raised(t.join, t)
        assert.are.equal("string", type(tostring(err)))
        assert.are.equal("tulua.error", getmetatable(err).__name)
      end)
    end)
  end)

  describe("now", function()
    it("returns seconds as a float", function()
      -- seconds, not milliseconds: no more than the wall clock's seconds
      -- around the same interval (os.time counts whole ones), whatever the load
      local w0 = os.time()
      local t0 = tulua.now()
      tulua.sleep(0.1)
      local elapsed = tulua.now() - t0
      local wall = os.time() - w0
      assert.are.equal("float", math.type(t0))
      assert.is_true(elapsed >= 0.095, "elapsed " .. elapsed)
      assert.is_true(elapsed <= wall + 1, "elapsed " .. elapsed .. ", wall " .. wall)
    end)

    it("never goes back", function()
      local last = tulua.now()
      for _ = 1, 1000 do
        local now = tulua.now()
        assert.is_true(now >= last)
        last = now
      end
    end)
  end)

  describe("sleep", function()
    it("waits at least the given number of seconds", function()
      local t0 = tulua.now()
      tulua.sleep(0.1)
      local elapsed = tulua.now() - t0
      assert.is_true(elapsed >= 0.095, "elapsed " .. elapsed)
    end)

    it("returns no value", function()
      assert.are.equal(0, select("#", tulua.sleep(0)))
      assert.are.equal(0, select("#", tulua.sleep(0.001)))
    end)

    it("returns its arguments after the duration", function()
      assert.are.same({n = 3, "a", nil, 3}, table.pack(tulua.sleep(0, "a", nil, 3)))
      assert.are.same({n = 1, "r"}, table.pack(tulua.sleep(0.001, "r")))
    end)

    it("with 0 lets the other ready tasks run", function()
      local ran = false
      tulua.spawn(function() ran = true end)
      tulua.sleep(0)
      assert.is_true(ran)
    end)

    it("with 0 lets the loop run its timers", function()
      local fired = false
      local tm <close> = tulua.timer.after(0.001, function() fired = true end) -- luacheck: no unused
      local t0 = tulua.now()
      while not fired and tulua.now() - t0 < 30 do -- a watchdog, however loaded
        tulua.sleep(0)
      end
      assert.is_true(fired)
    end)

    it("with 0 makes two tasks alternate in strict order", function()
      local log = {}
      local function worker(name)
        for i = 1, 3 do
          log[#log + 1] = name .. i
          tulua.sleep(0)
        end
      end
      local a, b = tulua.spawn(worker, "a"), tulua.spawn(worker, "b")
      a:join()
      b:join()
      assert.are.same({"a1", "b1", "a2", "b2", "a3", "b3"}, log)
    end)

    it("wakes sleepers in the order of their deadlines", function()
      local log = {}
      local tasks = {}
      for _, d in ipairs({0.06, 0.02, 0.04}) do
        tasks[#tasks + 1] = tulua.spawn(function()
          tulua.sleep(d)
          log[#log + 1] = d
        end)
      end
      for _, t in ipairs(tasks) do t:join() end
      assert.are.same({0.02, 0.04, 0.06}, log)
    end)

    it("wakes sleepers with equal deadlines in the order they slept", function()
      local log = {}
      local tasks = {}
      for i = 1, 5 do
        tasks[i] = tulua.spawn(function()
          tulua.sleep(0.02)
          log[#log + 1] = i
        end)
      end
      for _, t in ipairs(tasks) do t:join() end
      assert.are.same({1, 2, 3, 4, 5}, log)
    end)

    it("raises for a duration that is not a number", function()
      assert.are.equal("bad argument #1 to 'sleep' (number expected, got string)",
        error_of(function() tulua.sleep("x") end))
      assert.are.equal("bad argument #1 to 'sleep' (number expected, got no value)",
        error_of(function() tulua.sleep() end))
    end)

    it("raises for a negative or NaN duration", function()
      assert.are.equal("bad argument #1 to 'sleep' (negative or NaN duration)",
        error_of(function() tulua.sleep(-1) end))
      assert.are.equal("bad argument #1 to 'sleep' (negative or NaN duration)",
        error_of(function() tulua.sleep(0 / 0) end))
    end)

    it("raises outside any task, in a finalizer run as the runtime closes", function()
      assert.are.same({0, "false: attempt to wait in 'tulua.sleep' outside a task\n", ""},
        {run_fixture("wait_at_exit.lua")})
    end)

    describe("inside a function called from C that cannot yield", function()
      local MSG = "attempt to wait in 'tulua.sleep' inside a function called from C that cannot yield"
        .. " (such as a 'table.sort' comparator or a 'string.gsub' callback)"

      it("raises in a table.sort comparator", function()
        assert.are.equal(MSG, error_of(function()
          table.sort({3, 2, 1}, function(a, b)
            tulua.sleep(0)
            return a < b
          end)
        end))
      end)

      it("raises in a string.gsub callback", function()
        assert.are.equal(MSG, error_of(function()
          string.gsub("abc", "%w", function(c)
            tulua.sleep(0)
            return c
          end)
        end))
      end)

      it("raises in a __gc metamethod", function()
        local seen
        do
          setmetatable({}, {__gc = function()
            local ok, err = pcall(tulua.sleep, 0)
            seen = {ok, err}
          end})
        end
        collectgarbage("collect")
        collectgarbage("collect")
        assert.are.same({false, MSG}, seen)
      end)
    end)

    describe("works", function()
      it("inside pcall", function()
        assert.are.same({true, "after"}, {pcall(function()
          tulua.sleep(0.01)
          return "after"
        end)})
      end)

      it("inside xpcall, and its handler sees errors raised after the wait", function()
        local ok, err = xpcall(function()
          tulua.sleep(0.01)
          error("late", 0)
        end, function(m) return "handled: " .. m end)
        assert.are.same({false, "handled: late"}, {ok, err})
      end)

      it("inside an __index function", function()
        local t = setmetatable({}, {__index = function(_, k)
          tulua.sleep(0.01)
          return k .. "!"
        end})
        assert.are.equal("key!", t.key)
      end)

      it("inside an __add metamethod", function()
        local mt = {}
        mt.__add = function(a, b)
          tulua.sleep(0.01)
          return a.n + b
        end
        assert.are.equal(42, setmetatable({n = 40}, mt) + 2)
      end)

      it("inside a for-loop iterator function", function()
        local function iter(_, i)
          tulua.sleep(0.001)
          if i < 3 then return i + 1 end
        end
        local got = {}
        for i in iter, nil, 0 do got[#got + 1] = i end
        assert.are.same({1, 2, 3}, got)
      end)

      it("inside a module's main chunk while require loads it", function()
        local saved = package.path
        package.path = FIXTURES .. "/?.lua;" .. package.path
        local ok, m, where = pcall(require, "slow_module")
        package.path = saved
        package.loaded.slow_module = nil
        assert.is_true(ok, m)
        assert.are.equal("slow_module", m.name)
        assert.are.equal(FIXTURES .. "/slow_module.lua", where)
        assert.is_true(m.waited >= 0.019, "waited " .. m.waited)
      end)

      it("while other tasks run", function()
        local other = tulua.spawn(function() return "other ran" end)
        tulua.sleep(0.01)
        assert.is_true(other:done())
        assert.are.equal("other ran", other:join())
      end)
    end)
  end)

  describe("park and unpark", function()
    it("suspend a task until another unparks it", function()
      local order = {}
      local t = tulua.spawn(function()
        order[#order + 1] = "parked"
        local ok = tulua.park()
        order[#order + 1] = "woken"
        return ok
      end)
      tulua.sleep(0)
      assert.are.equal("waiting", t:status())
      assert.is_true(tulua.unpark(t))
      assert.is_false(tulua.unpark(t)) -- woken already: not parked any more
      assert.are.equal(true, t:join())
      assert.are.same({"parked", "woken"}, order)
    end)

    it("unpark returns false for a task that is not parked", function()
      local sleeper = tulua.spawn(tulua.sleep, 0.01)
      assert.is_false(tulua.unpark(sleeper)) -- not started yet
      tulua.sleep(0)
      assert.is_false(tulua.unpark(sleeper)) -- sleeping
      sleeper:join()
      assert.is_false(tulua.unpark(sleeper)) -- finished
      assert.is_false(tulua.unpark(tulua.current())) -- running
    end)

    it("park returns false and the cancellation instead of raising it", function()
      local t = tulua.spawn(function() return tulua.park() end)
      tulua.sleep(0)
      t:cancel("stop it")
      local ok, err = t:join()
      assert.is_false(ok)
      assert.are.equal("ECANCELED", err.code)
      assert.are.equal("stop it", tostring(err))
    end)

    it("park returns a cancellation that came before it at once", function()
      local t = tulua.spawn(function()
        tulua.current():cancel()
        return tulua.park()
      end)
      local ok, err = t:join()
      assert.is_false(ok)
      assert.are.equal("task cancelled", tostring(err))
    end)

    it("a task cancelled after its unpark gets the cancellation", function()
      local t = tulua.spawn(function() return tulua.park() end)
      tulua.sleep(0)
      assert.is_true(tulua.unpark(t))
      t:cancel()
      local ok, err = t:join()
      assert.is_false(ok)
      assert.are.equal("ECANCELED", err.code)
    end)

    it("raise where a task cannot wait", function()
      assert.are.equal("attempt to wait in 'tulua.park' inside a function called from C that cannot yield"
        .. " (such as a 'table.sort' comparator or a 'string.gsub' callback)",
        error_of(function() table.sort({2, 1}, function(a, b) tulua.park(); return a < b end) end))
      assert.are.equal("bad argument #1 to 'unpark' (Task expected, got no value)",
        error_of(function() tulua.unpark() end))
    end)
  end)

  describe("can_wait", function()
    it("is true in a task and false where Lua cannot yield", function()
      assert.is_true(tulua.can_wait())
      local inside
      table.sort({2, 1}, function(a, b) inside = tulua.can_wait(); return a < b end)
      assert.is_false(inside)
    end)

    it("is true in a __close run by the end of a block or by an error caught in the task", function()
      local seen = {}
      local function closer() return setmetatable({}, {__close = function() seen[#seen + 1] = tulua.can_wait() end}) end
      do local _ <close> = closer() end
      pcall(function()
        local _ <close> = closer()
        error("out")
      end)
      assert.are.same({true, true}, seen)
    end)

    it("is false in a __close run as a plain task dies of an error, true in a protected task", function()
      local seen = {}
      local function body()
        local _ <close> = setmetatable({}, {__close = function() seen[#seen + 1] = tulua.can_wait() end})
        error("dies", 0)
      end
      for _, spawn in ipairs({tulua.spawn, tulua.spawn_protected}) do
        local t = spawn(body)
        t:add_done_callback(function() end) -- handled: not reported
        assert.are.equal("dies", raised(t.join, t):match("^[^\n]*"))
      end
      assert.are.same({false, true}, seen)
    end)
  end)

  describe("spawn_protected", function()
    it("starts a task like spawn: results, arguments and errors", function()
      local t = tulua.spawn_protected(function(a, b) tulua.sleep(0); return a + b, nil, "x" end, 1, 2)
      assert.are.same({n = 3, 3, nil, "x"}, table.pack(t:join()))
      local bad = tulua.spawn_protected(function() error({code = "E"}) end)
      assert.are.same({code = "E"}, raised(bad.join, bad))
      assert.are.equal("bad argument #1 to 'spawn_protected' (function expected, got no value)",
        error_of(function() tulua.spawn_protected() end))
    end)

    it("lets a __close at the task's top level wait when the task fails", function()
      local log = {}
      local t = tulua.spawn_protected(function()
        local _ <close> = setmetatable({}, {__close = function(_, err)
          tulua.sleep(0.01)
          log[#log + 1] = "closed after " .. err
        end})
        error("failure", 0)
      end)
      assert.are.equal("failure", raised(t.join, t):match("^[^\n]*"))
      assert.are.same({"closed after failure"}, log)
    end)

    it("keeps the traceback of the error's place in the report", function()
      local status, stdout, stderr = run_fixture("protected_error.lua")
      assert.are.equal(1, status)
      assert.are.equal("", stdout)
      assert.are.equal(TULUA .. ": protected_error.lua:6: deep\n"
        .. "stack traceback:\n"
        .. "\t[C]: in function 'error'\n"
        .. "\tprotected_error.lua:6: in upvalue 'inner'\n"
        .. "\tprotected_error.lua:10: in function <protected_error.lua:9>\n"
        .. "\t[C]: in ?\n", stderr)
    end)
  end)

  describe("all_tasks", function()
    it("lists the unfinished tasks", function()
      local a = tulua.spawn(tulua.sleep, 0.01)
      local b = tulua.spawn(function() end)
      local set = {}
      for _, t in ipairs(tulua.all_tasks()) do set[t] = true end
      assert.is_true(set[a] and set[b] and set[tulua.current()])
      b:join()
      set = {}
      for _, t in ipairs(tulua.all_tasks()) do set[t] = true end
      assert.is_nil(set[b])
      a:join()
    end)
  end)

  describe("new_error", function()
    it("makes an error object like the cancellation error", function()
      local e = tulua.new_error("EMINE", "my message")
      assert.are.equal("EMINE", e.code)
      assert.are.equal("my message", e.message)
      assert.are.equal("my message", tostring(e))
      local t = tulua.spawn(tulua.sleep, 1)
      t:cancel()
      local _, c = pcall(t.join, t)
      assert.are.equal(getmetatable(c), getmetatable(e))
    end)
  end)

  describe("Task extras", function()
    it("tulua.Task holds the methods of every task, and a module may add one", function()
      assert.are.equal(tulua.Task.join, tulua.current().join)
      tulua.Task.twice = function(t) return t:get_name() .. t:get_name() end
      local t = tulua.spawn(function() end)
      t:set_name("x")
      assert.are.equal("xx", t:twice())
      tulua.Task.twice = nil
    end)

    it("exception() gives the error of a failed task, nil for one that returned", function()
      local bad = tulua.spawn(function() error({code = "E"}) end)
      local good = tulua.spawn(function() return 1 end)
      bad:add_done_callback(function() end) -- handled: not reported
      pcall(bad.join, bad)
      good:join()
      assert.are.same({code = "E"}, bad:exception())
      assert.is_nil(good:exception())
      local pending = tulua.spawn(tulua.sleep, 0.01)
      assert.are.equal("EINVALIDSTATE", raised(pending.exception, pending).code)
      pending:cancel()
      pcall(pending.join, pending)
      assert.are.equal("ECANCELED", raised(pending.exception, pending).code)
    end)

    it("cancel(msg) counts requests; uncancel withdraws them and, at 0, an undelivered cancel", function()
      local t = tulua.spawn(function()
        local me = tulua.current()
        me:cancel()
        me:cancel("twice")
        local n = me:cancelling()
        me:uncancel()
        local m = me:uncancel()
        tulua.sleep(0) -- no cancellation left to deliver
        return n, m
      end)
      assert.are.same({2, 0}, {t:join()})
      assert.are.equal(0, t:cancelling())
    end)

    it("done callbacks run in order right after the task's last step", function()
      local log = {}
      local t = tulua.spawn(function() tulua.sleep(0); log[#log + 1] = "end" end)
      local other = tulua.spawn(function() tulua.sleep(0); log[#log + 1] = "other" end)
      local function cb(name) return function(task) log[#log + 1] = name .. ":" .. task:status() end end
      local second = cb("b")
      t:add_done_callback(cb("a"))
      t:add_done_callback(second)
      t:add_done_callback(second)
      assert.are.equal(2, t:remove_done_callback(second))
      t:add_done_callback(second)
      t:join()
      other:join()
      assert.are.same({"end", "a:done", "b:done", "other"}, log)
    end)

    it("a done callback added to a finished task runs on the next loop turn", function()
      local t = tulua.spawn(function() end)
      t:join()
      local got
      t:add_done_callback(function(task) got = task end)
      assert.is_nil(got)
      tulua.sleep(0)
      tulua.sleep(0)
      assert.are.equal(t, got)
    end)

    it("names tasks Task-<n> when first asked, or as set", function()
      local a, b = tulua.spawn(function() end), tulua.spawn(function() end)
      local na, nb = a:get_name(), b:get_name()
      assert.is_truthy(na:match("^Task%-%d+$"))
      assert.are.equal(tonumber(na:match("%d+")) + 1, tonumber(nb:match("%d+")))
      assert.are.equal(na, a:get_name())
      b:set_name(42)
      assert.are.equal("42", b:get_name())
      a:join(); b:join()
      assert.are.equal(na, a:get_name()) -- kept after the end
    end)

    it("an error in a done callback is reported like an uncaught task error", function()
      local status, stdout, stderr = run_fixture("callback_error.lua")
      assert.are.equal(1, status)
      assert.are.equal("after\n", stdout)
      assert.are.equal(TULUA .. ": callback_error.lua:5: callback failed\n"
        .. "stack traceback:\n"
        .. "\t[C]: in function 'error'\n"
        .. "\tcallback_error.lua:5: in function <callback_error.lua:5>\n"
        .. "\t[C]: in ?\n" -- the call of the callback
        .. "\t[C]: in ?\n", stderr) -- the drain
    end)
  end)

  describe("uncaught errors", function()
    it("are printed on stderr at once with the traceback and make the exit status 1", function()
      local status, stdout, stderr = run_fixture("uncaught_error.lua")
      assert.are.equal(1, status)
      assert.are.equal("", stdout)
      assert.are.equal(TULUA .. ": uncaught_error.lua:6: boom\n"
        .. "stack traceback:\n"
        .. "\t[C]: in function 'error'\n"
        .. "\tuncaught_error.lua:6: in function <uncaught_error.lua:5>\n"
        .. "main goes on\n", stderr)
    end)
  end)

  describe("os.exit in a spawned task", function()
    it("exits with its status and flushes what io.write wrote", function()
      assert.are.same({3, "before in task", ""}, {run_fixture("exit_from_task.lua")})
    end)
  end)
end)
