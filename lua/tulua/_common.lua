--- tulua._common: what asyncio and concurrent.futures share (internal):
-- their error classes, the misuse errors of waiting functions, the parking
-- of a task that waits on callbacks, and the algorithms of wait and
-- as_completed, written once for both facades.
local tulua = require "tulua"
local args = require "tulua._args"

local current, can_wait, new_error = tulua.current, tulua.can_wait, tulua.new_error
local park, unpark, now = tulua.park, tulua.unpark, tulua.now
local after = require("tulua.timer").after
local arg_error = args.arg_error
local type, error, setmetatable, getmetatable, tostring =
  type, error, setmetatable, getmetatable, tostring

local M = {}

--- The metatable of tulua's error objects.
M.ERROR_MT = getmetatable(new_error("E", "e"))

--- Returns an error class: calling it, cls(msg), makes an error object with
-- the class's code and msg (or the default message).
function M.error_class(code, default)
  return setmetatable({code = code, default = default}, {
    __call = function(cls, msg) return new_error(cls.code, msg or cls.default) end,
  })
end

--- Returns whether err is an error object of class cls.
function M.is_error(err, cls)
  return type(err) == "table" and getmetatable(err) == M.ERROR_MT and err.code == cls.code
end

--- Returns the current task, or raises the runtime's misuse errors naming
-- the public function `name`, at `level` as tulua._args counts it (default
-- 2: the caller of the function calling need_task, which is then the
-- public function itself).
function M.need_task(name, level)
  local me = current()
  level = (level or 2) + 1
  if me == nil then error("attempt to wait in '" .. name .. "' outside a task", level) end
  if not can_wait() then
    error("attempt to wait in '" .. name .. "' inside a function called from C " ..
      "that cannot yield (such as a 'table.sort' comparator or a 'string.gsub' callback)", level)
  end
  return me
end

--- Returns t, a timeout in seconds or nil; raises "bad argument #argn to
-- 'fname' (number expected, got ...)" at the level of the public
-- function's caller otherwise.
function M.check_timeout(t, argn, fname)
  if t ~= nil and (type(t) ~= "number" or t ~= t) then
    arg_error(argn, fname, "number expected, got " .. (t ~= t and "nan" or type(t)), 3)
  end
  return t
end

--- Returns wait, wake: the parking of a task that waits on callbacks and
-- timers. wait(me) parks me, the current task, and returns park()'s
-- `true` or `false, err`; wake() makes the task parked in that wait ready,
-- and does nothing when none is: a callback or timer that comes late
-- cannot wake the task from a wait elsewhere, as a bare unpark(me) could.
-- what and on name the wait for `tulua --ps` (tulua.park).
function M.new_waker(what, on)
  local parked = nil
  local function wake()
    local t = parked
    if t then parked = nil; unpark(t) end
  end
  local function wait(me)
    parked = me
    local ok, err = park(what, on)
    parked = nil
    return ok, err
  end
  return wait, wake
end

local new_waker = M.new_waker

M.FIRST_COMPLETED = "FIRST_COMPLETED"
M.FIRST_EXCEPTION = "FIRST_EXCEPTION"
M.ALL_COMPLETED = "ALL_COMPLETED"

--- Returns when, a return_when of wait (nil: ALL_COMPLETED); raises "bad
-- argument #argn to 'fname' (invalid return_when: ...)" otherwise, at the
-- level of the public function's caller.
function M.check_return_when(when, argn, fname)
  when = when or M.ALL_COMPLETED
  if when ~= M.FIRST_COMPLETED and when ~= M.FIRST_EXCEPTION and when ~= M.ALL_COMPLETED then
    arg_error(argn, fname, "invalid return_when: " .. tostring(when), 3)
  end
  return when
end

