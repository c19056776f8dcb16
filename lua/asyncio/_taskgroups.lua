--- asyncio._taskgroups: TaskGroup, a to-be-closed scope that owns tasks
-- (internal: the asyncio facade exports it).
local tulua = require "tulua"
local exceptions = require "asyncio._exceptions"

local current = tulua.current
local new_waker = require("tulua._common").new_waker
local args = require("tulua._args")
local type_error, check_self = args.type_error, args.check_self
local start_task = require("asyncio._tasks")._start
local can_wait, new_error = tulua.can_wait, tulua.new_error
local is_cancelled = exceptions.is_cancelled
local type, error, setmetatable, pairs, tostring = type, error, setmetatable, pairs, tostring

local M = {}

local TaskGroup = {}
TaskGroup.__index = TaskGroup
TaskGroup.__name = "asyncio.TaskGroup"
TaskGroup._kind = "asyncio.TaskGroup"

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
    _errors = {}, _aborting = false, _exiting = false,
    _parent_cancel_requested = false, _closed = false}, TaskGroup)
  -- __close waits, in the parent, for the last task to end
  self._wait, self._wake = new_waker("TaskGroup", self._tasks)
  self._on_done = function(t)
    self._tasks[t] = nil
    self._n = self._n - 1
    if self._n == 0 then self._wake() end
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

--- Starts fn(...) as a task of the group, or from a table {fn, arg...,
-- name = "x"} as asyncio.create_task; returns the task.
function TaskGroup:create_task(fn, ...)
  check_self(self, "asyncio.TaskGroup", "create_task")
  if type(fn) ~= "function" and type(fn) ~= "table" then
    type_error(1, "create_task", "function", fn)
  end
  if self._closed then error("attempt to add a task to a finished TaskGroup", 2) end
  if self._aborting then error("attempt to add a task to a TaskGroup that is shutting down", 2) end
  local t = start_task("create_task", fn, ...)
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
  local propagate = is_cancelled(err) and err or nil
  if self._parent_cancel_requested then
    self._parent_cancel_requested = false
    if self._parent:uncancel() == 0 then propagate = nil end
  end
  if err ~= nil and not self._aborting then tg_abort(self) end
  if can_wait() then
    while self._n > 0 do
      local ok, e = self._wait(self._parent)
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
  if err ~= nil and not is_cancelled(err) then
    table.insert(errors, 1, err)
  end
  if #errors > 0 then error(group_error(errors), 0) end
end

return M
