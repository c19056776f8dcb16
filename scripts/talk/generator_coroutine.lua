-- Slide "ジェネレーターベースのコルーチン" (generator-based coroutines), in Lua.
-- The Python on the slide:
--
--   def coro():
--       world = yield "Hello"
--       yield world
--
--   c = coro()
--   print(c) # => <generator object coro at 0x10f2df620>
--
--   print(next(c))  # => Hello
--
--   print(c.send('World')) # => World
--
-- A Lua coroutine is the generator's counterpart: coroutine.create makes it
-- without running it, the first coroutine.resume runs it up to its first
-- yield (Python's next(c), which primes the generator), and a later resume
-- passes a value in, which that yield returns (c.send). print(c) would show
-- "thread: 0x..." with an address that changes from run to run, so the
-- script prints the coroutine's type and status instead.
--
-- Run it with: tulua scripts/talk/generator_coroutine.lua

local function coro()
  local world = coroutine.yield("Hello")
  coroutine.yield(world)
end

--- Resumes co with the given values and returns what it yields, as Python's
-- generator.send does; raises the coroutine's error if it fails.
local function send(co, ...)
  local ok, value = coroutine.resume(co, ...)
  if not ok then error(value, 0) end
  return value
end

local c = coroutine.create(coro)
print(type(c), coroutine.status(c)) --> thread  suspended

print(send(c)) --> Hello

print(send(c, "World")) --> World
