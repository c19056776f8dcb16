--- Helpers shared by the Lua-side modules (asyncio, concurrent.futures):
-- their error classes and the misuse errors of waiting functions.
local tulua = require "tulua"

local current, can_wait, new_error = tulua.current, tulua.can_wait, tulua.new_error
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

return M
