--- Helpers shared by the Lua-side modules (asyncio, concurrent.futures):
-- their error classes, the misuse errors of waiting functions, and
-- as_completed.
local tulua = require "tulua"

local current, can_wait, new_error = tulua.current, tulua.can_wait, tulua.new_error
local park, unpark, now = tulua.park, tulua.unpark, tulua.now
local after = require("tulua.timer").after
local type, error, setmetatable, getmetatable = type, error, setmetatable, getmetatable

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
-- the public function `name`, at the level of its caller (so call it from
-- the public function itself).
function M.need_task(name)
  local me = current()
  if me == nil then error("attempt to wait in '" .. name .. "' outside a task", 3) end
  if not can_wait() then
    error("attempt to wait in '" .. name .. "' inside a function called from C " ..
      "that cannot yield (such as a 'table.sort' comparator or a 'string.gsub' callback)", 3)
  end
  return me
end

--- Returns t, a timeout in seconds or nil; raises "bad argument #argn to
-- 'fname' (number expected, got ...)" at the level of the public
-- function's caller otherwise.
function M.check_timeout(t, argn, fname)
  if t ~= nil and (type(t) ~= "number" or t ~= t) then
    error(("bad argument #%d to '%s' (number expected, got %s)")
      :format(argn, fname, t ~= t and "nan" or type(t)), 3)
  end
  return t
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
  local seen, listening, waiter = {}, {}, nil
  local function on_done(x)
    tail = tail + 1
    ready[tail] = x
    local w = waiter
    if w then waiter = nil; unpark(w) end
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
      waiter = me
      local timer = remaining and after(remaining, function()
        if waiter == me then waiter = nil; unpark(me) end
      end)
      local ok, err = park()
      waiter = nil
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
