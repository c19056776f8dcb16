--- asyncio._tasks: creating tasks and waiting on several awaitables:
-- gather, wait, as_completed, wait_for, shield (internal: the asyncio facade
-- exports them).
local tulua = require "tulua"
local common = require "tulua._common"
local exceptions = require "asyncio._exceptions"
local futures = require "asyncio._futures"
local timeouts = require "asyncio._timeouts"

-- spawn_protected: as in asyncio._futures, where the comment says why
local spawn, current = tulua.spawn_protected, tulua.current
local need_task, new_waker = common.need_task, common.new_waker
local check_timeout, check_return_when = common.check_timeout, common.check_return_when
local args = require("tulua._args")
local arg_error, type_error, check_options = args.arg_error, args.type_error, args.check_options
local CancelledError, TimeoutError = exceptions.CancelledError, exceptions.TimeoutError
local Future, to_future, wait_done = futures.Future, futures.to_future, futures.wait_done
local timeout_scope = timeouts.timeout
local pack, unpack = table.pack, table.unpack
local type, select, error, pcall, getmetatable, ipairs, next, tostring, math_type =
  type, select, error, pcall, getmetatable, ipairs, next, tostring, math.type

local M = {}

-- Most arguments a task spec's n may give (spawn passes them on a stack).
local MAX_TASK_ARGS = 0xffff

