--- asyncio: Python's asyncio over tulua's tasks (documented in lua/asyncio.md).
-- A Task is tulua's task; everything that waits here parks the current task
-- with tulua.park() and is woken with tulua.unpark(). A waiter that is
-- cancelled gets park()'s `false, err`, undoes its bookkeeping (passing on a
-- wake-up it can no longer use) and only then raises: that is what makes the
-- primitives cancellation-safe.
local tulua = require "tulua"

-- asyncio's tasks run their function in a protected call (64 bytes more a
-- task): an error then unwinds inside the task, where a TaskGroup's or a
-- timeout's __close may still wait.
local spawn, park, unpark, current = tulua.spawn_protected, tulua.park,
  tulua.unpark, tulua.current
local can_wait, now, new_error = tulua.can_wait, tulua.now, tulua.new_error
local after = require("tulua.timer").after
local Task = tulua.Task
local pack, unpack = table.pack, table.unpack
local type, select, error, pcall, setmetatable, getmetatable =
  type, select, error, pcall, setmetatable, getmetatable

local M = {}

local common = require "tulua._common"
local error_class, need_task, check_timeout =
  common.error_class, common.need_task, common.check_timeout

-- ---- errors ----

M.CancelledError = error_class("ECANCELED", "task cancelled")
M.TimeoutError = error_class("ETIMEDOUT", "timed out")
M.InvalidStateError = error_class("EINVALIDSTATE", "invalid state")
M.QueueEmpty = error_class("EQUEUEEMPTY", "queue is empty")
M.QueueFull = error_class("EQUEUEFULL", "queue is full")
M.ExceptionGroup = error_class("EGROUP", "unhandled errors in a TaskGroup")

--- Returns whether err is an error object of class cls (asyncio.TimeoutError...).
M.is_error = common.is_error

--- Returns whether err is a cancellation (CancelledError).
function M.is_cancelled(err)
  return M.is_error(err, M.CancelledError)
end

--- Returns whether err is a TimeoutError.
function M.is_timeout(err)
  return M.is_error(err, M.TimeoutError)
end

-- Raises "bad argument #1 to 'fname' (asyncio.X expected, got ...)" unless
-- self is an object of the class whose __name is kind (or a subclass).
local function check_self(self, kind, fname)
  local mt = type(self) == "table" and getmetatable(self)
  if not (mt and mt._kind == kind) then
    error(("bad argument #1 to '%s' (%s expected, got %s)")
      :format(fname, kind, mt and mt.__name or type(self)), 3)
  end
end

-- ---- waiter queues: FIFO lists of {task=, woken=, dead=} records ----

local function wq_new() return {head = 1, tail = 0} end

local function wq_push(q, rec)
  local t = q.tail + 1
  q.tail = t
  q[t] = rec
end

-- Wakes the first waiter that is still parked; returns whether one was.
-- A record whose task was cancelled meanwhile (not parked any more) is
-- dropped: that task sees it was not woken and takes nothing.
local function wq_wake(q)
  local h = q.head
  while h <= q.tail do
    local rec = q[h]
    q[h] = nil
    h = h + 1
    if not rec.dead and unpark(rec.task) then
      rec.woken = true
      q.head = h
      return true
    end
  end
  q.head, q.tail = 1, 0
  return false
end

local function wq_wake_all(q)
  while wq_wake(q) do end
end

-- Whether some waiter may still be woken (dead records aside).
local function wq_live(q)
  for i = q.head, q.tail do
    if not q[i].dead then return true end
  end
  return false
end

-- Parks the current task in q. Returns true once woken; when cancelled,
-- marks the record dead, calls on_cancel(woken) and raises.
local function wq_wait(q, me, on_cancel, arg)
  local rec = {task = me}
  wq_push(q, rec)
  local ok, err = park()
  if ok then return true end
  rec.dead = true
  if on_cancel then on_cancel(arg, rec.woken) end
  error(err, 0)
end

-- ---- tasks ----

M.create_task = spawn
M.sleep = tulua.sleep
--- Returns the running Task, or nil outside a task.
function M.current_task()
  return (current())
end

--- Returns the set {[task] = true} of unfinished tasks.
function M.all_tasks()
  local set = {}
  for _, t in ipairs(tulua.all_tasks()) do set[t] = true end
  return set
end

--- Returns true: every Lua function may wait when it runs in a task.
function M.iscoroutinefunction(f)
  return type(f) == "function"
end

-- ---- Future ----

local Future = {}
Future.__index = Future
Future.__name = "asyncio.Future"

--- Creates a pending Future.
function M.Future()
  return setmetatable({_state = "pending", _waiters = wq_new()}, Future)
end

local function is_future(x)
  return getmetatable(x) == Future
end

--- Returns whether x is a Future or a Task.
function M.isfuture(x)
  return is_future(x) or (type(x) == "thread" and pcall(Task.done, x))
end

local function finish_future(f, state)
  f._state = state
  wq_wake_all(f._waiters)
  local cbs = f._callbacks
  if cbs then
    f._callbacks = nil
    for i = 1, #cbs do spawn(cbs[i], f) end
  end
end

local function check_pending(f, what)
  if f._state ~= "pending" then
    error(M.InvalidStateError("attempt to " .. what .. " a future that is done"), 2)
  end
end

--- Sets the future's results and wakes its waiters.
function Future:set_result(...)
  check_pending(self, "set the result of")
  self._result = pack(...)
  finish_future(self, "done")
end

