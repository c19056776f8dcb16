--- asyncio._futures: asyncio's Future, the awaitables (a Task, a Future
-- or a function started as a task) and wrap_future, which follows a
-- concurrent.futures Future (internal: the asyncio facade exports them).
local tulua = require "tulua"
local common = require "tulua._common"
local exceptions = require "asyncio._exceptions"
local waiters = require "asyncio._waiters"

-- asyncio's tasks run their function in a protected call (64 bytes more a
-- task): an error then unwinds inside the task, where a TaskGroup's or a
-- timeout's __close may still wait.
local spawn, Task = tulua.spawn_protected, tulua.Task
local need_task = common.need_task
local args = require("tulua._args")
local type_error, check_self = args.type_error, args.check_self
local CancelledError, InvalidStateError = exceptions.CancelledError, exceptions.InvalidStateError
local wq_new, wq_wake_all, wq_wait = waiters.new, waiters.wake_all, waiters.wait
local pack, unpack = table.pack, table.unpack
local type, error, pcall, setmetatable, getmetatable = type, error, pcall, setmetatable, getmetatable

local M = {}

local Future = {}
Future.__index = Future
Future.__name = "asyncio.Future"
Future._kind = "asyncio.Future"

--- Creates a pending Future.
function M.Future()
  return setmetatable({_state = "pending", _waiters = wq_new("future")}, Future)
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
    error(InvalidStateError("attempt to " .. what .. " a future that is done"), 2)
  end
end

--- Sets the future's results and wakes its waiters.
function Future:set_result(...)
  check_self(self, "asyncio.Future", "set_result")
  check_pending(self, "set the result of")
  self._result = pack(...)
  finish_future(self, "done")
end

--- Makes the future fail with err.
function Future:set_exception(err)
  check_self(self, "asyncio.Future", "set_exception")
  check_pending(self, "set the exception of")
  self._error = err
  finish_future(self, "failed")
end

--- Cancels a pending future; returns false if it is done.
function Future:cancel(msg)
  check_self(self, "asyncio.Future", "cancel")
  if self._state ~= "pending" then return false end
  self._msg = msg
  finish_future(self, "cancelled")
  return true
end

function Future:done()
  check_self(self, "asyncio.Future", "done")
  return self._state ~= "pending"
end

function Future:cancelled()
  check_self(self, "asyncio.Future", "cancelled")
  return self._state == "cancelled"
end

--- "pending", "done", "failed" or "cancelled".
Future.status = args.getter("asyncio.Future", "status", "_state")

--- Returns the results, or raises the error, CancelledError or InvalidStateError.
function Future:result()
  check_self(self, "asyncio.Future", "result")
  local s = self._state
  if s == "done" then return unpack(self._result, 1, self._result.n) end
  if s == "failed" then error(self._error, 0) end
  if s == "cancelled" then error(CancelledError(self._msg), 0) end
  error(InvalidStateError("the future is not done"), 2)
end

--- Returns the error (nil when it succeeded); raises as result() when not failed.
function Future:exception()
  check_self(self, "asyncio.Future", "exception")
  local s = self._state
  if s == "done" then return nil end
  if s == "failed" then return self._error end
  return self:result()
end

--- Waits until the future is done; returns its results or raises its error.
function Future:join()
  check_self(self, "asyncio.Future", "join")
  if self._state == "pending" then
    wq_wait(self._waiters, need_task("join"))
  end
  return self:result()
end

--- Calls fn(future) on the next loop turn after it is done.
function Future:add_done_callback(fn)
  check_self(self, "asyncio.Future", "add_done_callback")
  if type(fn) ~= "function" then
    type_error(1, "add_done_callback", "function", fn)
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
  check_self(self, "asyncio.Future", "remove_done_callback")
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
  -- a coroutine that is no task has no Task methods: Task.done raises
  if (t == "thread" and pcall(Task.done, aw)) or is_future(aw) then return aw end
  if t == "function" then return spawn(aw) end
  type_error(argn, fname, "Task, Future or function", aw, 3)
end

--- Returns aw as a Task or Future (a function is started as a task).
function M.ensure_future(aw)
  local f = to_future(aw, 1, "ensure_future")
  return f
end

-- For the package's other modules: to_future(aw, argn, fname) raises
-- "bad argument" at the level of the caller of the function calling it.
M.to_future, M.is_future = to_future, is_future

-- Waits until the Task/Future f is done, even through cancellations of the
-- current task; returns the last cancellation error received, if any.
function M.wait_done(f)
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

local function is_cf_future(x)
  local mod = package.loaded["tulua._future"]
  return mod ~= nil and mod.is_future(x)
end

--- Returns an asyncio Future that follows the concurrent.futures Future f
-- (a Task or an asyncio Future is returned as it is). Cancelling the
-- asyncio Future cancels f, which interrupts its job if it runs.
function M.wrap_future(f)
  if type(f) == "thread" or is_future(f) then return f end
  if not is_cf_future(f) then
    type_error(1, "wrap_future", "Future", f)
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

return M