-- Starts the task of a create_task (asyncio's, a TaskGroup's or a loop's,
-- named fname): fn(...), or from one table {fn, arg..., name =, n =}, the
-- table form being how a task gets a name at creation (Python's name=)
-- that no argument can be mistaken for. Blames the caller of the function
-- that calls it.
function M._start(fname, fn, ...)
  if type(fn) == "function" then return spawn(fn, ...) end
  if type(fn) ~= "table" or getmetatable(fn) ~= nil then
    type_error(1, fname, "function", fn, 3)
  end
  if select("#", ...) > 0 then
    arg_error(2, fname, "arguments go in the task table", 3)
  end
  local spec = fn
  local n = spec.n
  if n == nil then
    n = #spec
  else
    args.check_count(n, MAX_TASK_ARGS, 1, fname, "field 'n'", 3)
  end
  for k in next, spec do
    if not (k == "name" or k == "n" or (math_type(k) == "integer" and k >= 1 and k <= n)) then
      arg_error(1, fname, "unknown option '" .. tostring(k) .. "'", 3)
    end
  end
  if type(spec[1]) ~= "function" then
    arg_error(1, fname, "field 1 must be a function, got " .. type(spec[1]), 3)
  end
  local name = spec.name
  if name ~= nil and type(name) ~= "string" then
    arg_error(1, fname, "field 'name' must be a string, got " .. type(name), 3)
  end
  local t = spawn(unpack(spec, 1, n))
  if name then t:set_name(name) end
  return t
end

--- Starts fn(...) as a task, or from a table {fn, arg..., name = "x"}
-- (arguments up to n = or #, name the task's name); returns the Task.
function M.create_task(fn, ...)
  if type(fn) == "function" then return spawn(fn, ...) end
  local t = M._start("create_task", fn, ...) -- not a tail call: it blames our caller
  return t
end
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
    return ok and CancelledError() or err
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

local GATHER_OPTIONS = {return_exceptions = true}

--- Waits for every awaitable; returns {n =, first result of each...} in order.
-- Without return_exceptions the first error is raised at once; cancelling
-- the gathering task cancels the children.
function M.gather(...)
  local list, n, opts = split_args(...)
  if opts then check_options(opts, GATHER_OPTIONS, select("#", ...), "gather") end
  local return_exceptions = opts and opts.return_exceptions
  local children = {}
  for i = 1, n do children[i] = to_future(list[i], i, "gather") end
  local me = need_task("gather")
  local remaining, bad = 0, nil
  local wait, wake = new_waker("gather", children)
  local raised = false
  local function on_done(f)
    -- after gather raised, the callback stays so that a later failure
    -- counts as seen (Python's gather marks it retrieved), and does nothing
    if raised then return end
    remaining = remaining - 1
    if not return_exceptions and bad == nil and ended_badly(f) then bad = f end
    if remaining == 0 or bad then wake() end
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
    local ok, err = wait(me)
    if not ok then
      -- cancelled: cancel the children and wait until they have ended
      for i = 1, n do children[i]:cancel() end
      while remaining > 0 do
        if not wait(me) then
          for i = 1, n do children[i]:cancel() end
        end
      end
      error(err, 0)
    end
  end
  if bad then
    -- the others go on; a later failure of theirs is not reported
    raised = true
    bad:result() -- raises its error or cancellation
  end
  local out = {n = n}
  for i = 1, n do
    out[i] = return_exceptions and outcome_value(children[i]) or (children[i]:result())
  end
  return out
end

-- ---- wait, as_completed ----

M.FIRST_COMPLETED = common.FIRST_COMPLETED
M.FIRST_EXCEPTION = common.FIRST_EXCEPTION
M.ALL_COMPLETED = common.ALL_COMPLETED

local WAIT_OPTIONS = {timeout = true, return_when = true}

local completion_ops = {
  done = function(f) return f:done() end,
  failed = function(f) return f:status() == "failed" end,
  listen = function(f, fn) f:add_done_callback(fn) end,
  unlisten = function(f, fn) f:remove_done_callback(fn) end,
}

--- Waits until return_when holds or timeout passes; returns done, pending
-- (sets). Never cancels anything and never raises on timeout. A timeout of
-- 0 or less does not wait (tulua._common.wait says why).
function M.wait(aws, opts)
  if type(aws) ~= "table" then
    type_error(1, "wait", "table", aws)
  end
  if opts ~= nil and type(opts) ~= "table" then type_error(2, "wait", "table", opts) end
  opts = opts or {}
  check_options(opts, WAIT_OPTIONS, 2, "wait")
  local timeout = check_timeout(opts.timeout, 2, "wait")
  local when = check_return_when(opts.return_when, 2, "wait")
  local fs = {}
  for i = 1, #aws do fs[i] = to_future(aws[i], 1, "wait") end
  -- Python's asyncio.wait is a coroutine: outside a task it raises even
  -- when it need not wait (concurrent.futures.wait does not)
  need_task("wait")
  local done, pending = common.wait(fs, completion_ops, timeout, when, "wait")
  return done, pending
end

--- Iterates over the awaitables as they finish (for f in as_completed(aws)),
-- each once. Raises TimeoutError from the iterator once timeout seconds
-- have passed.
function M.as_completed(aws, timeout)
  if type(aws) ~= "table" then
    type_error(1, "as_completed", "table", aws)
  end
  check_timeout(timeout, 2, "as_completed")
  local fs = {}
  for i = 1, #aws do fs[i] = to_future(aws[i], 1, "as_completed") end
  return common.as_completed(fs, completion_ops, timeout, "as_completed",
    function() return TimeoutError() end)
end

--- Returns aw's results, or raises TimeoutError after timeout seconds (aw
-- is then cancelled and waited for). A function runs in the current task.
function M.wait_for(aw, timeout, ...)
  check_timeout(timeout, 2, "wait_for")
  if type(aw) == "function" then
    if timeout == nil then return aw(...) end
    local tm = timeout_scope(timeout)
    local r = pack(pcall(aw, ...))
    local e = tm:_leave(not r[1] and r[2] or nil)
    if e then error(e, 0) end
    if not r[1] then error(r[2], 0) end
    return unpack(r, 2, r.n)
  end
  local f = to_future(aw, 1, "wait_for")
  need_task("wait_for")
  if timeout == nil then return f:join() end
  local tm = timeout_scope(timeout)
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
  local outer = Future()
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

-- Task is tulua's: asyncio's methods are already there.
M.Task = tulua.Task

return M