--- Makes the future fail with err.
function Future:set_exception(err)
  check_pending(self, "set the exception of")
  self._error = err
  finish_future(self, "failed")
end

--- Cancels a pending future; returns false if it is done.
function Future:cancel(msg)
  if self._state ~= "pending" then return false end
  self._msg = msg
  finish_future(self, "cancelled")
  return true
end

function Future:done() return self._state ~= "pending" end
function Future:cancelled() return self._state == "cancelled" end

--- "pending", "done", "failed" or "cancelled".
function Future:status() return self._state end

--- Returns the results, or raises the error, CancelledError or InvalidStateError.
function Future:result()
  local s = self._state
  if s == "done" then return unpack(self._result, 1, self._result.n) end
  if s == "failed" then error(self._error, 0) end
  if s == "cancelled" then error(M.CancelledError(self._msg), 0) end
  error(M.InvalidStateError("the future is not done"), 2)
end

--- Returns the error (nil when it succeeded); raises as result() when not failed.
function Future:exception()
  local s = self._state
  if s == "done" then return nil end
  if s == "failed" then return self._error end
  return self:result()
end

--- Waits until the future is done; returns its results or raises its error.
function Future:join()
  if self._state == "pending" then
    wq_wait(self._waiters, need_task("join"))
  end
  return self:result()
end

