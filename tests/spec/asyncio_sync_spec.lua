-- asyncio's synchronization primitives (lua/asyncio.md): Lock, Event,
-- Condition, Semaphore, BoundedSemaphore, Queue, PriorityQueue and
-- LifoQueue, with Python's asyncio semantics. Spec bodies run in the main
-- task, so they wait directly. Where a test needs other tasks to reach a
-- given point, it steps the loop a fixed number of times with sleep(0):
-- every task made ready before a sleep(0) runs one step before the sleeper
-- resumes.
local asyncio = require("asyncio")

local HERE = debug.getinfo(1, "S").short_src -- as error positions show it
package.path = (debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or ".") .. "/?.lua;" .. package.path
local support = require("support")
local error_of = support.error_in(HERE)

local raised = support.raised

-- Lets the other ready tasks run: n turns of the loop.
local function step(n)
  for _ = 1, n or 1 do
    asyncio.sleep(0)
  end
end

-- Joins task, which must finish within 1000 turns of the loop: a task that
-- hangs fails its test instead of stopping the run as a deadlock.
local function join(task)
  for _ = 1, 1000 do
    if task:done() then break end
    asyncio.sleep(0)
  end
  assert.is_true(task:done(), "the task did not finish: " .. task:status())
  return task:join()
end

-- Joins a task that must end cancelled; returns its error's code.
local function cancelled_code(task)
  local err = raised(join, task)
  assert.is_true(asyncio.is_cancelled(err), "not a cancellation: " .. tostring(err))
  return err.code
end

-- Starts fn(...) as a task and lets it run until it first waits.
local function started(fn, ...)
  local t = asyncio.create_task(fn, ...)
  step(1)
  return t
end

-- Returns a list of the statuses of the tasks.
local function statuses(tasks)
  local s = {}
  for i, t in ipairs(tasks) do
    s[i] = t:status()
  end
  return s
end

