-- The asyncio module (lua/asyncio.md): running and tasks, the Task and
-- Future methods, gather/wait/as_completed/wait_for/shield, timeouts,
-- TaskGroup, the error helpers, the loop object and debug mode. The
-- synchronization primitives have a spec of their own.
-- Spec bodies run in the main task, so they wait directly. Scopes whose task
-- gets cancelled (timeouts, task groups) run in a task of their own, so that
-- a cancellation left behind fails their test and not the next one. Fixtures
-- run as separate tulua processes: TULUA names the binary (default
-- build/tulua).
local asyncio = require("asyncio")
local tulua = require("tulua")

package.path = (debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or ".") .. "/?.lua;" .. package.path
local support = require("support")
local run_fixture, shell_quote, read_file = support.run_fixture, support.shell_quote, support.read_file
local TULUA, FIXTURES = support.TULUA, support.FIXTURES

local raised = support.raised

-- Lets the loop turn n times: the running task yields with sleep(0).
local function step(n)
  for _ = 1, n do
    asyncio.sleep(0)
  end
end

-- Keeps the loop busy for `seconds` without yielding.
local function busy(seconds)
  local t0 = tulua.now()
  while tulua.now() - t0 < seconds do end
end

-- Returns the text of an error without a leading "file:line: " position.
local function message(err)
  return (tostring(err):gsub("^[^\n]-:%d+: ", ""))
end

-- Returns a function that sleeps `seconds`, then raises err.
local function fail_after(seconds, err)
  return function()
    asyncio.sleep(seconds)
    error(err)
  end
end

-- Cancels the tasks a test leaves running and waits for them.
local function cleanup(...)
  for _, t in ipairs({...}) do
    t:cancel()
    pcall(t.join, t)
  end
end

-- Runs fn in a task of its own, under pcall. That task then waits once
-- more, so that a cancellation fn leaves behind shows as an error of the
-- join. Returns pcall's ok, fn's first result or error, and the task's
-- cancel count (cancelling()) after the scope.
local function scoped(fn)
  local t = asyncio.create_task(function()
    local ok, err = pcall(fn)
    local slept, late = pcall(asyncio.sleep, 0.001)
    assert(slept, "cancelled after the scope: " .. tostring(late))
    return ok, err, asyncio.current_task():cancelling()
  end)
  return t:join()
end

-- Runs `env tulua name` in the fixtures directory, TULUA_DEBUG unset unless
-- env ("NAME=value ...") sets it; returns the exit status, stdout and stderr.
local function run_fixture_env(env, name)
  local out, err = os.tmpname(), os.tmpname()
  local _, _, status = os.execute(string.format("cd %s && env -u TULUA_DEBUG %s %s %s > %s 2> %s",
    shell_quote(FIXTURES), env, shell_quote(TULUA), shell_quote(name), shell_quote(out), shell_quote(err)))
  local stdout, stderr = read_file(out), read_file(err)
  os.remove(out)
  os.remove(err)
  return status, stdout, stderr
end

