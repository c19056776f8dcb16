--- tulua._args: argument errors in Lua's grammar for the Lua-side modules,
-- as lauxlib's luaL_argerror and luaL_typeerror serve C: "bad argument #2
-- to 'wait' (number expected, got nil)". Internal; requires nothing, so that
-- the pure modules (tulua.repl, concurrent.timeline) may use it too.
--
-- Each raises at `level`, counted as error() counts it from the function
-- that calls the helper: 2 (the default) blames that function's caller,
-- which is right when a public function calls the helper itself; a local
-- checker one call deeper passes 3. Never call them in a tail call (`return
-- arg_error(...)`): a tail call drops the frame the level counts.
local type, error, getmetatable, next, tostring, format, math_type =
  type, error, getmetatable, next, tostring, string.format, math.type

local M = {}

--- Raises "bad argument #argn to 'fname' (msg)".
function M.arg_error(argn, fname, msg, level)
  error(format("bad argument #%d to '%s' (%s)", argn, fname, msg), (level or 2) + 1)
end

local arg_error = M.arg_error

--- Raises "bad argument #argn to 'fname' (expected expected, got <type of
-- value>)". The type is Lua's type(), not a __name (unlike luaL_typeerror).
function M.type_error(argn, fname, expected, value, level)
  arg_error(argn, fname, expected .. " expected, got " .. type(value), (level or 2) + 1)
end

--- Raises "bad argument #1 to 'fname' (kind expected, got ...)" unless self
-- is an object whose metatable's _kind is kind (an object of that class or
-- of a subclass that keeps its _kind); the got names the __name of a
-- metatable if there is one. As luaL_checkudata for tables.
function M.check_self(self, kind, fname, level)
  local mt = type(self) == "table" and getmetatable(self)
  if not (mt and mt._kind == kind) then
    arg_error(1, fname, kind .. " expected, got " .. (mt and mt.__name or type(self)), (level or 2) + 1)
  end
end

--- Returns a method that returns self[field] once check_self(self, kind,
-- fname) holds: the getters of the Lua-side classes (lock:locked()...).
function M.getter(kind, fname, field)
  return function(self)
    M.check_self(self, kind, fname)
    return self[field]
  end
end

--- Returns v if it is an integer from 1 to max; else raises "bad argument
-- #argn to 'fname' (what must be a positive integer)", or "(what must be 1
-- to max)" when it is larger: a size or a count that a loop or an
-- allocation follows has an upper bound too.
function M.check_count(v, max, argn, fname, what, level)
  if math_type(v) ~= "integer" or v < 1 then
    arg_error(argn, fname, what .. " must be a positive integer", (level or 2) + 1)
  elseif v > max then
    arg_error(argn, fname, format("%s must be 1 to %d", what, max), (level or 2) + 1)
  end
  return v
end

--- Raises "bad argument #argn to 'fname' (unknown option 'key')" for a key
-- of the table opts that the set known lacks, as process.spawn does in C:
-- a misspelt option is an error, never a default.
function M.check_options(opts, known, argn, fname, level)
  for k in next, opts do
    if not known[k] then
      arg_error(argn, fname, "unknown option '" .. tostring(k) .. "'", (level or 2) + 1)
    end
  end
end

return M