-- Takes every item out of q without waiting, in the order get gives them.
local function drain(q)
  local items = {}
  for _ = 1, 1000 do
    if q:empty() then return items end
    items[#items + 1] = q:get_nowait()
  end
  error("queue never emptied")
end

describe("asyncio", function()
  describe("Lock", function()
    it("is unlocked when new, locked after acquire and unlocked after release", function()
      local lock = asyncio.Lock()
      assert.is_false(lock:locked())
      lock:acquire()
      assert.is_true(lock:locked())
      lock:release()
      assert.is_false(lock:locked())
    end)

    it("acquire returns the lock itself", function()
      local lock = asyncio.Lock()
      assert.are.equal(lock, lock:acquire())
      lock:release()
    end)

    it("acquires a free lock without letting other tasks run", function()
      local lock = asyncio.Lock()
      local ran = false
      local t = asyncio.create_task(function() ran = true end)
      lock:acquire()
      assert.is_false(ran)
      lock:release()
      join(t)
    end)

    it("makes a second acquire wait until the holder releases it", function()
      local lock = asyncio.Lock()
      lock:acquire()
      local t = started(function()
        lock:acquire()
        return "got it"
      end)
      step(2)
      assert.are.equal("waiting", t:status())
      lock:release()
      assert.are.equal("got it", join(t))
      assert.is_true(lock:locked()) -- t never released it
      lock:release()
      assert.is_false(lock:locked())
    end)

    it("grants the lock to its waiters in the order they asked for it", function()
      local lock = asyncio.Lock()
      lock:acquire()
      local order, tasks = {}, {}
      for i = 1, 5 do
        tasks[i] = asyncio.create_task(function()
          lock:acquire()
          order[#order + 1] = i
          asyncio.sleep(0) -- holds it across a turn of the loop
          lock:release()
        end)
      end
      step(1)
      assert.are.same({"waiting", "waiting", "waiting", "waiting", "waiting"}, statuses(tasks))
      lock:release()
      for _, t in ipairs(tasks) do join(t) end
      assert.are.same({1, 2, 3, 4, 5}, order)
      assert.is_false(lock:locked())
    end)

    it("makes a newcomer wait behind the waiter a release woke, even before that waiter ran", function()
      local lock = asyncio.Lock()
      lock:acquire()
      local log = {}
      local waiter = started(function()
        lock:acquire()
        log[#log + 1] = "waiter"
        lock:release()
      end)
      lock:release() -- wakes the waiter, which has not run yet
      lock:acquire() -- so this one waits for its turn
      log[#log + 1] = "main"
      lock:release()
      join(waiter)
      assert.are.same({"waiter", "main"}, log)
    end)

    it("raises when released while unlocked", function()
      local lock = asyncio.Lock()
      assert.are.equal("attempt to release an unlocked lock", error_of(function() lock:release() end))
      lock:acquire()
      lock:release()
      assert.are.equal("attempt to release an unlocked lock", error_of(function() lock:release() end))
      assert.is_false(lock:locked())
    end)

    describe("in a <close> variable", function()
      it("is released at the end of the scope", function()
        local lock = asyncio.Lock()
        do
          local _ <close> = lock:acquire()
          assert.is_true(lock:locked())
        end
        assert.is_false(lock:locked())
      end)

      it("is released when the scope raises, and the error goes on unchanged", function()
        local lock = asyncio.Lock()
        local boom = setmetatable({}, {__tostring = function() return "boom" end})
        local ok, err = pcall(function()
          local _ <close> = lock:acquire()
          error(boom)
        end)
        assert.are.same({false, boom}, {ok, err})
        assert.are.equal(boom, err)
        assert.is_false(lock:locked())
      end)

      it("is released when the task holding it is cancelled in the scope", function()
        local lock = asyncio.Lock()
        local t = started(function()
          local _ <close> = lock:acquire()
          asyncio.sleep(10)
        end)
        assert.is_true(lock:locked())
        t:cancel()
        assert.are.equal("ECANCELED", cancelled_code(t))
        assert.is_false(lock:locked())
      end)

      it("hands the lock to the next waiter at the end of the scope", function()
        local lock = asyncio.Lock()
        local log = {}
        local t
        do
          local _ <close> = lock:acquire()
          t = started(function()
            local _ <close> = lock:acquire()
            log[#log + 1] = "task"
          end)
          log[#log + 1] = "main"
        end
        join(t)
        assert.are.same({"main", "task"}, log)
        assert.is_false(lock:locked())
      end)
    end)

    describe("cancelled while waiting in acquire", function()
      it("leaves the queue of waiters: the next release goes to the next waiter", function()
        local lock = asyncio.Lock()
        lock:acquire()
        local a = started(function()
          lock:acquire()
          return "a"
        end)
        local b = started(function()
          lock:acquire()
          lock:release()
          return "b"
        end)
        a:cancel()
        assert.are.equal("ECANCELED", cancelled_code(a))
        lock:release()
        assert.are.equal("b", join(b))
        assert.is_false(lock:locked())
      end)

      it("passes the lock to the next waiter when the woken one is cancelled before it runs", function()
        local lock = asyncio.Lock()
        lock:acquire()
        local a = started(function()
          lock:acquire()
          return "a"
        end)
        local b = started(function()
          lock:acquire()
          lock:release()
          return "b"
        end)
        lock:release() -- wakes a ...
        a:cancel() -- ... which is cancelled before it runs
        assert.are.equal("ECANCELED", cancelled_code(a))
        assert.are.equal("b", join(b))
        assert.is_false(lock:locked())
      end)

      it("raises at once in a task already asked to stop, which takes no place in line", function()
        local lock = asyncio.Lock()
        lock:acquire()
        local a = started(function()
          asyncio.current_task():cancel()
          local ok, err = pcall(lock.acquire, lock)
          return ok, err.code
        end)
        assert.are.same({false, "ECANCELED"}, {join(a)})
        lock:release()
        assert.is_false(lock:locked()) -- not handed to a
      end)

      it("leaves the lock free when the only woken waiter is cancelled before it runs", function()
        local lock = asyncio.Lock()
        lock:acquire()
        local a = started(function()
          local ok, err = pcall(lock.acquire, lock)
          return ok, err.code, lock:locked()
        end)
        lock:release()
        a:cancel()
        assert.are.same({false, "ECANCELED", false}, {join(a)})
        assert.is_false(lock:locked())
        local ran = false
        local other = asyncio.create_task(function() ran = true end)
        lock:acquire() -- free: no wait, the other task does not run
        assert.is_false(ran)
        lock:release()
        join(other)
      end)
    end)
  end)

  describe("Event", function()
    it("is not set when new; set sets it and clear clears it", function()
      local ev = asyncio.Event()
      assert.is_false(ev:is_set())
      ev:set()
      assert.is_true(ev:is_set())
      ev:set() -- twice: no change
      assert.is_true(ev:is_set())
      ev:clear()
      assert.is_false(ev:is_set())
      ev:clear()
      assert.is_false(ev:is_set())
    end)

    it("wait returns true at once when it is set, without letting other tasks run", function()
      local ev = asyncio.Event()
      ev:set()
      local ran = false
      local t = asyncio.create_task(function() ran = true end)
      assert.are.same({true}, {ev:wait()})
      assert.is_false(ran)
      join(t)
    end)

    it("wakes every waiter when set, in the order they waited, and each wait returns true", function()
      local ev = asyncio.Event()
      local woke, tasks = {}, {}
      for i = 1, 3 do
        tasks[i] = asyncio.create_task(function()
          local r = ev:wait()
          woke[#woke + 1] = i
          return r
        end)
      end
      step(3)
      assert.are.same({}, woke)
      assert.are.same({"waiting", "waiting", "waiting"}, statuses(tasks))
      ev:set()
      for i, t in ipairs(tasks) do
        assert.are.equal(true, join(t), "task " .. i)
      end
      assert.are.same({1, 2, 3}, woke)
      assert.is_true(ev:is_set())
    end)

    it("wakes the waiters of a set even when clear follows before they run", function()
      local ev = asyncio.Event()
      local tasks = {}
      for i = 1, 2 do
        tasks[i] = asyncio.create_task(function() return ev:wait() end)
      end
      step(1)
      ev:set()
      ev:clear()
      assert.are.same({true, true}, {join(tasks[1]), join(tasks[2])})
      assert.is_false(ev:is_set())
    end)

    it("makes wait wait again after clear", function()
      local ev = asyncio.Event()
      ev:set()
      ev:clear()
      local t = started(function() return ev:wait() end)
      step(2)
      assert.are.equal("waiting", t:status())
      ev:set()
      assert.is_true(join(t))
    end)

    it("drops a cancelled waiter and still wakes the others", function()
      local ev = asyncio.Event()
      local a = started(function() return ev:wait() end)
      local b = started(function() return ev:wait() end)
      a:cancel()
      assert.are.equal("ECANCELED", cancelled_code(a))
      ev:set()
      assert.is_true(join(b))
    end)

    it("lets a waiter cancelled after the set end cancelled, and the event stays set", function()
      local ev = asyncio.Event()
      local a = started(function() return ev:wait() end)
      local b = started(function() return ev:wait() end)
      ev:set()
      a:cancel()
      assert.are.equal("ECANCELED", cancelled_code(a))
      assert.is_true(join(b))
      assert.is_true(ev:is_set())
    end)
  end)

  describe("Condition", function()
    it("has a lock of its own when given none: acquire, locked and release", function()
      local cond = asyncio.Condition()
      assert.is_false(cond:locked())
      assert.are.equal(cond, cond:acquire())
      assert.is_true(cond:locked())
      cond:release()
      assert.is_false(cond:locked())
    end)

    it("shares the Lock it is given", function()
      local lock = asyncio.Lock()
      local cond = asyncio.Condition(lock)
      lock:acquire()
      assert.is_true(cond:locked())
      cond:release()
      assert.is_false(lock:locked())
      cond:acquire()
      assert.is_true(lock:locked())
      lock:release()
      assert.is_false(cond:locked())
    end)

    it("is released at the end of a <close> scope, also when the scope raises", function()
      local cond = asyncio.Condition()
      do
        local _ <close> = cond:acquire()
        assert.is_true(cond:locked())
      end
      assert.is_false(cond:locked())
      local ok, err = pcall(function()
        local _ <close> = cond:acquire()
        error("boom", 0)
      end)
      assert.are.same({false, "boom"}, {ok, err})
      assert.is_false(cond:locked())
    end)

    it("makes acquire wait while another task holds the lock", function()
      local cond = asyncio.Condition()
      cond:acquire()
      local t = started(function()
        cond:acquire()
        cond:release()
        return "acquired"
      end)
      assert.are.equal("waiting", t:status())
      cond:release()
      assert.are.equal("acquired", join(t))
    end)

    it("wait releases the lock while it waits and holds it again when it returns true", function()
      local cond = asyncio.Condition()
      local t = started(function()
        cond:acquire()
        local r = cond:wait()
        local held = cond:locked()
        cond:release()
        return r, held
      end)
      assert.are.equal("waiting", t:status())
      assert.is_false(cond:locked()) -- t released it to wait
      cond:acquire()
      cond:notify()
      step(2)
      assert.are.equal("waiting", t:status()) -- notified, but the lock is ours
      cond:release()
      assert.are.same({true, true}, {join(t)})
      assert.is_false(cond:locked())
    end)

    it("notify wakes one waiter, the one that waited longest", function()
      local cond = asyncio.Condition()
      local woke, tasks = {}, {}
      for i = 1, 3 do
        tasks[i] = asyncio.create_task(function()
          local _ <close> = cond:acquire()
          cond:wait()
          woke[#woke + 1] = i
        end)
      end
      step(1)
      cond:acquire()
      cond:notify()
      cond:release()
      step(3)
      assert.are.same({1}, woke)
      assert.are.same({"done", "waiting", "waiting"}, statuses(tasks))
      cond:acquire()
      cond:notify_all()
      cond:release()
      for _, t in ipairs(tasks) do join(t) end
      assert.are.same({1, 2, 3}, woke)
    end)

    it("notify(n) wakes the n waiters that waited longest, in order", function()
      local cond = asyncio.Condition()
      local woke, tasks = {}, {}
      for i = 1, 5 do
        tasks[i] = asyncio.create_task(function()
          local _ <close> = cond:acquire()
          cond:wait()
          woke[#woke + 1] = i
        end)
      end
      step(1)
      cond:acquire()
      cond:notify(2)
      cond:release()
      step(3)
      assert.are.same({1, 2}, woke)
      cond:acquire()
      cond:notify(2)
      cond:release()
      step(3)
      assert.are.same({1, 2, 3, 4}, woke)
      cond:acquire()
      cond:notify(10) -- more than wait: wakes those there are
      cond:release()
      for _, t in ipairs(tasks) do join(t) end
      assert.are.same({1, 2, 3, 4, 5}, woke)
    end)

    it("notify with nobody waiting does nothing, and is not remembered for a later wait", function()
      local cond = asyncio.Condition()
      cond:acquire()
      cond:notify()
      cond:notify_all()
      cond:release()
      local t = started(function()
        local _ <close> = cond:acquire()
        return cond:wait()
      end)
      step(2)
      assert.are.equal("waiting", t:status())
      cond:acquire()
      cond:notify()
      cond:release()
      assert.is_true(join(t))
    end)

    it("notify_all wakes every waiter", function()
      local cond = asyncio.Condition()
      local tasks = {}
      for i = 1, 4 do
        tasks[i] = asyncio.create_task(function()
          local _ <close> = cond:acquire()
          cond:wait()
          return i
        end)
      end
      step(1)
      cond:acquire()
      cond:notify_all()
      cond:release()
      for i, t in ipairs(tasks) do assert.are.equal(i, join(t)) end
      assert.is_false(cond:locked())
    end)

    describe("wait_for", function()
      it("returns the predicate's value at once when it is already true", function()
        local cond = asyncio.Condition()
        local ran = false
        local t = asyncio.create_task(function() ran = true end)
        cond:acquire()
        assert.are.same({"ready"}, {cond:wait_for(function() return "ready" end)})
        assert.is_true(cond:locked())
        assert.is_false(ran)
        cond:release()
        join(t)
      end)

      it("waits for notifications until the predicate is true, checking it after each", function()
        local cond = asyncio.Condition()
        local value, calls = 0, 0
        local t = started(function()
          local _ <close> = cond:acquire()
          local r = cond:wait_for(function()
            calls = calls + 1
            return value >= 3 and value
          end)
          return r, cond:locked()
        end)
        for i = 1, 3 do
          assert.are.equal("waiting", t:status())
          cond:acquire()
          value = i
          cond:notify()
          cond:release()
          step(2)
        end
        assert.are.same({3, true}, {join(t)})
        assert.are.equal(4, calls) -- once at first, then once per notification
      end)
    end)

    describe("cancelled while waiting in wait", function()
      it("holds the lock again before the cancellation is raised", function()
        local cond = asyncio.Condition()
        local t = started(function()
          cond:acquire()
          local ok, err = pcall(cond.wait, cond)
          local held = cond:locked()
          cond:release()
          return ok, err.code, held
        end)
        cond:acquire()
        t:cancel()
        step(3)
        assert.are.equal("waiting", t:status()) -- for the lock, which we hold
        cond:release()
        assert.are.same({false, "ECANCELED", true}, {join(t)})
        assert.is_false(cond:locked())
      end)

      it("holds the lock again even when cancelled a second time while it waits for the lock", function()
        local cond = asyncio.Condition()
        local t = started(function()
          cond:acquire()
          local ok, err = pcall(cond.wait, cond)
          local held = cond:locked()
          cond:release()
          return ok, err.code, held
        end)
        cond:acquire()
        t:cancel()
        step(2)
        t:cancel()
        step(2)
        assert.are.equal("waiting", t:status())
        cond:release()
        assert.are.same({false, "ECANCELED", true}, {join(t)})
        assert.is_false(cond:locked())
      end)

      it("does not take a later notification from the waiters that remain", function()
        local cond = asyncio.Condition()
        local a = started(function()
          local _ <close> = cond:acquire()
          return cond:wait()
        end)
        local b = started(function()
          local _ <close> = cond:acquire()
          return cond:wait()
        end)
        a:cancel()
        assert.are.equal("ECANCELED", cancelled_code(a))
        cond:acquire()
        cond:notify()
        cond:release()
        assert.is_true(join(b))
      end)

      it("passes a notification it got but could not use to the next waiter", function()
        local cond = asyncio.Condition()
        local a = started(function()
          local _ <close> = cond:acquire()
          return cond:wait()
        end)
        local b = started(function()
          local _ <close> = cond:acquire()
          return cond:wait()
        end)
        cond:acquire()
        cond:notify() -- wakes a ...
        a:cancel() -- ... which is cancelled before it runs
        cond:release()
        assert.are.equal("ECANCELED", cancelled_code(a))
        assert.is_true(join(b))
        assert.is_false(cond:locked())
      end)
    end)

    it("raises when wait is called without holding the lock", function()
      local cond = asyncio.Condition()
      assert.are.equal("attempt to wait on a condition whose lock is not acquired",
        error_of(function() cond:wait() end))
      assert.is_false(cond:locked())
    end)

    it("raises when notify or notify_all is called without holding the lock", function()
      local cond = asyncio.Condition()
      assert.are.equal("attempt to notify on a condition whose lock is not acquired",
        error_of(function() cond:notify() end))
      assert.are.equal("attempt to notify on a condition whose lock is not acquired",
        error_of(function() cond:notify_all() end))
    end)

    it("raises when released while unlocked", function()
      local cond = asyncio.Condition()
      assert.are.equal("attempt to release an unlocked lock", error_of(function() cond:release() end))
    end)
  end)

  describe("Semaphore", function()
    it("lets value acquires through without waiting, then makes the next one wait", function()
      local sem = asyncio.Semaphore(2)
      local ran = false
      local other = asyncio.create_task(function() ran = true end)
      assert.is_false(sem:locked())
      assert.are.equal(sem, sem:acquire())
      assert.is_false(sem:locked())
      sem:acquire()
      assert.is_true(sem:locked())
      assert.is_false(ran) -- neither acquire waited
      join(other)
      local t = started(function()
        sem:acquire()
        return "acquired"
      end)
      step(2)
      assert.are.equal("waiting", t:status())
      sem:release()
      assert.are.equal("acquired", join(t))
      assert.is_true(sem:locked())
      sem:release()
      sem:release()
      assert.is_false(sem:locked())
    end)

    it("has a value of 1 when given none", function()
      local sem = asyncio.Semaphore()
      sem:acquire()
      assert.is_true(sem:locked())
      sem:release()
      assert.is_false(sem:locked())
    end)

    it("with a value of 0 is locked until released", function()
      local sem = asyncio.Semaphore(0)
      assert.is_true(sem:locked())
      local t = started(function() return sem:acquire() end)
      assert.are.equal("waiting", t:status())
      sem:release()
      assert.are.equal(sem, join(t))
      assert.is_true(sem:locked())
    end)

    it("may be released more often than acquired, which raises its value", function()
      local sem = asyncio.Semaphore(1)
      sem:release()
      sem:release()
      for _ = 1, 3 do
        assert.is_false(sem:locked())
        sem:acquire()
      end
      assert.is_true(sem:locked())
    end)

    it("grants permits to its waiters in the order they asked", function()
      local sem = asyncio.Semaphore(0)
      local order, tasks = {}, {}
      for i = 1, 5 do
        tasks[i] = asyncio.create_task(function()
          sem:acquire()
          order[#order + 1] = i
        end)
      end
      step(1)
      assert.are.same({"waiting", "waiting", "waiting", "waiting", "waiting"}, statuses(tasks))
      sem:release()
      sem:release()
      step(3)
      assert.are.same({1, 2}, order)
      for _ = 1, 3 do sem:release() end
      for _, t in ipairs(tasks) do join(t) end
      assert.are.same({1, 2, 3, 4, 5}, order)
      assert.is_true(sem:locked())
    end)

    it("makes a newcomer wait behind the waiter a release woke, even before that waiter ran", function()
      local sem = asyncio.Semaphore(1)
      sem:acquire()
      local log = {}
      local waiter = started(function()
        sem:acquire()
        log[#log + 1] = "waiter"
        sem:release()
      end)
      sem:release() -- wakes the waiter, which has not run yet
      sem:acquire() -- so this one waits for its turn
      log[#log + 1] = "main"
      sem:release()
      join(waiter)
      assert.are.same({"waiter", "main"}, log)
      assert.is_false(sem:locked())
    end)

    it("never lets more than value tasks hold it at once", function()
      local sem = asyncio.Semaphore(3)
      local inside, most, done = 0, 0, 0
      local tasks = {}
      for i = 1, 10 do
        tasks[i] = asyncio.create_task(function()
          local _ <close> = sem:acquire()
          inside = inside + 1
          most = math.max(most, inside)
          step(i % 3 + 1)
          inside = inside - 1
          done = done + 1
        end)
      end
      for _, t in ipairs(tasks) do join(t) end
      assert.are.same({3, 0, 10}, {most, inside, done})
      assert.is_false(sem:locked())
    end)

    it("is released at the end of a <close> scope, also when the scope raises", function()
      local sem = asyncio.Semaphore(1)
      do
        local _ <close> = sem:acquire()
        assert.is_true(sem:locked())
      end
      assert.is_false(sem:locked())
      local ok, err = pcall(function()
        local _ <close> = sem:acquire()
        error("boom", 0)
      end)
      assert.are.same({false, "boom"}, {ok, err})
      assert.is_false(sem:locked())
    end)

    describe("cancelled while waiting in acquire", function()
      it("takes no permit: the next release goes to the next waiter", function()
        local sem = asyncio.Semaphore(0)
        local a = started(function() return sem:acquire() end)
        local b = started(function()
          sem:acquire()
          return "b"
        end)
        a:cancel()
        assert.are.equal("ECANCELED", cancelled_code(a))
        sem:release()
        assert.are.equal("b", join(b))
        assert.is_true(sem:locked())
      end)

      it("passes a permit released to it to the next waiter when cancelled before it runs", function()
        local sem = asyncio.Semaphore(0)
        local a = started(function() return sem:acquire() end)
        local b = started(function()
          sem:acquire()
          return "b"
        end)
        sem:release() -- wakes a ...
        a:cancel() -- ... which is cancelled before it runs
        assert.are.equal("ECANCELED", cancelled_code(a))
        assert.are.equal("b", join(b))
        assert.is_true(sem:locked())
      end)

      it("passes both permits on when one of two woken waiters is cancelled", function()
        local sem = asyncio.Semaphore(0)
        local tasks = {}
        for i = 1, 3 do
          tasks[i] = asyncio.create_task(function()
            sem:acquire()
            return i
          end)
        end
        step(1)
        sem:release()
        sem:release()
        tasks[1]:cancel()
        assert.are.equal("ECANCELED", cancelled_code(tasks[1]))
        assert.are.same({2, 3}, {join(tasks[2]), join(tasks[3])})
        assert.is_true(sem:locked())
      end)

      it("keeps the permit when the only woken waiter is cancelled before it runs", function()
        local sem = asyncio.Semaphore(0)
        local a = started(function()
          local ok, err = pcall(sem.acquire, sem)
          return ok, err.code, sem:locked()
        end)
        sem:release()
        a:cancel()
        assert.are.same({false, "ECANCELED", false}, {join(a)})
        assert.is_false(sem:locked())
        local ran = false
        local other = asyncio.create_task(function() ran = true end)
        sem:acquire() -- the permit is there: no wait
        assert.is_false(ran)
        assert.is_true(sem:locked())
        join(other)
      end)
    end)
  end)

  describe("BoundedSemaphore", function()
    it("acquires and releases like a Semaphore", function()
      local sem = asyncio.BoundedSemaphore(2)
      assert.are.equal(sem, sem:acquire())
      sem:acquire()
      assert.is_true(sem:locked())
      local t = started(function()
        sem:acquire()
        return "acquired"
      end)
      assert.are.equal("waiting", t:status())
      sem:release()
      assert.are.equal("acquired", join(t))
      sem:release()
      sem:release()
      assert.is_false(sem:locked())
    end)

    it("raises when released more often than acquired, and its value stays", function()
      local sem = asyncio.BoundedSemaphore(2)
      assert.are.equal("BoundedSemaphore released too many times", error_of(function() sem:release() end))
      sem:acquire()
      sem:release()
      assert.are.equal("BoundedSemaphore released too many times", error_of(function() sem:release() end))
      sem:acquire()
      sem:acquire()
      assert.is_true(sem:locked()) -- still 2 permits, not 3
      sem:release()
      sem:release()
      assert.are.equal("BoundedSemaphore released too many times", error_of(function() sem:release() end))
    end)

    it("passes a permit released to a waiter that is then cancelled to the next waiter", function()
      local sem = asyncio.BoundedSemaphore(1)
      sem:acquire()
      local a = started(function() return sem:acquire() end)
      local b = started(function()
        sem:acquire()
        sem:release()
        return "b"
      end)
      sem:release()
      a:cancel()
      assert.are.equal("ECANCELED", cancelled_code(a))
      assert.are.equal("b", join(b))
      assert.is_false(sem:locked())
      assert.are.equal("BoundedSemaphore released too many times", error_of(function() sem:release() end))
    end)
  end)

  describe("Queue", function()
    it("is unbounded when given no maxsize or 0", function()
      for _, q in ipairs({asyncio.Queue(), asyncio.Queue(0), asyncio.Queue(nil)}) do
        assert.are.equal(0, q.maxsize)
        for i = 1, 100 do q:put_nowait(i) end
        assert.are.equal(100, q:qsize())
        assert.is_false(q:full())
      end
    end)

    it("tells its size, whether it is empty and whether it is full", function()
      local q = asyncio.Queue(2)
      assert.are.equal(2, q.maxsize)
      assert.are.same({0, true, false}, {q:qsize(), q:empty(), q:full()})
      q:put_nowait("a")
      assert.are.same({1, false, false}, {q:qsize(), q:empty(), q:full()})
      q:put_nowait("b")
      assert.are.same({2, false, true}, {q:qsize(), q:empty(), q:full()})
      q:get_nowait()
      assert.are.same({1, false, false}, {q:qsize(), q:empty(), q:full()})
    end)

    it("gives items in the order they were put, whatever their type", function()
      local q = asyncio.Queue()
      local t = {}
      local items = {3, "two", t, false, 1.5, 3}
      for _, v in ipairs(items) do q:put(v) end
      local got = {}
      for i = 1, #items do got[i] = q:get() end
      assert.are.same(items, got)
      assert.are.equal(t, got[3])
      assert.is_true(q:empty())
    end)

    it("put and get return at once when they need not wait, without letting other tasks run", function()
      local q = asyncio.Queue(1)
      local ran = false
      local t = asyncio.create_task(function() ran = true end)
      assert.are.equal(0, select("#", q:put("x")))
      assert.are.equal("x", q:get())
      assert.is_false(ran)
      join(t)
    end)

    it("put_nowait raises QueueFull on a full queue and leaves it as it was", function()
      local q = asyncio.Queue(1)
      q:put_nowait("a")
      local err = raised(q.put_nowait, q, "b")
      assert.is_true(asyncio.is_error(err, asyncio.QueueFull))
      assert.is_false(asyncio.is_error(err, asyncio.QueueEmpty))
      assert.are.equal("EQUEUEFULL", err.code)
      assert.are.same({"a"}, drain(q))
    end)

    it("get_nowait raises QueueEmpty on an empty queue", function()
      local q = asyncio.Queue()
      local err = raised(q.get_nowait, q)
      assert.is_true(asyncio.is_error(err, asyncio.QueueEmpty))
      assert.is_false(asyncio.is_error(err, asyncio.QueueFull))
      assert.are.equal("EQUEUEEMPTY", err.code)
      q:put_nowait(1)
      q:get_nowait()
      assert.are.equal("EQUEUEEMPTY", raised(q.get_nowait, q).code)
    end)

    it("makes get wait while it is empty", function()
      local q = asyncio.Queue()
      local t = started(function() return q:get() end)
      step(2)
      assert.are.equal("waiting", t:status())
      q:put_nowait("item")
      assert.are.equal("item", join(t))
      assert.are.equal(0, q:qsize())
    end)

    it("makes put wait while it is full", function()
      local q = asyncio.Queue(1)
      q:put("first")
      local t = started(function()
        q:put("second")
        return "put"
      end)
      step(2)
      assert.are.equal("waiting", t:status())
      assert.are.equal(1, q:qsize())
      assert.are.equal("first", q:get())
      assert.are.equal("put", join(t))
      assert.are.same({"second"}, drain(q))
    end)

    it("serves waiting getters in the order they came", function()
      local q = asyncio.Queue()
      local tasks = {}
      for i = 1, 3 do
        tasks[i] = asyncio.create_task(function() return i, q:get() end)
      end
      step(1)
      for _, v in ipairs({"x", "y", "z"}) do q:put_nowait(v) end
      local got = {}
      for i, t in ipairs(tasks) do got[i] = {join(t)} end
      assert.are.same({{1, "x"}, {2, "y"}, {3, "z"}}, got)
    end)

    it("lets waiting putters in in the order they came", function()
      local q = asyncio.Queue(1)
      q:put_nowait("x")
      local tasks = {}
      for i, v in ipairs({"a", "b", "c"}) do
        tasks[i] = asyncio.create_task(function() q:put(v) end)
      end
      step(1)
      assert.are.same({"waiting", "waiting", "waiting"}, statuses(tasks))
      local got = {}
      for i = 1, 4 do got[i] = q:get() end
      for _, t in ipairs(tasks) do join(t) end
      assert.are.same({"x", "a", "b", "c"}, got)
      assert.is_true(q:empty())
    end)

    it("refuses nil", function()
      local q = asyncio.Queue()
      assert.are.equal("bad argument #1 to 'put_nowait' (value expected)", error_of(function() q:put_nowait(nil) end))
      assert.are.equal("bad argument #1 to 'put_nowait' (value expected)", error_of(function() q:put_nowait() end))
      assert.are.equal("bad argument #1 to 'put' (value expected)", error_of(function() q:put(nil) end))
      assert.are.equal(0, q:qsize())
    end)

    describe("task_done and join", function()
      it("join returns at once when no item is unfinished", function()
        local q = asyncio.Queue()
        local ran = false
        local t = asyncio.create_task(function() ran = true end)
        q:join()
        assert.is_false(ran)
        join(t)
      end)

      it("join waits until task_done was called once for every item put", function()
        local q = asyncio.Queue()
        q:put_nowait(1)
        q:put(2)
        local joined = false
        local j = started(function()
          q:join()
          joined = true
        end)
        q:get_nowait()
        q:get_nowait()
        step(2) -- gotten but not done
        assert.is_false(joined)
        q:task_done()
        step(2)
        assert.is_false(joined)
        assert.are.equal("waiting", j:status())
        q:task_done()
        join(j)
        assert.is_true(joined)
        q:join() -- nothing unfinished now
      end)

      it("wakes every task waiting in join", function()
        local q = asyncio.Queue()
        q:put_nowait("x")
        local tasks = {}
        for i = 1, 3 do
          tasks[i] = asyncio.create_task(function()
            q:join()
            return i
          end)
        end
        step(1)
        assert.are.same({"waiting", "waiting", "waiting"}, statuses(tasks))
        q:get_nowait()
        q:task_done()
        assert.are.same({1, 2, 3}, {join(tasks[1]), join(tasks[2]), join(tasks[3])})
      end)

      it("counts an item from a put that waited once it is in the queue", function()
        local q = asyncio.Queue(1)
        q:put_nowait("a")
        local putter = started(function() q:put("b") end)
        assert.are.equal("a", q:get())
        q:task_done()
        join(putter)
        local j = started(function() q:join() end)
        step(2)
        assert.are.equal("waiting", j:status()) -- "b" is unfinished
        assert.are.equal("b", q:get())
        q:task_done()
        join(j)
      end)

      it("task_done raises when called more often than items were put", function()
        local q = asyncio.Queue()
        assert.are.equal("task_done() called too many times", error_of(function() q:task_done() end))
        q:put_nowait(1)
        q:get_nowait()
        q:task_done()
        assert.are.equal("task_done() called too many times", error_of(function() q:task_done() end))
        q:join()
      end)

      it("lets a task cancelled in join end cancelled, and the other joiners still return", function()
        local q = asyncio.Queue()
        q:put_nowait(1)
        local a = started(function() q:join() end)
        local b = started(function()
          q:join()
          return "b"
        end)
        a:cancel()
        assert.are.equal("ECANCELED", cancelled_code(a))
        q:get_nowait()
        q:task_done()
        assert.are.equal("b", join(b))
      end)
    end)

    describe("cancelled while waiting in get", function()
      it("takes no item: the next put goes to the next getter", function()
        local q = asyncio.Queue()
        local a = started(function() return q:get() end)
        local b = started(function() return q:get() end)
        a:cancel()
        assert.are.equal("ECANCELED", cancelled_code(a))
        q:put_nowait("item")
        assert.are.equal("item", join(b))
        assert.is_true(q:empty())
      end)

      it("passes an item put for it to the next getter when cancelled before it runs", function()
        local q = asyncio.Queue()
        local a = started(function() return q:get() end)
        local b = started(function() return q:get() end)
        q:put_nowait("item") -- wakes a ...
        a:cancel() -- ... which is cancelled before it runs
        assert.are.equal("ECANCELED", cancelled_code(a))
        assert.are.equal("item", join(b))
        assert.is_true(q:empty())
      end)

      it("raises at once in a task already asked to stop, which takes no place in line", function()
        local q = asyncio.Queue()
        local a = started(function()
          asyncio.current_task():cancel()
          local ok, err = pcall(q.get, q)
          return ok, err.code
        end)
        assert.are.same({false, "ECANCELED"}, {join(a)})
        local b = started(function() return q:get() end)
        q:put_nowait("item")
        assert.are.equal("item", join(b))
      end)

      it("leaves an item put for it in the queue when it was the only getter", function()
        local q = asyncio.Queue()
        local a = started(function()
          local ok, err = pcall(q.get, q)
          return ok, err.code, q:qsize()
        end)
        q:put_nowait("item")
        a:cancel()
        assert.are.same({false, "ECANCELED", 1}, {join(a)})
        assert.are.same({"item"}, drain(q))
      end)

      it("passes both items on when one of two woken getters is cancelled", function()
        local q = asyncio.Queue()
        local tasks = {}
        for i = 1, 3 do
          tasks[i] = asyncio.create_task(function() return i, q:get() end)
        end
        step(1)
        q:put_nowait("x")
        q:put_nowait("y")
        tasks[1]:cancel()
        assert.are.equal("ECANCELED", cancelled_code(tasks[1]))
        assert.are.same({2, "x"}, {join(tasks[2])})
        assert.are.same({3, "y"}, {join(tasks[3])})
        assert.is_true(q:empty())
      end)
    end)

    describe("cancelled while waiting in put", function()
      it("puts nothing, and its item is not counted as unfinished", function()
        local q = asyncio.Queue(1)
        q:put_nowait("x")
        local a = started(function() q:put("a") end)
        a:cancel()
        assert.are.equal("ECANCELED", cancelled_code(a))
        assert.are.same({"x"}, drain(q))
        q:task_done()
        local ran = false
        local t = asyncio.create_task(function() ran = true end)
        q:join() -- nothing unfinished: no wait
        assert.is_false(ran)
        join(t)
      end)

      it("passes a free slot to the next putter when the woken one is cancelled before it runs", function()
        local q = asyncio.Queue(1)
        q:put_nowait("x")
        local a = started(function() q:put("a") end)
        local b = started(function() q:put("b") end)
        assert.are.equal("x", q:get_nowait()) -- wakes a ...
        a:cancel() -- ... which is cancelled before it runs
        assert.are.equal("ECANCELED", cancelled_code(a))
        join(b)
        assert.are.same({"b"}, drain(q))
      end)

      it("leaves the slot free when the only woken putter is cancelled before it runs", function()
        local q = asyncio.Queue(1)
        q:put_nowait("x")
        local a = started(function()
          local ok, err = pcall(q.put, q, "a")
          return ok, err.code, q:qsize()
        end)
        q:get_nowait()
        a:cancel()
        assert.are.same({false, "ECANCELED", 0}, {join(a)})
        assert.is_false(q:full())
        q:put_nowait("y")
        assert.are.same({"y"}, drain(q))
      end)
    end)

    it("passes every item exactly once between many producers and consumers", function()
      local q = asyncio.Queue(3)
      local producers, consumers = {}, {}
      local taken = {} -- every item, in the order get returned them
      for p = 1, 5 do
        producers[p] = asyncio.create_task(function()
          for i = 1, 100 do
            q:put(p * 1000 + i)
            if i % 10 == p then asyncio.sleep(0) end
          end
        end)
      end
      for c = 1, 4 do
        consumers[c] = asyncio.create_task(function()
          local n = 0
          for _ = 1, 501 do
            local item = q:get()
            if item == "stop" then
              q:task_done()
              return n
            end
            taken[#taken + 1] = item
            n = n + 1
            q:task_done()
            if n % c == 0 then asyncio.sleep(0) end
          end
          error("no stop")
        end)
      end
      for _, t in ipairs(producers) do join(t) end
      q:join()
      assert.are.equal(500, #taken)
      for _ = 1, 4 do q:put("stop") end
      local total = 0
      for _, t in ipairs(consumers) do total = total + join(t) end
      assert.are.equal(500, total)
      q:join()
      assert.is_true(q:empty())
      -- each item once, and each producer's items in the order it put them
      local last, count = {}, 0
      for _, item in ipairs(taken) do
        local p, i = item // 1000, item % 1000
        assert.are.equal((last[p] or 0) + 1, i)
        last[p] = i
        count = count + 1
      end
      assert.are.same({100, 100, 100, 100, 100}, last)
      assert.are.equal(500, count)
    end)
  end)

  describe("PriorityQueue", function()
    it("gives the smallest item first", function()
      local q = asyncio.PriorityQueue()
      for _, v in ipairs({5, 1, 4, 2, 3, 1.5, -7}) do q:put_nowait(v) end
      assert.are.same({-7, 1, 1.5, 2, 3, 4, 5}, drain(q))
    end)

    it("orders strings as < does", function()
      local q = asyncio.PriorityQueue()
      for _, v in ipairs({"pear", "apple", "Zebra", "apples"}) do q:put_nowait(v) end
      assert.are.same({"Zebra", "apple", "apples", "pear"}, drain(q))
    end)

    it("compares lists element by element, like Python tuples", function()
      local q = asyncio.PriorityQueue()
      local items = {{2, "b"}, {1, "z"}, {1, "a"}, {3}, {1, "a", 0}, {2, "a"}, {0, "z"}}
      for _, v in ipairs(items) do q:put_nowait(v) end
      assert.are.same({{0, "z"}, {1, "a"}, {1, "a", 0}, {1, "z"}, {2, "a"}, {2, "b"}, {3}}, drain(q))
    end)

    it("never compares the data of items whose priorities differ", function()
      local q = asyncio.PriorityQueue()
      local data = {}
      for i, p in ipairs({3, 1, 4, 2}) do
        data[i] = {name = "job" .. p} -- tables: < would raise on them
        q:put_nowait({p, data[i]})
      end
      local got = {}
      for i, item in ipairs(drain(q)) do got[i] = item[2].name end
      assert.are.same({"job1", "job2", "job3", "job4"}, got)
    end)

    it("bounds its size like a Queue", function()
      local q = asyncio.PriorityQueue(2)
      assert.are.equal(2, q.maxsize)
      q:put_nowait(2)
      q:put_nowait(1)
      assert.is_true(q:full())
      assert.are.equal("EQUEUEFULL", raised(q.put_nowait, q, 0).code)
      local t = started(function() q:put(0) end)
      assert.are.equal("waiting", t:status())
      assert.are.equal(1, q:get())
      join(t)
      assert.are.same({0, 2}, drain(q))
      assert.are.equal("EQUEUEEMPTY", raised(q.get_nowait, q).code)
    end)

    it("gives a waiting getter the smallest item", function()
      local q = asyncio.PriorityQueue()
      local t = started(function() return q:get() end)
      q:put_nowait(3)
      q:put_nowait(1)
      q:put_nowait(2)
      assert.are.equal(1, join(t))
      assert.are.same({2, 3}, drain(q))
    end)
  end)

  describe("LifoQueue", function()
    it("gives the last item put first", function()
      local q = asyncio.LifoQueue()
      for _, v in ipairs({"a", "b", "c"}) do q:put_nowait(v) end
      assert.are.equal("c", q:get_nowait())
      q:put_nowait("d")
      assert.are.same({"d", "b", "a"}, drain(q))
    end)

    it("bounds its size like a Queue, and join waits for task_done", function()
      local q = asyncio.LifoQueue(2)
      q:put("a")
      q:put("b")
      assert.is_true(q:full())
      assert.are.equal("EQUEUEFULL", raised(q.put_nowait, q, "c").code)
      local t = started(function() q:put("c") end)
      assert.are.equal("waiting", t:status())
      assert.are.equal("b", q:get())
      join(t)
      assert.are.same({"c", "a"}, drain(q))
      local j = started(function() q:join() end)
      assert.are.equal("waiting", j:status())
      for _ = 1, 3 do q:task_done() end
      join(j)
      assert.are.equal("task_done() called too many times", error_of(function() q:task_done() end))
    end)
  end)

  describe("misuse", function()
    it("raises for a Semaphore value that is not a non-negative integer", function()
      assert.are.equal("bad argument #1 to 'Semaphore' (non-negative integer expected)",
        error_of(function() asyncio.Semaphore(-1) end))
      assert.are.equal("bad argument #1 to 'Semaphore' (non-negative integer expected)",
        error_of(function() asyncio.Semaphore("2") end))
      assert.are.equal("bad argument #1 to 'Semaphore' (non-negative integer expected)",
        error_of(function() asyncio.Semaphore(1.5) end))
      assert.are.equal("bad argument #1 to 'BoundedSemaphore' (non-negative integer expected)",
        error_of(function() asyncio.BoundedSemaphore(-1) end))
    end)

    it("raises for a Queue maxsize that is not an integer", function()
      assert.are.equal("bad argument #1 to 'Queue' (integer expected, got string)",
        error_of(function() asyncio.Queue("3") end))
      assert.are.equal("bad argument #1 to 'PriorityQueue' (integer expected, got table)",
        error_of(function() asyncio.PriorityQueue({}) end))
      assert.are.equal("bad argument #1 to 'LifoQueue' (integer expected, got boolean)",
        error_of(function() asyncio.LifoQueue(true) end))
    end)

    it("raises for a Condition lock that is not a Lock", function()
      assert.are.equal("bad argument #1 to 'Condition' (asyncio.Lock expected, got string)",
        error_of(function() asyncio.Condition("lock") end))
    end)

    it("raises for a notify count or a wait_for predicate of the wrong type", function()
      local cond = asyncio.Condition()
      local _ <close> = cond:acquire()
      assert.are.equal("bad argument #1 to 'notify' (number expected, got string)",
        error_of(function() cond:notify("2") end))
      assert.are.equal("bad argument #1 to 'wait_for' (function expected, got nil)",
        error_of(function() cond:wait_for() end))
    end)

    it("raises when a method is called on the wrong object", function()
      local lock, q = asyncio.Lock(), asyncio.Queue()
      assert.are.equal("bad argument #1 to 'acquire' (asyncio.Lock expected, got table)",
        error_of(function() lock.acquire({}) end))
      assert.are.equal("bad argument #1 to 'get' (asyncio.Queue expected, got nil)",
        error_of(function() q.get() end))
    end)

    it("raises when a wait would happen where a task cannot wait", function()
      local lock = asyncio.Lock()
      local _ <close> = lock:acquire()
      local msg = "attempt to wait in 'acquire' inside a function called from C that cannot yield"
        .. " (such as a 'table.sort' comparator or a 'string.gsub' callback)"
      assert.are.equal(msg, error_of(function()
        table.sort({2, 1}, function(a, b)
          lock:acquire()
          return a < b
        end)
      end))
      assert.is_true(lock:locked())
    end)

    it("raises when a wait would happen outside any task", function()
      -- A finalizer that runs as the runtime closes runs in no task. Each
      -- call below would wait; the message points to its line.
      local script = [[
        local asyncio = require("asyncio")
        local q, full, lock = asyncio.Queue(), asyncio.Queue(1), asyncio.Lock()
        local ev, sem, cond = asyncio.Event(), asyncio.Semaphore(0), asyncio.Condition()
        full:put_nowait(1) -- and nobody marks it done
        lock:acquire() -- by the main task, which ends holding them
        cond:acquire()
        local calls = {
          function() q:get() end,
          function() full:put(2) end,
          function() lock:acquire() end,
          function() ev:wait() end,
          function() sem:acquire() end,
          function() cond:wait() end,
          function() full:join() end,
        }
        package.loaded.guard = setmetatable({}, {__gc = function()
          for _, f in ipairs(calls) do
            local ok, err = pcall(f)
            io.write(tostring(ok), ": ", tostring(err), "\n")
          end
          io.write(tostring(cond:locked()), "\n")
        end})
      ]]
      local out = os.tmpname()
      local _, _, status = os.execute(string.format("%s -e %s > %s 2>&1", support.shell_quote(support.TULUA),
        support.shell_quote(script), support.shell_quote(out)))
      local output = support.read_file(out)
      os.remove(out)
      assert.are.same({0, "false: (command line):8: attempt to wait in 'get' outside a task\n"
        .. "false: (command line):9: attempt to wait in 'put' outside a task\n"
        .. "false: (command line):10: attempt to wait in 'acquire' outside a task\n"
        .. "false: (command line):11: attempt to wait in 'wait' outside a task\n"
        .. "false: (command line):12: attempt to wait in 'acquire' outside a task\n"
        .. "false: (command line):13: attempt to wait in 'wait' outside a task\n"
        .. "false: (command line):14: attempt to wait in 'join' outside a task\n"
        .. "true\n"}, {status, output})
    end)
  end)

  describe("at the API boundary", function()
    it("checks self, blaming the caller with a bad argument error", function()
      assert.has_error(function() asyncio.Condition().locked(asyncio.Lock()) end,
        "bad argument #1 to 'locked' (asyncio.Condition expected, got asyncio.Lock)")
      assert.has_error(function() asyncio.Lock().locked({}) end,
        "bad argument #1 to 'locked' (asyncio.Lock expected, got table)")
      assert.has_error(function() asyncio.Semaphore().locked(nil) end,
        "bad argument #1 to 'locked' (asyncio.Semaphore expected, got nil)")
      assert.has_error(function() asyncio.Event().is_set(5) end,
        "bad argument #1 to 'is_set' (asyncio.Event expected, got number)")
      assert.has_error(function() asyncio.Queue().qsize({}) end,
        "bad argument #1 to 'qsize' (asyncio.Queue expected, got table)")
      assert.has_error(function() asyncio.LifoQueue().full(asyncio.Event()) end,
        "bad argument #1 to 'full' (asyncio.Queue expected, got asyncio.Event)")
    end)
  end)
end)