--- Calls fn(future) on the next loop turn after it is done.
function Future:add_done_callback(fn)
  if type(fn) ~= "function" then
    error("bad argument #1 to 'add_done_callback' (function expected, got " ..
      type(fn) .. ")", 2)
  end
  if self._state ~= "pending" then
    spawn(fn, self)
  else
    local cbs = self._callbacks or {}
    cbs[#cbs + 1] = fn
    self._callbacks = cbs
  end
end

--- Removes every registration of fn; returns how many there were.
function Future:remove_done_callback(fn)
  local cbs, n, j = self._callbacks, 0, 1
  if not cbs then return 0 end
  for i = 1, #cbs do
    local f = cbs[i]
    cbs[i] = nil
    if f == fn then n = n + 1 else cbs[j] = f; j = j + 1 end
  end
  return n
end

-- An awaitable: a Task, a Future, or a function (started as a task).
local function to_future(aw, argn, fname)
  local t = type(aw)
  if t == "thread" or is_future(aw) then return aw end
  if t == "function" then return spawn(aw) end
  error(("bad argument #%d to '%s' (Task, Future or function expected, got %s)")
    :format(argn, fname, t), 3)
end

--- Returns aw as a Task or Future (a function is started as a task).
function M.ensure_future(aw)
  local f = to_future(aw, 1, "ensure_future")
  return f
end

-- Whether a done Task/Future ended with an error or a cancellation.
local function ended_badly(f)
  local s = f:status()
  return s == "failed" or s == "cancelled"
end

-- The outcome as gather(return_exceptions=true) reports it.
local function outcome_value(f)
  local s = f:status()
  if s == "failed" then return f:exception() end
  if s == "cancelled" then
    local ok, err = pcall(f.result, f)
    return ok and M.CancelledError() or err
  end
  return (f:result())
end

-- ---- gather ----

-- Splits gather's/wait's arguments: a list or varargs, then options.
local function plain_table(x)
  return type(x) == "table" and getmetatable(x) == nil
end

local function split_args(...)
  local n = select("#", ...)
  local opts
  local last = n > 0 and select(n, ...) or nil
  if plain_table(last) and last[1] == nil then
    opts = last
    n = n - 1
  end
  local first = ...
  if n == 1 and plain_table(first) then return first, #first, opts end
  return {...}, n, opts
end

--- Waits for every awaitable; returns {n =, first result of each...} in order.
-- Without return_exceptions the first error is raised at once; cancelling
-- the gathering task cancels the children.
function M.gather(...)
  local list, n, opts = split_args(...)
  local return_exceptions = opts and opts.return_exceptions
  local children = {}
  for i = 1, n do children[i] = to_future(list[i], i, "gather") end
  local me = need_task("gather")
  local remaining, waiting, bad = 0, false, nil
  local function on_done(f)
    remaining = remaining - 1
    if not return_exceptions and bad == nil and ended_badly(f) then bad = f end
    if waiting and (remaining == 0 or bad) then
      waiting = false
      unpark(me)
    end
  end
  for i = 1, n do
    local f = children[i]
    if not f:done() then
      remaining = remaining + 1
      f:add_done_callback(on_done)
    elseif not return_exceptions and bad == nil and ended_badly(f) then
      bad = f
    end
  end
  while remaining > 0 and bad == nil do
    waiting = true
    local ok, err = park()
    waiting = false
    if not ok then
      -- cancelled: cancel the children and wait until they have ended
      for i = 1, n do children[i]:cancel() end
      while remaining > 0 do
        waiting = true
        if not park() then
          for i = 1, n do children[i]:cancel() end
        end
        waiting = false
      end
      error(err, 0)
    end
  end
  if bad then
    -- the others go on unwatched: a later failure of theirs is reported
    for i = 1, n do
      if not children[i]:done() then children[i]:remove_done_callback(on_done) end
    end
    bad:result() -- raises its error or cancellation
  end
  local out = {n = n}
  for i = 1, n do
    out[i] = return_exceptions and outcome_value(children[i]) or (children[i]:result())
  end
  return out
end

-- ---- wait, as_completed ----

M.FIRST_COMPLETED = "FIRST_COMPLETED"
M.FIRST_EXCEPTION = "FIRST_EXCEPTION"
M.ALL_COMPLETED = "ALL_COMPLETED"

--- Waits until return_when holds or timeout passes; returns done, pending
-- (sets). Never cancels anything and never raises on timeout.
function M.wait(aws, opts)
  if type(aws) ~= "table" then
    error("bad argument #1 to 'wait' (table expected, got " .. type(aws) .. ")", 2)
  end
  opts = opts or {}
  local timeout = check_timeout(opts.timeout, 2, "wait")
  local when = opts.return_when or M.ALL_COMPLETED
  if when ~= M.FIRST_COMPLETED and when ~= M.FIRST_EXCEPTION and when ~= M.ALL_COMPLETED then
    error("bad argument #2 to 'wait' (invalid return_when: " .. tostring(when) .. ")", 2)
  end
  local fs = {}
  for i = 1, #aws do fs[i] = to_future(aws[i], 1, "wait") end
  local me = need_task("wait")
  local left, waiting, satisfied, timer = 0, false, false, nil
  local function check(f)
    if when == M.FIRST_COMPLETED then return true end
    if when == M.FIRST_EXCEPTION and f:status() == "failed" then return true end
    return false
  end
  for i = 1, #fs do
    local f = fs[i]
    if f:done() then
      if check(f) then satisfied = true end
    else
      left = left + 1
    end
  end
  if left > 0 and not satisfied and timeout ~= 0 then
    local function wake()
      if waiting then waiting = false; unpark(me) end
    end
    local function on_done(f)
      left = left - 1
      if left == 0 or check(f) then satisfied = true; wake() end
    end
    for i = 1, #fs do
      if not fs[i]:done() then fs[i]:add_done_callback(on_done) end
    end
    if timeout then
      timer = after(math.max(timeout, 0), function() satisfied = true; wake() end)
    end
    local ok, err
    while not satisfied do
      waiting = true
      ok, err = park()
      waiting = false
      if not ok then break end
    end
    if timer then timer:close() end
    for i = 1, #fs do
      if not fs[i]:done() then fs[i]:remove_done_callback(on_done) end
    end
    if ok == false then error(err, 0) end
  end
  local done, pending = {}, {}
  for i = 1, #fs do
    local f = fs[i]
    if f:done() then done[f] = true else pending[f] = true end
  end
  return done, pending
end

local completion_ops = {
  done = function(f) return f:done() end,
  listen = function(f, fn) f:add_done_callback(fn) end,
  unlisten = function(f, fn) f:remove_done_callback(fn) end,
}

--- Iterates over the awaitables as they finish (for f in as_completed(aws)),
-- each once. Raises TimeoutError from the iterator once timeout seconds
-- have passed.
function M.as_completed(aws, timeout)
  if type(aws) ~= "table" then
    error("bad argument #1 to 'as_completed' (table expected, got " .. type(aws) .. ")", 2)
  end
  check_timeout(timeout, 2, "as_completed")
  local fs = {}
  for i = 1, #aws do fs[i] = to_future(aws[i], 1, "as_completed") end
  return common.as_completed(fs, completion_ops, timeout, "as_completed",
    function() return M.TimeoutError() end)
end

-- ---- timeouts ----

local Timeout = {}
Timeout.__index = Timeout
Timeout.__name = "asyncio.Timeout"

local function on_timeout(self)
  self._timer = nil
  if self._state == "active" then
    self._state = "expiring"
    self._task:cancel()
  end
end

--- Moves the deadline to `when` (loop:time() seconds, nil: never).
function Timeout:reschedule(when)
  if self._state ~= "active" then
    error("attempt to reschedule a timeout that has " ..
      (self._state == "exited" and "ended" or "expired"), 2)
  end
  if self._timer then self._timer:close(); self._timer = nil end
  self._when = when
  if when ~= nil then
    self._timer = after(math.max(when - now(), 0), on_timeout, self)
  end
end

function Timeout:when() return self._when end

--- Whether the deadline passed (and cancelled the task).
function Timeout:expired()
  return self._state == "expiring" or self._state == "expired"
end

-- Leaves the scope with err (nil: the body ended normally); returns the
-- error to raise instead, if any.
function Timeout:_leave(err)
  if self._timer then self._timer:close(); self._timer = nil end
  if self._state == "expiring" then
    self._state = "expired"
    -- no new cancel requests since entering: this cancellation is ours
    if self._task:uncancel() <= self._cancelling and M.is_cancelled(err) then
      return M.TimeoutError()
    end
  elseif self._state == "active" then
    self._state = "exited"
  end
  return nil
end

Timeout.__close = function(self, err)
  local e = self:_leave(err)
  if e then error(e, 0) end
end

--- A to-be-closed scope that cancels the current task at loop:time() `when`
-- and turns that cancellation into a TimeoutError at the end of the scope.
function M.timeout_at(when)
  check_timeout(when, 1, "timeout_at")
  local task = current()
  if task == nil then error("attempt to use 'timeout' outside a task", 2) end
  local self = setmetatable({_task = task, _state = "active",
    _cancelling = task:cancelling()}, Timeout)
  self:reschedule(when)
  return self
end

--- As timeout_at(loop:time() + delay); delay nil: no deadline.
function M.timeout(delay)
  check_timeout(delay, 1, "timeout")
  return M.timeout_at(delay and now() + delay)
end

-- Waits until the Task/Future f is done, even through cancellations of the
-- current task; returns the last cancellation error received, if any.
local function wait_done(f)
  local cancel_err
  while not f:done() do
    local ok, err = pcall(f.join, f)
    if not ok and not f:done() then
      cancel_err = err
      f:cancel()
    end
  end
  return cancel_err
end

--- Returns aw's results, or raises TimeoutError after timeout seconds (aw
-- is then cancelled and waited for). A function runs in the current task.
function M.wait_for(aw, timeout, ...)
  check_timeout(timeout, 2, "wait_for")
  if type(aw) == "function" then
    if timeout == nil then return aw(...) end
    local tm = M.timeout(timeout)
    local r = pack(pcall(aw, ...))
    local e = tm:_leave(not r[1] and r[2] or nil)
    if e then error(e, 0) end
    if not r[1] then error(r[2], 0) end
    return unpack(r, 2, r.n)
  end
  local f = to_future(aw, 1, "wait_for")
  need_task("wait_for")
  if timeout == nil then return f:join() end
  local tm = M.timeout(timeout)
  local r = pack(pcall(f.join, f))
  if not r[1] and not f:done() then
    -- the timeout or a cancel of ours interrupted the join: like
    -- Python's await, cancel what we waited for and let it end
    f:cancel()
    local again = wait_done(f)
    if again then r[2] = again end
  end
  local e = tm:_leave(not r[1] and r[2] or nil)
  if e then error(e, 0) end
  if not r[1] then error(r[2], 0) end
  return unpack(r, 2, r.n)