describe("asyncio", function()
  describe("run", function()
    it("runs the function as a task and returns its results, nils included", function()
      local me = asyncio.current_task()
      local results = table.pack(asyncio.run(function()
        return asyncio.current_task() ~= me, nil, "three"
      end))
      assert.are.same({n = 3, true, nil, "three"}, results)
    end)

    it("raises the function's error as it is", function()
      local e = tulua.new_error("EBOOM", "boom")
      assert.are.equal(e, raised(asyncio.run, function()
        asyncio.sleep(0)
        error(e)
      end))
    end)

    it("cancels the tasks started meanwhile that still run, and waits for them", function()
      local log = {}
      local sleeper, cleaner
      asyncio.run(function()
        sleeper = asyncio.create_task(asyncio.sleep, 10)
        cleaner = asyncio.create_task(function()
          local ok, err = pcall(asyncio.sleep, 10)
          asyncio.sleep(0.02)
          log[#log + 1] = {ok, err.code}
        end)
        asyncio.sleep(0)
        return "main done"
      end)
      assert.are.equal("cancelled", sleeper:status())
      assert.are.equal("done", cleaner:status())
      assert.are.same({{false, "ECANCELED"}}, log)
    end)

    it("cancels the tasks started meanwhile when the function fails too", function()
      local sleeper
      local e = tulua.new_error("EBOOM", "boom")
      assert.are.equal(e, raised(asyncio.run, function()
        sleeper = asyncio.create_task(asyncio.sleep, 10)
        asyncio.sleep(0)
        error(e)
      end))
      assert.is_true(sleeper:cancelled())
    end)

    it("leaves alone the tasks started before it", function()
      local before = asyncio.create_task(asyncio.sleep, 0.05, "kept")
      assert.are.equal(1, asyncio.run(function() return 1 end))
      assert.is_false(before:done())
      assert.are.equal("kept", before:join())
    end)

    it("with debug = true turns debug mode on while the function runs, then off", function()
      local inside = asyncio.run(function() return tulua.get_debug() end, {debug = true})
      assert.is_true(inside)
      assert.is_false(tulua.get_debug())
    end)

    it("raises for options that are not a table or that it does not know", function()
      assert.has_error(function() asyncio.run(print, 0) end,
        "bad argument #2 to 'run' (table expected, got number)")
      assert.has_error(function() asyncio.run(print, {degub = true}) end,
        "bad argument #2 to 'run' (unknown option 'degub')")
    end)
  end)

  describe("create_task", function()
    it("returns a Task that starts on the next loop turn with the arguments, nils included", function()
      local got
      local t = asyncio.create_task(function(...)
        got = table.pack(...)
        return "result"
      end, 1, nil, "three", nil)
      assert.are.equal("thread", type(t))
      assert.are.equal("ready", t:status())
      assert.is_nil(got)
      step(1)
      assert.are.same({n = 4, 1, nil, "three", nil}, got)
      assert.are.equal("result", t:join())
    end)

    it("gives tulua Tasks: the asyncio methods are tulua.Task's", function()
      local t = asyncio.create_task(function() end)
      assert.are.equal(tulua.Task.get_name, t.get_name)
      assert.are.equal(tulua.Task.cancelling, t.cancelling)
      t:join()
    end)

    it("names the task given as one table {fn, arguments..., name =}, which no argument is taken for", function()
      local t = asyncio.create_task{function(...) return table.pack(...) end, 1, nil, "three", n = 4, name = "fetch"}
      assert.are.equal("fetch", t:get_name())
      assert.are.same({n = 3, 1, nil, "three"}, t:join())
      assert.are.equal("fetch", t:get_name())
      local plain = asyncio.create_task{function(...) return select("#", ...) end}
      assert.matches("^Task%-%d+$", plain:get_name())
      assert.are.equal(0, plain:join())
      -- a table after fn stays an argument, as it always was
      local opts = {name = "x"}
      local u = asyncio.create_task(function(o) return o end, opts)
      assert.are.equal(opts, u:join())
      assert.are_not.equal("x", u:get_name())
    end)

    it("raises for a task table of the wrong shape", function()
      assert.has_error(function() asyncio.create_task{print, nmae = "x"} end,
        "bad argument #1 to 'create_task' (unknown option 'nmae')")
      assert.has_error(function() asyncio.create_task{name = "x"} end,
        "bad argument #1 to 'create_task' (field 1 must be a function, got nil)")
      assert.has_error(function() asyncio.create_task{print, name = 3} end,
        "bad argument #1 to 'create_task' (field 'name' must be a string, got number)")
      assert.has_error(function() asyncio.create_task({print}, 1) end,
        "bad argument #2 to 'create_task' (arguments go in the task table)")
      assert.has_error(function() asyncio.create_task{print, n = 1 << 40} end,
        "bad argument #1 to 'create_task' (field 'n' must be 1 to 65535)")
      assert.has_error(function() asyncio.create_task(5) end,
        "bad argument #1 to 'create_task' (function expected, got number)")
    end)
  end)

  describe("sleep", function()
    it("returns the result given", function()
      assert.are.equal("r", asyncio.sleep(0, "r"))
      assert.are.equal(42, asyncio.sleep(0.01, 42))
    end)

    it("returns nil without a result", function()
      assert.is_nil(asyncio.sleep(0))
    end)

    it("waits at least the given time", function()
      local t0 = tulua.now()
      asyncio.sleep(0.1)
      local elapsed = tulua.now() - t0
      assert.is_true(elapsed >= 0.095, "elapsed " .. elapsed)
    end)

    it("with 0 lets the other ready tasks run", function()
      local ran = false
      local t = asyncio.create_task(function() ran = true end)
      asyncio.sleep(0)
      assert.is_true(ran)
      t:join()
    end)
  end)

  describe("current_task", function()
    it("returns the running task", function()
      assert.are.equal(tulua.current(), asyncio.current_task())
      local t = asyncio.create_task(asyncio.current_task)
      assert.are.equal(t, (t:join()))
    end)

    it("returns nil outside any task", function()
      assert.are.same({0, "inside: true\noutside: nil\n", ""}, {run_fixture("current_outside.lua")})
    end)
  end)

  describe("all_tasks", function()
    it("returns the set of unfinished tasks, the running one included", function()
      local before = asyncio.all_tasks()
      assert.is_true(before[asyncio.current_task()])
      local a = asyncio.create_task(asyncio.sleep, 0.01)
      local b = asyncio.create_task(function() end)
      local expected = {[a] = true, [b] = true}
      for t, v in pairs(before) do
        expected[t] = v
      end
      assert.are.same(expected, asyncio.all_tasks())
      a:join()
      b:join()
      assert.are.same(before, asyncio.all_tasks())
    end)
  end)

  describe("ensure_future", function()
    it("starts a function as a new task", function()
      local t = asyncio.ensure_future(function() return "from fn" end)
      assert.are.equal("thread", type(t))
      assert.are.equal("from fn", t:join())
    end)

    it("returns a Task or a Future as it is", function()
      local t = asyncio.create_task(function() end)
      local fut = asyncio.Future()
      assert.are.equal(t, asyncio.ensure_future(t))
      assert.are.equal(fut, asyncio.ensure_future(fut))
      t:join()
    end)
  end)

  describe("iscoroutinefunction", function()
    it("is true for any function", function()
      assert.is_true(asyncio.iscoroutinefunction(function() end))
      assert.is_true(asyncio.iscoroutinefunction(print))
    end)
  end)

  describe("Task", function()
    describe("cancel", function()
      it("makes the message the CancelledError's message", function()
        local t = asyncio.create_task(asyncio.sleep, 10)
        step(1)
        assert.is_true(t:cancel("stop now"))
        local err = raised(t.join, t)
        assert.are.equal("ECANCELED", err.code)
        assert.are.equal("stop now", tostring(err))
        assert.is_true(asyncio.is_cancelled(err))
        assert.are.equal("stop now", tostring(raised(t.result, t)))
      end)

      it("without a message raises 'task cancelled'", function()
        local t = asyncio.create_task(asyncio.sleep, 10)
        step(1)
        t:cancel()
        assert.are.equal("task cancelled", tostring(raised(t.join, t)))
      end)

      it("returns false for a task that is done", function()
        local t = asyncio.create_task(function() return "ok" end)
        t:join()
        assert.is_false(t:cancel("late"))
        assert.are.equal("ok", t:result())
      end)
    end)

    describe("cancelling and uncancel", function()
      it("count the cancel requests, and uncancel returns the new count", function()
        local t = asyncio.create_task(asyncio.sleep, 10)
        step(1)
        assert.are.equal(0, t:cancelling())
        t:cancel()
        t:cancel()
        assert.are.equal(2, t:cancelling())
        assert.are.equal(1, t:uncancel())
        assert.are.equal(1, t:cancelling())
        assert.are.equal("ECANCELED", raised(t.join, t).code)
      end)

      it("keep the count after the task caught the cancellation", function()
        local t = asyncio.create_task(function()
          local ok, err = pcall(asyncio.sleep, 10)
          return ok, err.code, asyncio.current_task():cancelling()
        end)
        step(1)
        t:cancel()
        assert.are.same({false, "ECANCELED", 1}, {t:join()})
      end)

      it("uncancel to 0 withdraws a cancellation not yet delivered", function()
        local t = asyncio.create_task(function()
          local me = asyncio.current_task()
          me:cancel()
          local requested = me:cancelling()
          local left = me:uncancel()
          asyncio.sleep(0) -- no cancellation here any more
          return requested, left, me:cancelling()
        end)
        assert.are.same({1, 0, 0}, {t:join()})
        assert.is_false(t:cancelled())
      end)

      it("uncancel never goes below 0", function()
        local t = asyncio.create_task(function() end)
        assert.are.equal(0, t:uncancel())
        assert.are.equal(0, t:cancelling())
        t:join()
      end)
    end)

    describe("result", function()
      it("returns the results of a finished task, nils included", function()
        local t = asyncio.create_task(function() return 1, nil, 3 end)
        t:join()
        assert.are.same({n = 3, 1, nil, 3}, table.pack(t:result()))
      end)

      it("raises the error of a failed task", function()
        local e = tulua.new_error("EBOOM", "boom")
        local t = asyncio.create_task(function() error(e) end)
        pcall(t.join, t)
        assert.are.equal(e, raised(t.result, t))
      end)

      it("raises InvalidStateError for a task that is not done", function()
        local t = asyncio.create_task(asyncio.sleep, 0.01)
        local err = raised(t.result, t)
        assert.are.equal("EINVALIDSTATE", err.code)
        assert.is_true(asyncio.is_error(err, asyncio.InvalidStateError))
        assert.are.equal("attempt to get the result of an unfinished task", tostring(err))
        t:join()
      end)

      it("raises the CancelledError of a cancelled task", function()
        local t = asyncio.create_task(asyncio.sleep, 10)
        step(1)
        t:cancel("why")
        pcall(t.join, t)
        local err = raised(t.result, t)
        assert.are.equal("ECANCELED", err.code)
        assert.are.equal("why", tostring(err))
      end)
    end)

    describe("exception", function()
      it("returns nil for a task that returned", function()
        local t = asyncio.create_task(function() return "fine" end)
        t:join()
        assert.is_nil(t:exception())
      end)

      it("returns the error of a failed task", function()
        local e = tulua.new_error("EBOOM", "boom")
        local t = asyncio.create_task(function() error(e) end)
        pcall(t.join, t)
        assert.are.equal(e, t:exception())
      end)

      it("raises the CancelledError of a cancelled task", function()
        local t = asyncio.create_task(asyncio.sleep, 10)
        step(1)
        t:cancel("why")
        pcall(t.join, t)
        local err = raised(t.exception, t)
        assert.are.equal("ECANCELED", err.code)
        assert.are.equal("why", tostring(err))
      end)

      it("raises InvalidStateError for a task that is not done", function()
        local t = asyncio.create_task(asyncio.sleep, 0.01)
        local err = raised(t.exception, t)
        assert.are.equal("EINVALIDSTATE", err.code)
        assert.is_true(asyncio.is_error(err, asyncio.InvalidStateError))
        t:join()
      end)
    end)

    describe("add_done_callback", function()
      it("calls the callbacks in order, with the task, right after its last step", function()
        local log = {}
        local a = asyncio.create_task(function() log[#log + 1] = "a ends" end)
        local b = asyncio.create_task(function() log[#log + 1] = "b runs" end)
        a:add_done_callback(function(t) log[#log + 1] = "first " .. tostring(t == a) end)
        a:add_done_callback(function(t) log[#log + 1] = "second " .. tostring(t == a) end)
        a:join()
        b:join()
        assert.are.same({"a ends", "first true", "second true", "b runs"}, log)
      end)

      it("calls them for a task that failed or was cancelled", function()
        local e = tulua.new_error("EBOOM", "boom")
        local seen = {}
        local failed = asyncio.create_task(fail_after(0, e))
        failed:add_done_callback(function(t) seen.failed = t:exception() end)
        local cancelled = asyncio.create_task(asyncio.sleep, 10)
        cancelled:add_done_callback(function(t) seen.cancelled = t:cancelled() end)
        step(1)
        cancelled:cancel()
        pcall(failed.join, failed)
        pcall(cancelled.join, cancelled)
        assert.are.equal(e, seen.failed)
        assert.is_true(seen.cancelled)
      end)

      it("on a finished task, calls the callback on the next loop turn", function()
        local t = asyncio.create_task(function() end)
        t:join()
        local got
        t:add_done_callback(function(task) got = task end)
        assert.is_nil(got)
        step(1)
        assert.are.equal(t, got)
      end)
    end)

    describe("remove_done_callback", function()
      it("removes every registration of the callback and returns how many", function()
        local log = {}
        local function cb() log[#log + 1] = "cb" end
        local t = asyncio.create_task(asyncio.sleep, 0.01)
        t:add_done_callback(cb)
        t:add_done_callback(function() log[#log + 1] = "other" end)
        t:add_done_callback(cb)
        assert.are.equal(2, t:remove_done_callback(cb))
        assert.are.equal(0, t:remove_done_callback(cb))
        t:join()
        assert.are.same({"other"}, log)
      end)
    end)

    describe("get_name and set_name", function()
      it("name tasks Task-<n>, numbered when first asked for", function()
        local a = asyncio.create_task(function() end)
        local b = asyncio.create_task(function() end)
        local name_b = b:get_name()
        local name_a = a:get_name()
        local n = tonumber(name_b:match("^Task%-(%d+)$"))
        assert.is_truthy(n, name_b)
        assert.are.equal("Task-" .. (n + 1), name_a)
        assert.are.equal(name_b, b:get_name())
        a:join()
        b:join()
      end)

      it("set_name gives a name that stays after the task finished", function()
        local t = asyncio.create_task(function() return asyncio.current_task():get_name() end)
        t:set_name("worker")
        assert.are.equal("worker", t:get_name())
        assert.are.equal("worker", t:join())
        assert.are.equal("worker", t:get_name())
      end)
    end)
  end)

  describe("Future", function()
    it("starts pending", function()
      local fut = asyncio.Future()
      assert.are.same({false, false}, {fut:done(), fut:cancelled()})
    end)

    it("set_result makes join and result return the results, nils included", function()
      local fut = asyncio.Future()
      local setter = asyncio.create_task(function()
        asyncio.sleep(0.01)
        fut:set_result("a", nil, "c")
      end)
      assert.are.same({n = 3, "a", nil, "c"}, table.pack(fut:join()))
      assert.are.same({n = 3, "a", nil, "c"}, table.pack(fut:result()))
      assert.is_true(fut:done())
      assert.is_nil(fut:exception())
      setter:join()
    end)

    it("lets several tasks join it", function()
      local fut = asyncio.Future()
      local a = asyncio.create_task(function() return fut:join() * 2 end)
      local b = asyncio.create_task(function() return fut:join() * 3 end)
      step(1)
      fut:set_result(7)
      assert.are.same({14, 21}, {a:join(), b:join()})
    end)

    it("set_exception makes join and result raise the error, and exception return it", function()
      local e = tulua.new_error("EBOOM", "boom")
      local fut = asyncio.Future()
      fut:set_exception(e)
      assert.is_true(fut:done())
      assert.are.equal(e, raised(fut.join, fut))
      assert.are.equal(e, raised(fut.result, fut))
      assert.are.equal(e, fut:exception())
    end)

    it("cancel makes it done and cancelled, with the message in the CancelledError", function()
      local fut = asyncio.Future()
      local joiner = asyncio.create_task(function() return fut:join() end)
      step(1)
      assert.is_true(fut:cancel("no more"))
      assert.are.same({true, true}, {fut:done(), fut:cancelled()})
      local err = raised(joiner.join, joiner)
      assert.are.equal("ECANCELED", err.code)
      assert.are.equal("no more", tostring(err))
      assert.are.equal("no more", tostring(raised(fut.result, fut)))
      assert.are.equal("ECANCELED", raised(fut.exception, fut).code)
      assert.is_false(fut:cancel())
    end)

    it("makes a task waiting in join raise CancelledError when that task is cancelled", function()
      local fut = asyncio.Future()
      local joiner = asyncio.create_task(function() return fut:join() end)
      step(1)
      joiner:cancel()
      local err = raised(joiner.join, joiner)
      assert.are.equal("ECANCELED", err.code)
      assert.are.equal("task cancelled", tostring(err))
    end)

    it("result and exception raise InvalidStateError while pending", function()
      local fut = asyncio.Future()
      assert.are.equal("EINVALIDSTATE", raised(fut.result, fut).code)
      assert.are.equal("EINVALIDSTATE", raised(fut.exception, fut).code)
      assert.is_true(asyncio.is_error(raised(fut.result, fut), asyncio.InvalidStateError))
    end)

    it("raises InvalidStateError when set twice, and keeps the first outcome", function()
      local fut = asyncio.Future()
      fut:set_result(1)
      assert.are.equal("EINVALIDSTATE", raised(fut.set_result, fut, 2).code)
      assert.are.equal("EINVALIDSTATE", raised(fut.set_exception, fut, tulua.new_error("EX", "x")).code)
      assert.are.equal(1, fut:result())
      local cancelled = asyncio.Future()
      cancelled:cancel()
      assert.are.equal("EINVALIDSTATE", raised(cancelled.set_result, cancelled, 1).code)
    end)

    it("calls the done callbacks on the next loop turn, in order, with the future", function()
      local fut = asyncio.Future()
      local log = {}
      fut:add_done_callback(function(f) log[#log + 1] = "first " .. tostring(f == fut) end)
      fut:add_done_callback(function(f) log[#log + 1] = "second " .. tostring(f == fut) end)
      fut:set_result("x")
      assert.are.same({}, log)
      step(1)
      assert.are.same({"first true", "second true"}, log)
    end)

    it("calls a callback added once it is done on the next loop turn", function()
      local fut = asyncio.Future()
      fut:cancel()
      local got
      fut:add_done_callback(function(f) got = f end)
      assert.is_nil(got)
      step(1)
      assert.are.equal(fut, got)
    end)

    it("remove_done_callback returns how many were removed", function()
      local fut = asyncio.Future()
      local log = {}
      local function cb() log[#log + 1] = "cb" end
      fut:add_done_callback(cb)
      fut:add_done_callback(cb)
      fut:add_done_callback(function() log[#log + 1] = "other" end)
      assert.are.equal(2, fut:remove_done_callback(cb))
      assert.are.equal(0, fut:remove_done_callback(cb))
      fut:set_result()
      step(1)
      assert.are.same({"other"}, log)
    end)

    it("is made by loop:create_future() too", function()
      local fut = asyncio.get_event_loop():create_future()
      fut:set_result("made")
      assert.are.equal("made", fut:join())
    end)
  end)

  describe("gather", function()
    it("takes a later failure of another child, once it has raised the first, as retrieved", function()
      local status, stdout, stderr = run_fixture_env("", "gather_unretrieved.lua")
      assert.are.equal("", stderr)
      assert.are.equal("false\tfirst\nend\n", stdout)
      assert.are.equal(0, status)
    end)

    it("returns the first result of each awaitable in argument order", function()
      local a = asyncio.create_task(asyncio.sleep, 0.03, "a")
      local b = asyncio.create_task(asyncio.sleep, 0.01, "b")
      local fut = asyncio.Future()
      asyncio.get_event_loop():call_later(0.02, function() fut:set_result("c", "dropped") end)
      assert.are.same({n = 4, "a", "b", "c", "d"},
        asyncio.gather(a, b, fut, function() return "d", "dropped" end))
    end)

    it("takes the awaitables as a list too", function()
      local r = asyncio.gather({
        function() return nil end,
        asyncio.create_task(asyncio.sleep, 0.01, "x"),
      })
      assert.are.same({n = 2, nil, "x"}, r)
    end)

    it("starts functions as tasks that run concurrently", function()
      local events = {}
      local function child(i)
        return function()
          events[#events + 1] = "start " .. i
          asyncio.sleep(0.05)
          events[#events + 1] = "end " .. i
          return i
        end
      end
      local r = asyncio.gather(child(1), child(2))
      assert.are.same({n = 2, 1, 2}, r)
      -- one after the other would end the first before the second starts
      assert.are.same({"start 1", "start 2", "end 1", "end 2"}, events)
    end)

    it("of zero awaitables returns an empty list", function()
      assert.are.same({n = 0}, asyncio.gather())
      assert.are.same({n = 0}, asyncio.gather({}))
    end)

    it("of tasks that have finished returns their results", function()
      local a = asyncio.create_task(function() return "a" end)
      local b = asyncio.create_task(function() return "b" end)
      a:join()
      b:join()
      assert.are.same({n = 2, "a", "b"}, asyncio.gather(a, b))
    end)

    it("of a task that failed already raises its error", function()
      local e = tulua.new_error("EBOOM", "boom")
      local t = asyncio.create_task(fail_after(0, e))
      pcall(t.join, t)
      assert.are.equal(e, raised(asyncio.gather, t))
    end)

    it("raises the first error at once, while the other awaitables keep running", function()
      local e = tulua.new_error("EBOOM", "boom")
      local slow = asyncio.create_task(asyncio.sleep, 0.1, "slow")
      assert.are.equal(e, raised(asyncio.gather, fail_after(0.01, e), slow))
      assert.is_false(slow:done())
      assert.are.equal("slow", slow:join())
    end)

    it("raises a CancelledError when a child is cancelled, and the others keep running", function()
      local victim = asyncio.create_task(asyncio.sleep, 10)
      local other = asyncio.create_task(asyncio.sleep, 0.05, "other")
      local g = asyncio.create_task(asyncio.gather, victim, other)
      step(1)
      victim:cancel("victim")
      local err = raised(g.join, g)
      assert.are.equal("ECANCELED", err.code)
      assert.are.equal("other", other:join())
    end)

    it("with return_exceptions puts errors and CancelledErrors in their children's places", function()
      local e = tulua.new_error("EBOOM", "boom")
      local failing = asyncio.create_task(fail_after(0.01, e))
      local cancelled = asyncio.create_task(asyncio.sleep, 10)
      local fine = asyncio.create_task(asyncio.sleep, 0.02, "fine")
      step(1)
      cancelled:cancel("gone")
      local r = asyncio.gather(failing, cancelled, fine, {return_exceptions = true})
      assert.are.equal(3, r.n)
      assert.are.equal(e, r[1])
      assert.are.equal("ECANCELED", r[2].code)
      assert.are.equal("gone", tostring(r[2]))
      assert.are.equal("fine", r[3])
    end)

    it("with return_exceptions takes a list of awaitables too", function()
      local e = tulua.new_error("EBOOM", "boom")
      local r = asyncio.gather({fail_after(0, e), function() return "ok" end}, {return_exceptions = true})
      assert.are.same({n = 2, e, "ok"}, r)
      assert.are.equal(e, r[1])
    end)

    it("raises for an unknown option, naming the argument that holds it", function()
      local function ok() return "ok" end
      assert.has_error(function() asyncio.gather({ok}, {return_exception = true}) end,
        "bad argument #2 to 'gather' (unknown option 'return_exception')")
      assert.has_error(function() asyncio.gather(ok, ok, {return_exception = true}) end,
        "bad argument #3 to 'gather' (unknown option 'return_exception')")
    end)

    it("cancels every child when the gathering task is cancelled", function()
      local a = asyncio.create_task(asyncio.sleep, 1)
      local b = asyncio.create_task(asyncio.sleep, 1)
      local g = asyncio.create_task(asyncio.gather, a, b)
      step(1)
      g:cancel()
      assert.are.equal("ECANCELED", raised(g.join, g).code)
      assert.are.same({true, true}, {a:cancelled(), b:cancelled()})
    end)
  end)

  describe("wait", function()
    it("waits for all by default and returns the done and pending sets", function()
      local a = asyncio.create_task(asyncio.sleep, 0.02, "a")
      local b = asyncio.create_task(asyncio.sleep, 0.01, "b")
      local fut = asyncio.Future()
      asyncio.get_event_loop():call_later(0.01, function() fut:set_result("f") end)
      local done, pending = asyncio.wait({a, b, fut})
      assert.are.same({[a] = true, [b] = true, [fut] = true}, done)
      assert.are.same({}, pending)
    end)

    it("with ALL_COMPLETED neither raises the errors nor stops at them", function()
      local e = tulua.new_error("EBOOM", "boom")
      local failing = asyncio.create_task(fail_after(0.01, e))
      local later = asyncio.create_task(asyncio.sleep, 0.03, "later")
      local done, pending = asyncio.wait({failing, later}, {return_when = asyncio.ALL_COMPLETED})
      assert.are.same({[failing] = true, [later] = true}, done)
      assert.are.same({}, pending)
      assert.are.equal(e, failing:exception())
    end)

    it("with FIRST_COMPLETED returns when one finishes, and leaves the others running", function()
      local fast = asyncio.create_task(asyncio.sleep, 0.01, "fast")
      local slow = asyncio.create_task(asyncio.sleep, 10)
      local done, pending = asyncio.wait({fast, slow}, {return_when = asyncio.FIRST_COMPLETED})
      assert.are.same({[fast] = true}, done)
      assert.are.same({[slow] = true}, pending)
      assert.are.equal("waiting", slow:status())
      cleanup(slow)
    end)

    it("with FIRST_EXCEPTION returns when one fails", function()
      local e = tulua.new_error("EBOOM", "boom")
      local quick = asyncio.create_task(asyncio.sleep, 0.01, "quick")
      local failing = asyncio.create_task(fail_after(0.03, e))
      local slow = asyncio.create_task(asyncio.sleep, 10)
      local done, pending = asyncio.wait({quick, failing, slow}, {return_when = asyncio.FIRST_EXCEPTION})
      assert.are.same({[quick] = true, [failing] = true}, done)
      assert.are.same({[slow] = true}, pending)
      assert.are.equal("waiting", slow:status())
      cleanup(slow)
    end)

    it("with FIRST_EXCEPTION does not count a cancelled task as failed", function()
      local victim = asyncio.create_task(asyncio.sleep, 1)
      local later = asyncio.create_task(asyncio.sleep, 0.05, "later")
      step(1)
      victim:cancel()
      local done, pending = asyncio.wait({victim, later}, {return_when = asyncio.FIRST_EXCEPTION})
      assert.are.same({[victim] = true, [later] = true}, done)
      assert.are.same({}, pending)
    end)

    it("with FIRST_EXCEPTION and no failure waits for all", function()
      local a = asyncio.create_task(asyncio.sleep, 0.01)
      local b = asyncio.create_task(asyncio.sleep, 0.03)
      local done, pending = asyncio.wait({a, b}, {return_when = asyncio.FIRST_EXCEPTION})
      assert.are.same({[a] = true, [b] = true}, done)
      assert.are.same({}, pending)
    end)

    it("with a timeout returns what is done when it expires, never raises and never cancels", function()
      local fast = asyncio.create_task(asyncio.sleep, 0.01)
      local slow = asyncio.create_task(asyncio.sleep, 10)
      local t0 = tulua.now()
      local done, pending = asyncio.wait({fast, slow}, {timeout = 0.1})
      local elapsed = tulua.now() - t0
      assert.are.same({[fast] = true}, done)
      assert.are.same({[slow] = true}, pending)
      assert.is_true(elapsed >= 0.095, "elapsed " .. elapsed)
      assert.are.equal("waiting", slow:status())
      assert.are.equal(0, slow:cancelling())
      cleanup(slow)
    end)

    it("with a timeout of 0 or less reports what is done at the call, without letting a task run", function()
      for _, timeout in ipairs({0, -1}) do
        local ran = false
        local finished = asyncio.Future()
        finished:set_result("f")
        local ready = asyncio.create_task(function() ran = true end)
        local done, pending = asyncio.wait({finished, ready}, {timeout = timeout})
        assert.are.same({[finished] = true}, done)
        assert.are.same({[ready] = true}, pending)
        assert.is_false(ran, "timeout " .. timeout)
        ready:join()
      end
    end)

    it("with no timeout waits as long as it takes", function()
      local a = asyncio.create_task(asyncio.sleep, 0.02, "a")
      local done, pending = asyncio.wait({a}, {return_when = asyncio.ALL_COMPLETED})
      assert.are.same({[a] = true}, done)
      assert.are.same({}, pending)
    end)

    it("raises for options that are not a table or that it does not know", function()
      assert.has_error(function() asyncio.wait({}, 5) end, "bad argument #2 to 'wait' (table expected, got number)")
      assert.has_error(function() asyncio.wait({}, {time_out = 5}) end,
        "bad argument #2 to 'wait' (unknown option 'time_out')")
    end)

    it("raises where it cannot wait even when everything is done, as Python's coroutine does", function()
      local finished = asyncio.Future()
      finished:set_result("f")
      local err = raised(table.sort, {1, 2}, function() asyncio.wait({finished}) end)
      assert.matches("asyncio_spec.lua:%d+: attempt to wait in 'wait' inside a function called from C", err)
    end)

    it("raises CancelledError when the waiting task is cancelled, and leaves the awaitables running", function()
      local a = asyncio.create_task(asyncio.sleep, 1)
      local g = asyncio.create_task(asyncio.wait, {a})
      step(1)
      g:cancel()
      assert.are.equal("ECANCELED", raised(g.join, g).code)
      assert.are.equal("waiting", a:status())
      cleanup(a)
    end)
  end)

  describe("as_completed", function()
    it("gives each task as it finishes", function()
      local a = asyncio.create_task(asyncio.sleep, 0.03, "a")
      local b = asyncio.create_task(asyncio.sleep, 0.01, "b")
      local c = asyncio.create_task(asyncio.sleep, 0.02, "c")
      local order = {}
      for t in asyncio.as_completed({a, b, c}) do
        order[#order + 1] = t:result()
      end
      assert.are.same({"b", "c", "a"}, order)
    end)

    it("gives a failed task too: its result raises", function()
      local e = tulua.new_error("EBOOM", "boom")
      local failing = asyncio.create_task(fail_after(0.01, e))
      local got = {}
      for t in asyncio.as_completed({failing}) do
        got[#got + 1] = t
      end
      assert.are.same({failing}, got)
      assert.are.equal(e, raised(failing.result, failing))
    end)

    it("raises TimeoutError from the iterator when the timeout expires first", function()
      local fast = asyncio.create_task(asyncio.sleep, 0.01, "fast")
      local slow = asyncio.create_task(asyncio.sleep, 10)
      local got = {}
      local t0 = tulua.now()
      local err = raised(function()
        for t in asyncio.as_completed({fast, slow}, 0.1) do
          got[#got + 1] = t:result()
        end
      end)
      local elapsed = tulua.now() - t0
      assert.are.same({"fast"}, got)
      assert.are.equal("ETIMEDOUT", err.code)
      assert.is_true(asyncio.is_timeout(err))
      assert.is_true(elapsed >= 0.095, "elapsed " .. elapsed)
      assert.is_false(slow:done())
      cleanup(slow)
    end)

    it("raises CancelledError from the iterator when the iterating task is cancelled", function()
      local a = asyncio.create_task(asyncio.sleep, 1)
      local g = asyncio.create_task(function()
        local got = {}
        for t in asyncio.as_completed({a}) do
          got[#got + 1] = t
        end
        return got
      end)
      step(1)
      g:cancel()
      assert.are.equal("ECANCELED", raised(g.join, g).code)
      assert.are.equal("waiting", a:status())
      cleanup(a)
    end)
  end)

  describe("wait_for", function()
    it("runs a function inline in the current task, with the extra arguments", function()
      local me = asyncio.current_task()
      local r = table.pack(asyncio.wait_for(function(...)
        asyncio.sleep(0.01)
        return asyncio.current_task() == me, select("#", ...), ...
      end, 1, "x", nil, "z"))
      assert.are.same({n = 5, true, 3, "x", nil, "z"}, r)
    end)

    it("joins a task and returns its results", function()
      local t = asyncio.create_task(function()
        asyncio.sleep(0.01)
        return "a", "b"
      end)
      assert.are.same({"a", "b"}, {asyncio.wait_for(t, 1)})
    end)

    it("raises the error of the function", function()
      local e = tulua.new_error("EBOOM", "boom")
      assert.are.equal(e, raised(asyncio.wait_for, fail_after(0, e), 1))
    end)

    it("with a nil timeout waits as long as it takes", function()
      assert.are.equal("done", asyncio.wait_for(function() return asyncio.sleep(0.05, "done") end, nil))
    end)

    it("on timeout cancels the function's body and raises TimeoutError", function()
      local seen
      local t0 = tulua.now()
      local ok, err, count = scoped(function()
        asyncio.wait_for(function()
          local ok, e = pcall(asyncio.sleep, 10)
          seen = {ok, e.code}
          error(e)
        end, 0.1)
      end)
      local elapsed = tulua.now() - t0
      assert.is_false(ok)
      assert.are.equal("ETIMEDOUT", err.code)
      assert.are.same({false, "ECANCELED"}, seen)
      assert.are.equal(0, count)
      assert.is_true(elapsed >= 0.095, "elapsed " .. elapsed)
    end)

    it("on timeout cancels the task and waits for it to finish", function()
      local cleaned = false
      local t = asyncio.create_task(function()
        local _, e = pcall(asyncio.sleep, 10)
        asyncio.sleep(0.05) -- cleaning up takes a while
        cleaned = true
        error(e)
      end)
      local t0 = tulua.now()
      local err = raised(asyncio.wait_for, t, 0.05)
      local elapsed = tulua.now() - t0
      assert.are.equal("ETIMEDOUT", err.code)
      assert.is_true(asyncio.is_timeout(err))
      assert.is_true(cleaned)
      assert.is_true(t:cancelled())
      assert.is_true(elapsed >= 0.095, "elapsed " .. elapsed)
      assert.are.equal(0, asyncio.current_task():cancelling())
    end)

    it("on timeout cancels a future", function()
      local fut = asyncio.Future()
      assert.are.equal("ETIMEDOUT", raised(asyncio.wait_for, fut, 0.02).code)
      assert.is_true(fut:cancelled())
    end)

    it("cancels the task it waits for when the waiting task is cancelled", function()
      local inner = asyncio.create_task(asyncio.sleep, 10)
      local g = asyncio.create_task(asyncio.wait_for, inner, 10)
      step(1)
      g:cancel("outer")
      local err = raised(g.join, g)
      assert.are.equal("ECANCELED", err.code)
      assert.are.equal("outer", tostring(err))
      assert.is_true(inner:cancelled())
    end)
  end)

  describe("timeout", function()
    it("cancels the body when the delay expires and raises TimeoutError at the end of the scope", function()
      local scope
      local reached = false
      local t0 = tulua.now()
      local ok, err, count = scoped(function()
        local t <close> = asyncio.timeout(0.1)
        scope = t
        asyncio.sleep(10)
        reached = true
      end)
      local elapsed = tulua.now() - t0
      assert.is_false(ok)
      assert.are.equal("ETIMEDOUT", err.code)
      assert.is_true(asyncio.is_timeout(err))
      assert.is_false(reached)
      assert.is_true(scope:expired())
      assert.are.equal(0, count)
      assert.is_true(elapsed >= 0.095, "elapsed " .. elapsed)
    end)

    it("lets a body that finishes in time end normally, and never fires afterwards", function()
      local scope, expired_inside
      local ok, r, count = scoped(function()
        do
          local t <close> = asyncio.timeout(0.05)
          scope = t
          asyncio.sleep(0.01)
          expired_inside = t:expired()
        end
        asyncio.sleep(0.1) -- past the old deadline
        return "finished"
      end)
      assert.are.same({true, "finished", 0}, {ok, r, count})
      assert.is_false(expired_inside)
      assert.is_false(scope:expired())
    end)

    it("with nil never expires", function()
      local scope
      local ok, r = scoped(function()
        local t <close> = asyncio.timeout(nil)
        scope = t
        return asyncio.sleep(0.02, "slept")
      end)
      assert.are.same({true, "slept"}, {ok, r})
      assert.is_nil(scope:when())
      assert.is_false(scope:expired())
    end)

    it("when() is the deadline in loop time", function()
      local loop = asyncio.get_event_loop()
      local when = loop:time() + 10
      local at = asyncio.timeout_at(when)
      assert.are.equal(when, at:when())
      local t0 = loop:time()
      local delay = asyncio.timeout(10)
      local t1 = loop:time()
      assert.is_true(delay:when() >= t0 + 10 and delay:when() <= t1 + 10, "when " .. delay:when())
    end)

    it("timeout_at expires at the given loop time", function()
      local t0 = tulua.now()
      local ok, err = scoped(function()
        local t <close> = asyncio.timeout_at(asyncio.get_event_loop():time() + 0.1) -- luacheck: no unused
        asyncio.sleep(10)
      end)
      local elapsed = tulua.now() - t0
      assert.is_false(ok)
      assert.are.equal("ETIMEDOUT", err.code)
      assert.is_true(elapsed >= 0.095, "elapsed " .. elapsed)
    end)

    it("reschedule moves the deadline later", function()
      local ok, r, count = scoped(function()
        local t <close> = asyncio.timeout(0.02)
        t:reschedule(asyncio.get_event_loop():time() + 0.5)
        return asyncio.sleep(0.05, "in time")
      end)
      assert.are.same({true, "in time", 0}, {ok, r, count})
    end)

    it("reschedule moves the deadline earlier", function()
      local t0 = tulua.now()
      -- the old deadline would come after this sleeper wakes; the new one before
      local sleeper = asyncio.create_task(asyncio.sleep, 9)
      local ok, err = scoped(function()
        local t <close> = asyncio.timeout(10)
        t:reschedule(asyncio.get_event_loop():time() + 0.1)
        asyncio.sleep(10)
      end)
      local elapsed = tulua.now() - t0
      assert.is_false(ok)
      assert.are.equal("ETIMEDOUT", err.code)
      assert.is_false(sleeper:done())
      assert.is_true(elapsed >= 0.095, "elapsed " .. elapsed)
      cleanup(sleeper)
    end)

    it("reschedule(nil) disables it", function()
      local ok, r = scoped(function()
        local t <close> = asyncio.timeout(0.02)
        t:reschedule(nil)
        return asyncio.sleep(0.05, "never expired")
      end)
      assert.are.same({true, "never expired"}, {ok, r})
    end)

    it("expired() is false until the delay expires, then true", function()
      local scope
      local before
      scoped(function()
        local t <close> = asyncio.timeout(0.02)
        scope = t
        before = t:expired()
        asyncio.sleep(10)
      end)
      assert.is_false(before)
      assert.is_true(scope:expired())
    end)

    it("lets a body that catches the cancellation end normally", function()
      local scope, seen
      local ok, r, count = scoped(function()
        do
          local t <close> = asyncio.timeout(0.02)
          scope = t
          local _, e = pcall(asyncio.sleep, 10)
          seen = e.code
        end
        return "after"
      end)
      assert.are.same({true, "after", 0}, {ok, r, count})
      assert.are.equal("ECANCELED", seen)
      assert.is_true(scope:expired())
    end)

    it("nested: the inner expiring raises TimeoutError at the inner scope only", function()
      local outer, inner
      local ok, r, count = scoped(function()
        local o <close> = asyncio.timeout(10)
        outer = o
        local inner_ok, inner_err = pcall(function()
          local i <close> = asyncio.timeout(0.02)
          inner = i
          asyncio.sleep(10)
        end)
        asyncio.sleep(0.01) -- the outer scope goes on
        return {inner_ok, inner_err.code}
      end)
      assert.are.same({true, {false, "ETIMEDOUT"}, 0}, {ok, r, count})
      assert.is_true(inner:expired())
      assert.is_false(outer:expired())
    end)

    it("nested: the outer expiring passes through the inner scope as CancelledError", function()
      local outer, inner, seen
      local ok, err, count = scoped(function()
        local o <close> = asyncio.timeout(0.02)
        outer = o
        local inner_ok, inner_err = pcall(function()
          local i <close> = asyncio.timeout(10)
          inner = i
          asyncio.sleep(10)
        end)
        seen = {inner_ok, inner_err.code}
        error(inner_err)
      end)
      assert.is_false(ok)
      assert.are.equal("ETIMEDOUT", err.code)
      assert.are.equal(0, count)
      assert.are.same({false, "ECANCELED"}, seen)
      assert.is_true(outer:expired())
      assert.is_false(inner:expired())
    end)

    it("does not cancel the task afterwards when it fires just as the body ends", function()
      -- The body keeps the loop busy past the deadline, then yields once:
      -- the timer fires in that loop turn, but the body resumes first and
      -- leaves the scope (as in Python, where the task's step was queued
      -- before the timer's callback).
      local scope
      local ok, r, count = scoped(function()
        do
          local t <close> = asyncio.timeout(0.02)
          scope = t
          busy(0.04)
          asyncio.sleep(0)
        end
        step(3)
        asyncio.sleep(0.03)
        return "not cancelled"
      end)
      assert.are.same({true, "not cancelled", 0}, {ok, r, count})
      assert.is_false(scope:expired())
    end)

    it("leaves an outer task:cancel() during the scope a CancelledError", function()
      local g = asyncio.create_task(function()
        local t <close> = asyncio.timeout(10) -- luacheck: no unused
        asyncio.sleep(10)
      end)
      step(1)
      g:cancel("outer")
      local err = raised(g.join, g)
      assert.are.equal("ECANCELED", err.code)
      assert.are.equal("outer", tostring(err))
    end)

    it("leaves an outer cancel that arrives with the expiry a CancelledError", function()
      local scope
      local g = asyncio.create_task(function()
        local me = asyncio.current_task()
        local t <close> = asyncio.timeout(0.02)
        scope = t
        asyncio.get_running_loop():call_at(t:when(), function() me:cancel("outer") end)
        asyncio.sleep(10)
      end)
      -- both timers are due by the time the loop runs again, so they fire
      -- in one pass, the expiry first: a millisecond that passes between
      -- their starts cannot put the outer cancel in a later pass
      step(1)
      busy(0.03)
      local err = raised(g.join, g)
      assert.are.equal("ECANCELED", err.code)
      assert.is_true(scope:expired())
    end)
  end)

  describe("shield", function()
    it("returns a future with the outcome of the awaitable", function()
      local e = tulua.new_error("EBOOM", "boom")
      assert.are.equal("v", asyncio.shield(asyncio.create_task(asyncio.sleep, 0.01, "v")):join())
      assert.are.equal("fn", asyncio.shield(function() return "fn" end):join())
      local failing = asyncio.shield(fail_after(0, e))
      assert.are.equal(e, raised(failing.join, failing))
    end)

    it("leaves the awaitable running when the shield is cancelled", function()
      local inner = asyncio.create_task(asyncio.sleep, 0.03, "inner")
      local s = asyncio.shield(inner)
      assert.is_true(s:cancel())
      assert.is_true(s:cancelled())
      assert.are.equal("inner", inner:join())
      assert.is_false(inner:cancelled())
    end)

    it("is cancelled when the awaitable is cancelled", function()
      local inner = asyncio.create_task(asyncio.sleep, 1)
      local s = asyncio.shield(inner)
      step(1)
      inner:cancel()
      pcall(inner.join, inner)
      assert.is_true(s:cancelled())
      assert.are.equal("ECANCELED", raised(s.join, s).code)
    end)

    it("leaves the awaitable running when the task that joins the shield is cancelled", function()
      local inner = asyncio.create_task(asyncio.sleep, 0.03, "inner")
      local g = asyncio.create_task(function() return asyncio.shield(inner):join() end)
      step(1)
      g:cancel()
      assert.are.equal("ECANCELED", raised(g.join, g).code)
      assert.are.equal("inner", inner:join())
      assert.is_false(inner:cancelled())
    end)
  end)

  describe("TaskGroup", function()
    it("waits at the end of the scope for every task", function()
      local a, b
      local t0 = tulua.now()
      local ok, r, count = scoped(function()
        do
          local tg <close> = asyncio.TaskGroup()
          a = tg:create_task(asyncio.sleep, 0.02, "a")
          b = tg:create_task(function(x, y) return asyncio.sleep(0.1, x .. y) end, "b", "!")
        end
        return a:done() and b:done()
      end)
      local elapsed = tulua.now() - t0
      assert.are.same({true, true, 0}, {ok, r, count})
      assert.are.same({"a", "b!"}, {a:result(), b:result()})
      assert.is_true(elapsed >= 0.095, "elapsed " .. elapsed)
    end)

    it("names a task given as one table {fn, arguments..., name =}", function()
      local ok, got = scoped(function()
        local t
        do
          local tg <close> = asyncio.TaskGroup()
          t = tg:create_task{function(x) return x .. "!" end, "b", name = "worker"}
          assert.has_error(function() tg:create_task{print, nmae = "x"} end,
            "bad argument #1 to 'create_task' (unknown option 'nmae')")
        end
        return {t:get_name(), t:result()}
      end)
      assert.is_true(ok, tostring(got))
      assert.are.same({"worker", "b!"}, got)
    end)

    it("cancels the other tasks when one fails, and raises the errors together as EGROUP", function()
      local e1 = tulua.new_error("EFIRST", "first failed")
      local e2 = tulua.new_error("ESECOND", "second failed while cancelled")
      local failing, failing_later, sleeper
      local ok, err, count = scoped(function()
        local tg <close> = asyncio.TaskGroup()
        failing = tg:create_task(fail_after(0.01, e1))
        failing_later = tg:create_task(function()
          pcall(asyncio.sleep, 10)
          error(e2)
        end)
        sleeper = tg:create_task(asyncio.sleep, 10)
      end)
      assert.is_false(ok)
      assert.are.equal("EGROUP", err.code)
      assert.is_true(asyncio.is_error(err, asyncio.ExceptionGroup))
      assert.are.equal(2, #err.errors)
      assert.are.equal(e1, err.errors[1])
      assert.are.equal(e2, err.errors[2])
      assert.is_truthy(tostring(err):find("first failed", 1, true), tostring(err))
      assert.is_truthy(tostring(err):find("second failed while cancelled", 1, true), tostring(err))
      assert.are.same({"failed", "failed", "cancelled"}, {failing:status(), failing_later:status(), sleeper:status()})
      assert.are.equal(0, count)
    end)

    it("waits for a child that catches the cancellation and takes a while to return", function()
      local e = tulua.new_error("EFIRST", "first failed")
      local slow
      local t0 = tulua.now()
      local ok, err, count = scoped(function()
        local tg <close> = asyncio.TaskGroup()
        tg:create_task(fail_after(0.01, e))
        slow = tg:create_task(function()
          pcall(asyncio.sleep, 10)
          asyncio.sleep(0.05)
          return "late"
        end)
      end)
      local elapsed = tulua.now() - t0
      assert.is_false(ok)
      assert.are.equal("EGROUP", err.code)
      assert.are.equal(1, #err.errors)
      assert.are.equal(e, err.errors[1])
      assert.are.equal("done", slow:status())
      assert.are.equal("late", slow:result())
      assert.are.equal(0, count)
      assert.is_true(elapsed >= 0.055, "elapsed " .. elapsed)
    end)

    it("cancels the owner's body when a task fails while the body still runs", function()
      local e = tulua.new_error("EFIRST", "first failed")
      local reached = false
      local sleeper
      local ok, err, count = scoped(function()
        local tg <close> = asyncio.TaskGroup()
        tg:create_task(fail_after(0.01, e))
        sleeper = tg:create_task(asyncio.sleep, 10)
        asyncio.sleep(10)
        reached = true
      end)
      assert.is_false(ok)
      assert.is_false(reached)
      assert.are.equal("EGROUP", err.code)
      assert.are.equal(1, #err.errors)
      assert.are.equal(e, err.errors[1])
      assert.is_true(sleeper:cancelled())
      assert.are.equal(0, count)
    end)

    it("cancels the tasks when the owner is cancelled, then raises the CancelledError", function()
      local a, b
      local owner = asyncio.create_task(function()
        local tg <close> = asyncio.TaskGroup()
        a = tg:create_task(asyncio.sleep, 10)
        b = tg:create_task(function()
          local _, e = pcall(asyncio.sleep, 10)
          asyncio.sleep(0.02)
          error(e)
        end)
      end)
      step(1) -- the owner waits at the end of its scope
      owner:cancel("owner")
      local err = raised(owner.join, owner)
      assert.are.equal("ECANCELED", err.code)
      assert.are.equal("owner", tostring(err))
      assert.are.same({true, true}, {a:cancelled(), b:cancelled()})
    end)

    it("cancels the tasks when the owner is cancelled in the body, and waits for them", function()
      local a, slow
      local owner = asyncio.create_task(function()
        local tg <close> = asyncio.TaskGroup()
        a = tg:create_task(asyncio.sleep, 10)
        slow = tg:create_task(function()
          pcall(asyncio.sleep, 10)
          asyncio.sleep(0.02)
          return "late"
        end)
        asyncio.sleep(10)
      end)
      step(1)
      owner:cancel()
      assert.are.equal("ECANCELED", raised(owner.join, owner).code)
      assert.is_true(a:cancelled())
      assert.are.equal("late", slow:result())
    end)

    it("waits for its tasks at the top level of a task that fails in the body", function()
      local e = tulua.new_error("EFIRST", "first failed")
      local slow
      local owner = asyncio.create_task(function()
        local tg <close> = asyncio.TaskGroup()
        tg:create_task(fail_after(0.01, e))
        slow = tg:create_task(function()
          pcall(asyncio.sleep, 10)
          asyncio.sleep(0.02)
          return "late"
        end)
        asyncio.sleep(10)
      end)
      local err = raised(owner.join, owner)
      assert.are.equal("EGROUP", err.code)
      assert.are.same({e}, err.errors)
      assert.are.equal("late", slow:result()) -- finished before the group raised
    end)

    it("cannot wait at the top level of a plain tulua.spawn task that fails: cancels and raises at once", function()
      local slow
      local owner = tulua.spawn(function()
        local tg <close> = asyncio.TaskGroup()
        slow = tg:create_task(function()
          pcall(asyncio.sleep, 10)
          asyncio.sleep(0.02)
        end)
        asyncio.sleep(0)
        error("body failed", 0)
      end)
      local err = raised(owner.join, owner)
      assert.are.equal("EGROUP", err.code)
      assert.are.equal("waiting", slow:status()) -- cancelled, still cleaning up
      slow:join()
    end)

    it("raises an error of the body at once in an EGROUP, and cancels the tasks", function()
      local e = tulua.new_error("EBODY", "body failed")
      local a
      local ok, err = scoped(function()
        local tg <close> = asyncio.TaskGroup()
        a = tg:create_task(asyncio.sleep, 10)
        asyncio.sleep(0)
        error(e)
      end)
      assert.is_false(ok)
      assert.are.equal("EGROUP", err.code)
      assert.are.equal(1, #err.errors)
      assert.are.equal(e, err.errors[1])
      step(2) -- the cancelled tasks finish in the background
      assert.is_true(a:cancelled())
    end)
  end)

  describe("errors", function()
    it("is_cancelled is true for a CancelledError only", function()
      local t = asyncio.create_task(asyncio.sleep, 10)
      step(1)
      t:cancel()
      local err = raised(t.join, t)
      assert.is_true(asyncio.is_cancelled(err))
      assert.is_false(asyncio.is_timeout(err))
      assert.is_true(asyncio.is_error(err, asyncio.CancelledError))
      assert.is_false(asyncio.is_error(err, asyncio.TimeoutError))
      assert.is_false(asyncio.is_cancelled(asyncio.TimeoutError()))
      assert.is_false(asyncio.is_cancelled("ECANCELED"))
      assert.is_false(asyncio.is_cancelled(nil))
    end)

    it("TimeoutError() makes a timeout error object, with an optional message", function()
      local e = asyncio.TimeoutError("too slow")
      assert.are.equal("ETIMEDOUT", e.code)
      assert.are.equal("too slow", tostring(e))
      assert.are.equal("tulua.error", getmetatable(e).__name)
      assert.is_true(asyncio.is_timeout(e))
      assert.is_true(asyncio.is_error(e, asyncio.TimeoutError))
      assert.are.equal("ETIMEDOUT", asyncio.TimeoutError().code)
      assert.is_true(asyncio.is_timeout(asyncio.TimeoutError()))
    end)

    it("is_error tells the classes apart by their code", function()
      local invalid = raised(asyncio.Future().result, asyncio.Future())
      assert.are.equal("EINVALIDSTATE", invalid.code)
      assert.is_true(asyncio.is_error(invalid, asyncio.InvalidStateError))
      assert.is_false(asyncio.is_error(invalid, asyncio.CancelledError))
      assert.is_true(asyncio.is_error(tulua.new_error("ETIMEDOUT", "x"), asyncio.TimeoutError))
      assert.is_true(asyncio.is_error(tulua.new_error("EGROUP", "x"), asyncio.ExceptionGroup))
      assert.is_false(asyncio.is_error("EINVALIDSTATE", asyncio.InvalidStateError))
      assert.is_false(asyncio.is_error(nil, asyncio.InvalidStateError))
    end)
  end)

  describe("event loop", function()
    it("get_event_loop and get_running_loop give the same loop in a task", function()
      local loop = asyncio.get_event_loop()
      assert.are.equal(loop, asyncio.get_running_loop())
      assert.are.equal(loop, asyncio.get_event_loop())
      assert.is_false(loop:is_closed())
    end)

    it("is_running() is true in a task: the loop runs it", function()
      assert.is_true(asyncio.get_running_loop():is_running())
    end)

    describe("run_until_complete", function()
      it("runs a function with its arguments and returns its results", function()
        local loop = asyncio.get_event_loop()
        local r = table.pack(loop:run_until_complete(function(...)
          asyncio.sleep(0.01)
          return ...
        end, "a", nil, 3))
        assert.are.same({n = 3, "a", nil, 3}, r)
      end)

      it("waits for a task or a future", function()
        local loop = asyncio.get_event_loop()
        local t = loop:create_task(asyncio.sleep, 0.01, "task")
        assert.are.equal("task", loop:run_until_complete(t))
        local fut = loop:create_future()
        loop:call_later(0.01, function() fut:set_result("future") end)
        assert.are.equal("future", loop:run_until_complete(fut))
      end)

      it("raises the error", function()
        local e = tulua.new_error("EBOOM", "boom")
        local loop = asyncio.get_event_loop()
        assert.are.equal(e, raised(loop.run_until_complete, loop, fail_after(0, e)))
      end)

      it("raises 'Event loop is closed' once the loop is closed", function()
        local loop = asyncio.new_event_loop()
        local ran = false
        loop:close()
        assert.is_true(loop:is_closed())
        local err = raised(loop.run_until_complete, loop, function() ran = true end)
        assert.are.equal("Event loop is closed", message(err))
        step(1)
        assert.is_false(ran)
      end)
    end)

    describe("call_soon", function()
      it("runs the functions on the next loop turn, in order, with their arguments", function()
        local loop = asyncio.get_event_loop()
        local log = {}
        local function record(...) log[#log + 1] = table.pack(...) end
        loop:call_soon(record, 1)
        loop:call_soon(record, 2, nil, "x")
        loop:call_soon(record, 3)
        assert.are.same({}, log)
        step(1)
        assert.are.same({{n = 1, 1}, {n = 3, 2, nil, "x"}, {n = 1, 3}}, log)
      end)

      it("returns a handle whose cancel keeps the function from running", function()
        local loop = asyncio.get_event_loop()
        local log = {}
        local h = loop:call_soon(function() log[#log + 1] = "cancelled one" end)
        loop:call_soon(function() log[#log + 1] = "other" end)
        assert.is_false(h:cancelled())
        h:cancel()
        assert.is_true(h:cancelled())
        step(2)
        assert.are.same({"other"}, log)
      end)

      it("runs the function as a task: it may wait", function()
        local fut = asyncio.Future()
        asyncio.get_event_loop():call_soon(function()
          asyncio.sleep(0.01)
          fut:set_result("waited")
        end)
        assert.are.equal("waited", asyncio.wait_for(fut, 5))
      end)
    end)

    describe("call_later and call_at", function()
      it("call_later runs the functions in the order of their delays, not before", function()
        local loop = asyncio.get_event_loop()
        local log = {}
        local fut = asyncio.Future()
        local t0 = loop:time()
        local function record(name)
          log[#log + 1] = {name, loop:time() - t0}
          if #log == 3 then fut:set_result() end
        end
        loop:call_later(0.06, record, "c")
        loop:call_later(0.02, record, "a")
        loop:call_later(0.04, record, "b")
        asyncio.wait_for(fut, 5)
        assert.are.same({"a", "b", "c"}, {log[1][1], log[2][1], log[3][1]})
        assert.is_true(log[1][2] >= 0.019, "a after " .. log[1][2])
        assert.is_true(log[3][2] >= 0.057, "c after " .. log[3][2])
      end)

      it("call_later's handle gives when() in loop time", function()
        local loop = asyncio.get_event_loop()
        local t0 = loop:time()
        local h = loop:call_later(10, function() end)
        local t1 = loop:time()
        assert.is_true(h:when() >= t0 + 10 and h:when() <= t1 + 10, "when " .. h:when())
        h:cancel()
      end)

      it("call_at runs the functions at their loop times, in order", function()
        local loop = asyncio.get_event_loop()
        local log = {}
        local fut = asyncio.Future()
        local now = loop:time()
        local function record(name, when)
          log[#log + 1] = {name, loop:time() >= when - 0.001}
          if #log == 3 then fut:set_result() end
        end
        local h = loop:call_at(now + 0.05, record, "c", now + 0.05)
        loop:call_at(now + 0.01, record, "a", now + 0.01)
        loop:call_at(now + 0.03, record, "b", now + 0.03)
        assert.are.equal(now + 0.05, h:when())
        asyncio.wait_for(fut, 5)
        assert.are.same({{"a", true}, {"b", true}, {"c", true}}, log)
      end)

      it("a cancelled handle never runs", function()
        local loop = asyncio.get_event_loop()
        local log = {}
        local fence = asyncio.Future()
        local later = loop:call_later(0.01, function() log[#log + 1] = "later" end)
        local at = loop:call_at(loop:time() + 0.01, function() log[#log + 1] = "at" end)
        later:cancel()
        at:cancel()
        assert.are.same({true, true}, {later:cancelled(), at:cancelled()})
        loop:call_later(0.03, function() fence:set_result() end)
        asyncio.wait_for(fence, 5)
        assert.are.same({}, log)
      end)
    end)

    it("time() is the monotonic time of tulua.now()", function()
      local loop = asyncio.get_event_loop()
      local t0 = tulua.now()
      local now = loop:time()
      local t1 = tulua.now()
      assert.are.equal("float", math.type(now))
      assert.is_true(t0 <= now and now <= t1)
    end)

    it("run_forever waits until stop() is called", function()
      local loop = asyncio.get_event_loop()
      local t0 = tulua.now()
      loop:call_later(0.1, function() loop:stop() end)
      loop:run_forever()
      local elapsed = tulua.now() - t0
      assert.is_true(elapsed >= 0.095, "elapsed " .. elapsed)
    end)

    it("create_task starts a task with its arguments", function()
      local t = asyncio.get_event_loop():create_task(function(a, b) return a + b end, 2, 3)
      assert.are.equal("thread", type(t))
      assert.are.equal(5, t:join())
      local named = asyncio.get_event_loop():create_task{function(a) return a end, 7, name = "seven"}
      assert.are.equal("seven", named:get_name())
      assert.are.equal(7, named:join())
    end)

    it("set_debug and get_debug switch debug mode", function()
      local loop = asyncio.get_event_loop()
      assert.is_false(loop:get_debug())
      loop:set_debug(true)
      local on = {loop:get_debug(), tulua.get_debug()}
      loop:set_debug(false)
      assert.are.same({true, true}, on)
      assert.are.same({false, false}, {loop:get_debug(), tulua.get_debug()})
    end)
  end)

  describe("debug mode", function()
    local WARNING = "^Lua warning: task 'Task%-%d+' blocked the loop for (%d+%.%d+) s\n(stack traceback:\n.*)$"

    it("with TULUA_DEBUG=1 reports a task step that blocks the loop, with the task's traceback", function()
      local status, stdout, stderr = run_fixture_env("TULUA_DEBUG=1", "debug_blocking.lua")
      assert.are.equal(0, status)
      assert.are.equal("done\n", stdout)
      local _, warnings = stderr:gsub("Lua warning:", "")
      assert.are.equal(1, warnings, stderr)
      local seconds, traceback = stderr:match(WARNING)
      assert.is_truthy(seconds, stderr)
      assert.is_true(tonumber(seconds) >= 0.14, stderr)
      assert.is_truthy(traceback:find("\n\tdebug_blocking.lua:14: in function <debug_blocking.lua:12>\n", 1, true),
        stderr)
    end)

    it("without TULUA_DEBUG reports nothing", function()
      assert.are.same({0, "done\n", ""}, {run_fixture_env("", "debug_blocking.lua")})
    end)

    it("is on while asyncio.run(fn, {debug = true}) runs, and only then", function()
      local status, stdout, stderr = run_fixture_env("", "debug_run.lua")
      assert.are.equal(0, status)
      assert.are.equal("before: false\ninside: true\nafter: false\n", stdout)
      local _, warnings = stderr:gsub("Lua warning:", "")
      assert.are.equal(1, warnings, stderr)
      local seconds, traceback = stderr:match(WARNING)
      assert.is_truthy(seconds, stderr)
      assert.is_true(tonumber(seconds) >= 0.14, stderr)
      assert.is_truthy(traceback:find("\n\tdebug_run.lua:15: in function <debug_run.lua:12>\n", 1, true), stderr)
    end)
  end)

  describe("at the API boundary", function()
    it("checks self and the arguments, blaming the caller with a bad argument error", function()
      local ok, errs = scoped(function()
        local t <close> = asyncio.timeout(10)
        local tg <close> = asyncio.TaskGroup()
        local function err_of(...)
          local good, e = pcall(...)
          assert(not good)
          return message(e)
        end
        return {
          err_of(t.reschedule, t, true),
          err_of(t.when, {}),
          err_of(asyncio.Future().result, {}),
          err_of(asyncio.get_event_loop().time, {}),
          err_of(asyncio.set_event_loop, 5),
          err_of(tg.create_task, nil, print),
          err_of(asyncio.wait_for, coroutine.create(print), 1),
          err_of(asyncio.gather, coroutine.create(print)),
          err_of(asyncio.get_event_loop().run_in_executor, asyncio.get_event_loop(), 5, print),
        }
      end)
      assert.is_true(ok, tostring(errs))
      assert.are.same({
        "bad argument #1 to 'reschedule' (number expected, got boolean)",
        "bad argument #1 to 'when' (asyncio.Timeout expected, got table)",
        "bad argument #1 to 'result' (asyncio.Future expected, got table)",
        "bad argument #1 to 'time' (asyncio.Loop expected, got table)",
        "bad argument #1 to 'set_event_loop' (asyncio.Loop expected, got number)",
        "bad argument #1 to 'create_task' (asyncio.TaskGroup expected, got nil)",
        "bad argument #1 to 'wait_for' (Task, Future or function expected, got thread)",
        "bad argument #1 to 'gather' (Task, Future or function expected, got thread)",
        "bad argument #1 to 'run_in_executor' (concurrent.futures.Executor expected, got number)",
      }, errs)
    end)
  end)
end)