--- The algorithm of asyncio's and concurrent.futures' wait: waits in the
-- current task until when holds (a return_when: every item is done, any
-- is, or one failed) or timeout seconds have passed, and returns two sets
-- {[item] = true}: done and pending. Never raises on timeout and never
-- cancels. ops: done(x), failed(x), listen(x, fn) (fn(x) runs once x is
-- done) and unlisten(x, fn).
--
-- Timeout nil waits as long as it takes. A timeout of 0 or less never
-- waits: it reports what is done at the call, as both Pythons treat 0 and
-- a negative timeout alike (concurrent.futures.wait(fs, 0) returns at
-- once; asyncio.wait's call_later(0) gives the loop one turn, but this
-- wait, unlike Python's, never suspends when it need not, not even when all
-- are done already). Outside a task, it raises (naming the public function
-- `name`) only when it has to wait; call it without `return` (a tail call
-- moves the level of that error).
function M.wait(items, ops, timeout, when, name)
  local done, failed = ops.done, ops.failed
  local first = when == M.FIRST_COMPLETED
  local on_failure = when == M.FIRST_EXCEPTION
  local left, satisfied = 0, false
  for i = 1, #items do
    local x = items[i]
    if not done(x) then
      left = left + 1
    elseif first or (on_failure and failed(x)) then
      satisfied = true
    end
  end
  if left > 0 and not satisfied and (timeout == nil or timeout > 0) then
    local me = M.need_task(name, 3)
    local wait, wake = new_waker(name, items)
    local function on_done(x)
      left = left - 1
      if left == 0 or first or (on_failure and failed(x)) then satisfied = true; wake() end
    end
    for i = 1, #items do
      if not done(items[i]) then ops.listen(items[i], on_done) end
    end
    local timer = timeout and after(timeout, function() satisfied = true; wake() end)
    local ok, err = true, nil
    while not satisfied do
      ok, err = wait(me)
      if not ok then break end
    end
    if timer then timer:close() end
    for i = 1, #items do
      if not done(items[i]) then ops.unlisten(items[i], on_done) end
    end
    if not ok then error(err, 0) end
  end
  local done_set, pending = {}, {}
  for i = 1, #items do
    local x = items[i]
    if done(x) then done_set[x] = true else pending[x] = true end
  end
  return done_set, pending
end

--- The iterator of asyncio's and concurrent.futures' as_completed: each
-- of items (duplicates once) as it is done, those done already first.
-- ops: done(x), listen(x, fn) (fn(x) runs once x is done) and
-- unlisten(x, fn). Once timeout seconds (nil: none) have passed since the
-- call, the iterator raises timeout_error(left, total); name is the public
-- function's, for misuse errors. Returns iterator, nil, nil and a closing
-- value that lets go of the items when a loop breaks early.
function M.as_completed(items, ops, timeout, name, timeout_error)
  local deadline = timeout and now() + timeout
  local ready, head, tail, left = {}, 1, 0, 0
  local seen, listening = {}, {}
  local wait, wake = new_waker(name, items)
  local function on_done(x)
    tail = tail + 1
    ready[tail] = x
    wake()
  end
  for i = 1, #items do
    local x = items[i]
    if not seen[x] then
      seen[x] = true
      left = left + 1
      if ops.done(x) then
        tail = tail + 1
        ready[tail] = x
      else
        listening[#listening + 1] = x
        ops.listen(x, on_done)
      end
    end
  end
  local total = left
  local function cleanup()
    for i = 1, #listening do
      if not ops.done(listening[i]) then ops.unlisten(listening[i], on_done) end
    end
    listening = {}
  end
  local function iter()
    if left == 0 then return nil end
    while head > tail do
      local remaining = deadline and deadline - now()
      if remaining and remaining <= 0 then
        cleanup()
        error(timeout_error(left, total), 2)
      end
      local me = M.need_task(name)
      local timer = remaining and after(remaining, wake)
      local ok, err = wait(me)
      if timer then timer:close() end
      if not ok then cleanup(); error(err, 0) end
    end
    local x = ready[head]
    ready[head] = nil
    head = head + 1
    left = left - 1
    if left == 0 then cleanup() end
    return x
  end
  return iter, nil, nil, setmetatable({}, {__close = cleanup})
end

return M