end

--- Returns a Future with aw's outcome; cancelling the Future (or the task
-- that waits on it) does not cancel aw.
function M.shield(aw)
  local inner = to_future(aw, 1, "shield")
  local outer = M.Future()
  local function relay(f)
    if outer:done() then return end
    local s = f:status()
    if s == "cancelled" then
      outer:cancel()
    elseif s == "failed" then
      outer:set_exception(f:exception())
    else
      outer:set_result(f:result())
    end
  end
  if inner:done() then relay(inner) else inner:add_done_callback(relay) end
  return outer
end

-- ---- TaskGroup ----

local TaskGroup = {}
TaskGroup.__index = TaskGroup
TaskGroup.__name = "asyncio.TaskGroup"

local function tg_abort(self)
  self._aborting = true
  for t in pairs(self._tasks) do t:cancel() end
end

--- A to-be-closed scope owning tasks: waits for them at its end; the first
-- failure cancels the others and the errors surface together (EGROUP).
function M.TaskGroup()
  local parent = current()
  if parent == nil then error("attempt to use 'TaskGroup' outside a task", 2) end
  local self = setmetatable({_parent = parent, _tasks = {}, _n = 0,
    _errors = {}, _aborting = false, _exiting = false, _waiting = false,
    _parent_cancel_requested = false, _closed = false}, TaskGroup)
  self._on_done = function(t)
    self._tasks[t] = nil
    self._n = self._n - 1
    if self._waiting and self._n == 0 then
      self._waiting = false
      unpark(parent)
    end
    if t:status() ~= "failed" then return end
    local errs = self._errors
    errs[#errs + 1] = t:exception()
    if not self._aborting then
      tg_abort(self)
      if not self._exiting and not parent:done() then
        -- stop the body too, as Python does; undone at the scope's end
        self._parent_cancel_requested = true
        parent:cancel()
      end
    end
  end
  return self
end

--- Starts fn(...) as a task of the group; returns the task.
function TaskGroup:create_task(fn, ...)
  if type(fn) ~= "function" then
    error("bad argument #1 to 'create_task' (function expected, got " .. type(fn) .. ")", 2)
  end
  if self._closed then error("attempt to add a task to a finished TaskGroup", 2) end
  if self._aborting then error("attempt to add a task to a TaskGroup that is shutting down", 2) end
  local t = spawn(fn, ...)
  self._tasks[t] = true
  self._n = self._n + 1
  t:add_done_callback(self._on_done)
  return t
end

local function group_error(errors)
  local lines = {}
  for i = 1, #errors do
    lines[i] = ("  %d: %s"):format(i, tostring(errors[i]))
  end
  local e = new_error("EGROUP", ("unhandled errors in a TaskGroup (%d sub-error%s)\n%s")
    :format(#errors, #errors == 1 and "" or "s", table.concat(lines, "\n")))
  e.errors = errors
  return e
end

TaskGroup.__close = function(self, err)
  self._exiting = true
  local propagate = M.is_cancelled(err) and err or nil
  if self._parent_cancel_requested then
    self._parent_cancel_requested = false
    if self._parent:uncancel() == 0 then propagate = nil end
  end
  if err ~= nil and not self._aborting then tg_abort(self) end
  if can_wait() then
    while self._n > 0 do
      self._waiting = true
      local ok, e = park()
      self._waiting = false
      if not ok and not self._aborting then
        propagate = e
        tg_abort(self)
      end
    end
  elseif self._n > 0 then
    -- Lua cannot yield in a __close run by an error: the tasks are
    -- cancelled and end in the background (documented)
    tg_abort(self)
  end
  self._closed = true
  local errors = self._errors
  if propagate and #errors == 0 then error(propagate, 0) end
  if err ~= nil and not M.is_cancelled(err) then
    table.insert(errors, 1, err)
  end
  if #errors > 0 then error(group_error(errors), 0) end
end

-- ---- asyncio.run ----

--- Runs fn() as a new task and waits for it, then cancels the tasks
-- started meanwhile that are still running and waits for them; returns
-- fn's results or raises its error. opts.debug = true turns debug mode on
-- meanwhile. Cancelling the calling task (Ctrl-C) cancels fn's task.
function M.run(fn, opts)
  if type(fn) ~= "function" then
    error("bad argument #1 to 'run' (function expected, got " .. type(fn) .. ")", 2)
  end
  local me = need_task("run")
  local before = M.all_tasks()
  local old_debug = tulua.get_debug()
  if opts and opts.debug then tulua.set_debug(true) end
  local main = spawn(fn)
  local r = pack(pcall(main.join, main))
  if not r[1] and not main:done() then
    -- cancelled while waiting: the cancellation goes on to fn's task
    main:cancel()
    wait_done(main)
  end
  local left = {}
  for _, t in ipairs(tulua.all_tasks()) do
    if not before[t] and t ~= me then left[#left + 1] = t; t:cancel() end
  end
  local ok, err = true, nil
  if #left > 0 then ok, err = pcall(M.gather, left, {return_exceptions = true}) end
  tulua.set_debug(old_debug)
  if not ok then error(err, 0) end
  if not r[1] then error(r[2], 0) end
  return unpack(r, 2, r.n)
end

-- ---- the event loop object ----

local Loop = {}
Loop.__index = Loop
Loop.__name = "asyncio.Loop"

local Handle = {}
Handle.__index = Handle
Handle.__name = "asyncio.Handle"

--- Stops the callback from running (if it has not started).
function Handle:cancel()
  if self._cancelled then return end
  self._cancelled = true
  if self._timer then self._timer:close() end
  if self._task then self._task:cancel() end
end

function Handle:cancelled() return self._cancelled end
function Handle:when() return self._when end

local loop_obj

--- Creates a loop object (all share the runtime's one libuv loop).
function M.new_event_loop()
  return setmetatable({_closed = false, _running = 0, _stopping = false}, Loop)
end

--- Returns the current loop object, creating it the first time.
function M.get_event_loop()
  if loop_obj == nil then loop_obj = M.new_event_loop() end
  return loop_obj
end

--- Returns the current loop object; raises outside a task.
function M.get_running_loop()
  if current() == nil then error("no running event loop", 2) end
  return M.get_event_loop()
end

--- Makes loop the current loop object.
function M.set_event_loop(loop)
  loop_obj = loop
end

local function check_open(loop)
  if loop._closed then error("Event loop is closed", 3) end
end

--- Runs aw (a function with its arguments, a Task or a Future) to its end;
-- returns its results.
function Loop:run_until_complete(aw, ...)
  check_open(self)
  local f = type(aw) == "function" and spawn(aw, ...) or to_future(aw, 1, "run_until_complete")
  need_task("run_until_complete")
  self._running = self._running + 1
  local r = pack(pcall(f.join, f))
  self._running = self._running - 1
  if not r[1] then error(r[2], 0) end
  return unpack(r, 2, r.n)
end

--- Waits until stop() is called.
function Loop:run_forever()
  check_open(self)
  local me = need_task("run_forever")
  self._running = self._running + 1
  self._forever = self._forever or wq_new()
  local ok, err = true, nil
  while not self._stopping and ok do
    ok, err = pcall(wq_wait, self._forever, me)
  end
  self._stopping = false
  self._running = self._running - 1
  if not ok then error(err, 0) end
end

--- Makes run_forever return.
function Loop:stop()
  self._stopping = true
  if self._forever then wq_wake_all(self._forever) end
end

--- Whether the loop runs: always, seen from a task.
function Loop:is_running() return self._running > 0 or current() ~= nil end
function Loop:is_closed() return self._closed end

--- Closes the loop object; raises if it is running.
function Loop:close()
  if self._running > 0 then error("Cannot close a running event loop", 2) end
  self._closed = true
end

function Loop:time() return now() end

local function check_fn(fn, argn, fname)
  if type(fn) ~= "function" then
    error(("bad argument #%d to '%s' (function expected, got %s)")
      :format(argn, fname, type(fn)), 3)
  end
end

--- Runs fn(...) as a new task on the next loop turn; returns a Handle.
function Loop:call_soon(fn, ...)
  check_fn(fn, 1, "call_soon")
  return setmetatable({_task = spawn(fn, ...), _cancelled = false}, Handle)
end

--- Runs fn(...) as a new task `delay` seconds from now; returns a Handle.
function Loop:call_later(delay, fn, ...)
  check_timeout(delay, 1, "call_later")
  check_fn(fn, 2, "call_later")
  return setmetatable({_timer = after(math.max(delay, 0), fn, ...),
    _cancelled = false, _when = now() + delay}, Handle)
end

--- Runs fn(...) as a new task at loop:time() `when`; returns a Handle.
function Loop:call_at(when, fn, ...)
  check_timeout(when, 1, "call_at")
  check_fn(fn, 2, "call_at")
  local h = self:call_later(math.max(when - now(), 0), fn, ...)
  h._when = when
  return h
end

function Loop:create_task(fn, ...)
  check_fn(fn, 1, "create_task")
  return spawn(fn, ...)
end

function Loop:create_future() return M.Future() end
function Loop:set_debug(on) tulua.set_debug(on) end
function Loop:get_debug() return tulua.get_debug() end

-- ---- synchronization primitives ----

-- A primitive's acquire() returns it, and its __close releases it:
-- `local _ <close> = lock:acquire()`.
local function releaser(self) self:release() end

local Lock = {__close = releaser, __name = "asyncio.Lock", _kind = "asyncio.Lock"}
Lock.__index = Lock

--- A mutual-exclusion lock for tasks (FIFO).
function M.Lock()
  return setmetatable({_locked = false, _waiters = wq_new()}, Lock)
end

-- Hands the lock to the next waiter, or unlocks it.
local function lock_pass(self)
  if not wq_wake(self._waiters) then self._locked = false end
end

local function lock_cancelled(self, woken)
  if woken then lock_pass(self) end -- it was handed to us: pass it on
end

--- Waits for the lock and takes it; returns the lock.
function Lock:acquire()
  check_self(self, "asyncio.Lock", "acquire")
  if not self._locked then
    self._locked = true
    return self
  end
  wq_wait(self._waiters, need_task("acquire"), lock_cancelled, self)
  return self -- handed over by release(): still locked, now ours
end

--- Releases the lock (to the first waiter, if any).
function Lock:release()
  check_self(self, "asyncio.Lock", "release")
  if not self._locked then error("attempt to release an unlocked lock", 2) end
  lock_pass(self)
end

function Lock:locked() return self._locked end

local Event = {__name = "asyncio.Event", _kind = "asyncio.Event"}
Event.__index = Event

--- An event flag tasks can wait for.
function M.Event()
  return setmetatable({_set = false, _waiters = wq_new()}, Event)
end

--- Sets the flag and wakes every waiter.
function Event:set()
  check_self(self, "asyncio.Event", "set")
  if not self._set then
    self._set = true
    wq_wake_all(self._waiters)
  end
end

function Event:clear() self._set = false end
function Event:is_set() return self._set end

--- Waits until the flag is set; returns true.
function Event:wait()
  check_self(self, "asyncio.Event", "wait")
  if self._set then return true end
  wq_wait(self._waiters, need_task("wait"))
  return true
end

local Semaphore = {__close = releaser, __name = "asyncio.Semaphore", _kind = "asyncio.Semaphore"}
Semaphore.__index = Semaphore

local function new_semaphore(value, bound, fname)
  value = value == nil and 1 or value
  if math.type(value) ~= "integer" or value < 0 then
    error("bad argument #1 to '" .. fname .. "' (non-negative integer expected)", 3)
  end
  return setmetatable({_value = value, _bound = bound and value,
    _waiters = wq_new()}, Semaphore)
end

--- A semaphore with `value` permits (default 1).
function M.Semaphore(value)
  local sem = new_semaphore(value, false, "Semaphore")
  return sem
end

--- A semaphore whose release() raises when it would exceed `value`.
function M.BoundedSemaphore(value)
  local sem = new_semaphore(value, true, "BoundedSemaphore")
  return sem
end

-- Hands a permit to the next waiter, or returns it to the count.
local function sem_pass(self)
  if not wq_wake(self._waiters) then self._value = self._value + 1 end
end

local function sem_cancelled(self, woken)
  if woken then sem_pass(self) end
end

--- Waits for a permit and takes it; returns the semaphore.
function Semaphore:acquire()
  check_self(self, "asyncio.Semaphore", "acquire")
  if self._value > 0 then -- permits are handed to waiters: none waits
    self._value = self._value - 1
    return self
  end
  wq_wait(self._waiters, need_task("acquire"), sem_cancelled, self)
  return self
end

--- Gives a permit back (to the first waiter, if any).
function Semaphore:release()
  check_self(self, "asyncio.Semaphore", "release")
  if self._bound and self._value >= self._bound and not wq_live(self._waiters) then
    error("BoundedSemaphore released too many times", 2)
  end
  sem_pass(self)
end

--- Whether acquire() would wait.
function Semaphore:locked()
  return self._value == 0 or wq_live(self._waiters)
end

local Condition = {__close = releaser, __name = "asyncio.Condition", _kind = "asyncio.Condition"}
Condition.__index = Condition

--- A condition variable over lock (a new Lock by default).
function M.Condition(lock)
  if lock ~= nil and getmetatable(lock) ~= Lock then
    error("bad argument #1 to 'Condition' (asyncio.Lock expected, got " .. type(lock) .. ")", 2)
  end
  return setmetatable({_lock = lock or M.Lock(), _waiters = wq_new()}, Condition)
end

--- Takes the condition's lock; returns the condition.
function Condition:acquire()
  check_self(self, "asyncio.Condition", "acquire")
  if self._lock._locked then need_task("acquire") end
  self._lock:acquire()
  return self
end

--- Releases the condition's lock.
function Condition:release()
  check_self(self, "asyncio.Condition", "release")
  if not self._lock._locked then error("attempt to release an unlocked lock", 2) end
  self._lock:release()
end

function Condition:locked() return self._lock:locked() end

local function note_woken(box, woken)
  box.woken = woken
end

--- Releases the lock, waits for a notify, and takes the lock again (also
-- when cancelled, before raising). Returns true.
function Condition:wait()
  check_self(self, "asyncio.Condition", "wait")
  local lock = self._lock
  if not lock._locked then error("attempt to wait on a condition whose lock is not acquired", 2) end
  local me = need_task("wait")
  lock:release()
  local box = {}
  local ok, err = pcall(wq_wait, self._waiters, me, note_woken, box)
  -- take the lock back whatever happened, even through cancellations
  while true do
    local got, e = pcall(lock.acquire, lock)
    if got then break end
    ok, err = false, e
  end
  if not ok then
    -- notified, then cancelled: the next waiter gets the notification
    if box.woken then wq_wake(self._waiters) end
    error(err, 0)
  end
  return true
end

--- Waits until predicate() is true; returns its value.
function Condition:wait_for(predicate)
  check_self(self, "asyncio.Condition", "wait_for")
  if type(predicate) ~= "function" then
    error("bad argument #1 to 'wait_for' (function expected, got " .. type(predicate) .. ")", 2)
  end
  local r = predicate()
  while not r do
    self:wait()
    r = predicate()
  end
  return r
end

--- Wakes up to n (default 1) waiting tasks; the lock must be held.
function Condition:notify(n)
  check_self(self, "asyncio.Condition", "notify")
  if n ~= nil and math.type(n) ~= "integer" then
    error("bad argument #1 to 'notify' (" .. (type(n) == "number" and "number has no integer representation"
      or "number expected, got " .. type(n)) .. ")", 2)
  end
  if not self._lock._locked then error("attempt to notify on a condition whose lock is not acquired", 2) end
  n = n or 1
  for _ = 1, n do
    if not wq_wake(self._waiters) then break end
  end
end

--- Wakes every waiting task; the lock must be held.
function Condition:notify_all()
  check_self(self, "asyncio.Condition", "notify_all")
  if not self._lock._locked then error("attempt to notify on a condition whose lock is not acquired", 2) end
  wq_wake_all(self._waiters)
end

-- ---- queues ----

local Queue = {__name = "asyncio.Queue", _kind = "asyncio.Queue"}
local fast_put, fast_get -- below: M.Queue's own put and get
Queue.__index = Queue

local function new_queue(mt, maxsize, fname)
  maxsize = maxsize or 0
  if math.type(maxsize) ~= "integer" then
    error("bad argument #1 to '" .. fname .. "' (integer expected, got " .. type(maxsize) .. ")", 3)
  end
  local q = setmetatable({maxsize = maxsize, _unfinished = 0,
    _getters = wq_new(), _putters = wq_new(), _finished = M.Event()}, mt)
  q._finished:set()
  q:_init()
  return q
end

--- A FIFO queue (maxsize 0 or nil: unbounded).
function M.Queue(maxsize)
  local q = new_queue(Queue, maxsize, "Queue")
  q.put, q.get = fast_put(q), fast_get(q)
  return q
end

-- The FIFO store: a ring of items between head and tail.
function Queue:_init() self._items, self._head, self._tail = {}, 1, 0 end
function Queue:_put(item) local t = self._tail + 1; self._tail = t; self._items[t] = item end
function Queue:_get()
  local h = self._head
  local item = self._items[h]
  self._items[h] = nil
  self._head = h + 1
  return item
end
function Queue:qsize() return self._tail - self._head + 1 end

function Queue:empty() return self:qsize() == 0 end
function Queue:full() return self.maxsize > 0 and self:qsize() >= self.maxsize end

local function wake_if(q, cond)
  if cond then wq_wake(q) end
end

--- Adds item without waiting; raises QueueFull when full.
function Queue:put_nowait(item)
  check_self(self, "asyncio.Queue", "put_nowait")
  if item == nil then error("bad argument #1 to 'put_nowait' (value expected)", 2) end
  if self:full() then error(M.QueueFull(), 2) end
  self:_put(item)
  self._unfinished = self._unfinished + 1
  self._finished._set = false
  wq_wake(self._getters)
end

local function putter_cancelled(self, woken)
  wake_if(self._putters, woken and not self:full())
end

local function getter_cancelled(self, woken)
  wake_if(self._getters, woken and not self:empty())
end

--- Adds item, waiting while the queue is full.
function Queue:put(item)
  check_self(self, "asyncio.Queue", "put")
  if item == nil then error("bad argument #1 to 'put' (value expected)", 2) end
  while self:full() do
    wq_wait(self._putters, need_task("put"), putter_cancelled, self)
  end
  return self:put_nowait(item)
end

--- Removes and returns an item without waiting; raises QueueEmpty when empty.
function Queue:get_nowait()
  check_self(self, "asyncio.Queue", "get_nowait")
  if self:empty() then error(M.QueueEmpty(), 2) end
  local item = self:_get()
  wq_wake(self._putters)
  return item
end

--- Removes and returns an item, waiting while the queue is empty.
function Queue:get()
  check_self(self, "asyncio.Queue", "get")
  while self:empty() do
    wq_wait(self._getters, need_task("get"), getter_cancelled, self)
  end
  return self:get_nowait()
end

--- Marks one item taken with get() as processed.
function Queue:task_done()
  check_self(self, "asyncio.Queue", "task_done")
  if self._unfinished <= 0 then error("task_done() called too many times", 2) end
  self._unfinished = self._unfinished - 1
  if self._unfinished == 0 then self._finished:set() end
end

--- Waits until every item put has been marked done.
function Queue:join()
  check_self(self, "asyncio.Queue", "join")
  if self._unfinished > 0 then
    wq_wait(self._finished._waiters, need_task("join"))
  end
end

-- A Queue's own put and get: the same as the methods above, as closures
-- over the queue with the ring inlined, which makes them about four times
-- faster (tests/bench/README.md, Q1). `self ~= q` is the whole self check:
-- any other object takes the checked method.
function fast_put(q)
  local generic, getters, putters, finished = Queue.put, q._getters, q._putters, q._finished
  return function(self, item)
    if self ~= q or item == nil then return generic(self, item) end
    local max = q.maxsize
    if max > 0 then
      while q._tail - q._head + 1 >= max do
        wq_wait(putters, need_task("put"), putter_cancelled, q)
      end
    end
    local t = q._tail + 1
    q._tail = t
    q._items[t] = item
    q._unfinished = q._unfinished + 1
    finished._set = false
    if getters.head <= getters.tail then wq_wake(getters) end
  end
end

function fast_get(q)
  local generic, getters, putters = Queue.get, q._getters, q._putters
  return function(self)
    if self ~= q then return generic(self) end
    local h = q._head
    while h > q._tail do
      wq_wait(getters, need_task("get"), getter_cancelled, q)
      h = q._head
    end
    local items = q._items
    local item = items[h]
    items[h] = nil
    if h == q._tail then q._head, q._tail = 1, 0 else q._head = h + 1 end
    if putters.head <= putters.tail then wq_wake(putters) end
    return item
  end
end

local LifoQueue = setmetatable({__name = "asyncio.LifoQueue"}, {__index = Queue})
LifoQueue.__index = LifoQueue

--- A LIFO queue (a stack).
function M.LifoQueue(maxsize)
  local q = new_queue(LifoQueue, maxsize, "LifoQueue")
  return q
end
function LifoQueue:_init() self._items = {} end
function LifoQueue:_put(item) self._items[#self._items + 1] = item end
function LifoQueue:_get()
  local items = self._items
  local item = items[#items]
  items[#items] = nil
  return item
end
function LifoQueue:qsize() return #self._items end

local PriorityQueue = setmetatable({__name = "asyncio.PriorityQueue"}, {__index = Queue})
PriorityQueue.__index = PriorityQueue

-- Python's tuple order for lists without __lt; `<` for everything else.
local function less(a, b)
  if type(a) == "table" and type(b) == "table" and getmetatable(a) == nil
      and getmetatable(b) == nil then
    local n = math.max(#a, #b)
    for i = 1, n do
      local x, y = a[i], b[i]
      if x == nil then return true end
      if y == nil then return false end
      if x ~= y then return less(x, y) end
    end
    return false
  end
  return a < b
end

--- A queue that returns its smallest item first.
function M.PriorityQueue(maxsize)
  local q = new_queue(PriorityQueue, maxsize, "PriorityQueue")
  return q
end
function PriorityQueue:_init() self._items = {} end
function PriorityQueue:qsize() return #self._items end

function PriorityQueue:_put(item)
  local h = self._items
  local i = #h + 1
  h[i] = item
  while i > 1 do
    local p = i // 2
    if not less(h[i], h[p]) then break end
    h[i], h[p] = h[p], h[i]
    i = p
  end
end

function PriorityQueue:_get()
  local h = self._items
  local top, n = h[1], #h
  h[1] = h[n]
  h[n] = nil
  n = n - 1
  local i = 1
  while true do
    local l, r, m = 2 * i, 2 * i + 1, i
    if l <= n and less(h[l], h[m]) then m = l end
    if r <= n and less(h[r], h[m]) then m = r end
    if m == i then break end
    h[i], h[m] = h[m], h[i]
    i = m
  end
  return top
end

-- ---- concurrent.futures ----

-- concurrent.futures is loaded only by programs that use executors.
local function cf()
  return require "concurrent.futures"
end

local function is_cf_future(x)
  local mod = package.loaded["tulua.future"]
  return mod ~= nil and mod.is_future(x)
end

--- Returns an asyncio Future that follows the concurrent.futures Future f
-- (a Task or an asyncio Future is returned as it is). Cancelling the
-- asyncio Future cancels f, which interrupts its job if it runs.
function M.wrap_future(f)
  if type(f) == "thread" or is_future(f) then return f end
  if not is_cf_future(f) then
    error("bad argument #1 to 'wrap_future' (Future expected, got " .. type(f) .. ")", 2)
  end
  local af = M.Future()
  af:add_done_callback(function()
    if af:cancelled() then f:cancel() end
  end)
  f:add_done_callback(function()
    if af:done() then return end
    if f:cancelled() then
      af:cancel()
    else
      local r = pack(pcall(f.result, f))
      if r[1] then af:set_result(unpack(r, 2, r.n)) else af:set_exception(r[2]) end
    end
  end)
  return af
end

--- Runs fn(...) in executor (nil: the loop's default ThreadPoolExecutor)
-- and returns an asyncio Future of its results. fn and its arguments are
-- copied to the worker, which has a Lua state of its own.
function Loop:run_in_executor(executor, fn, ...)
  check_open(self)
  if executor == nil then
    executor = self._default_executor
    if executor == nil then
      executor = cf().ThreadPoolExecutor(nil, {thread_name_prefix = "asyncio"})
      self._default_executor = executor
    end
  end
  return M.wrap_future(executor:submit(fn, ...))
end

--- Makes executor the default of run_in_executor and to_thread.
function Loop:set_default_executor(executor)
  self._default_executor = executor
end

--- Shuts the default executor down, waiting for its jobs.
function Loop:shutdown_default_executor()
  local ex = self._default_executor
  self._default_executor = nil
  if ex then ex:shutdown(true) end
end

--- Runs fn(...) in the running loop's default executor and waits for it in
-- the current task (Python's await asyncio.to_thread(fn, ...)); returns its
-- results. Unlike Python's, fn runs in another Lua state: it and its
-- arguments are copied there, and it may run in parallel with this one.
function M.to_thread(fn, ...)
  if type(fn) ~= "function" then
    error("bad argument #1 to 'to_thread' (function expected, got " .. type(fn) .. ")", 2)
  end
  need_task("to_thread")
  local f = M.get_running_loop():run_in_executor(nil, fn, ...)
  local r = pack(pcall(f.join, f))
  if not r[1] then
    f:cancel() -- the task was cancelled: so is the job
    error(r[2], 0)
  end
  return unpack(r, 2, r.n)
end

-- Task is tulua's: asyncio's methods are already there.
M.Task = Task

return M
