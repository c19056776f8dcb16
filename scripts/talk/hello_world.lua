-- Slide "async/await": hello_world, the first asyncio coroutine of the talk.
-- The Python on the slide, before 3.5 and since:
--
--   @asyncio.coroutine
--   def hello_world():
--       print("Hello World!")
--       yield from asyncio.sleep(1)
--
--   async def hello_world():
--       print("Hello World!")
--       await asyncio.sleep(1)
--
-- and, to run it, asyncio.run(hello_world()). In Lua neither the decorator nor
-- async/await is needed: any function running in a task may wait, so
-- hello_world is a plain function, and asyncio.run takes the function itself.
-- It prints "Hello World!", then the program ends one second later.
--
-- Run it with: tulua scripts/talk/hello_world.lua
local asyncio = require "asyncio"

local function hello_world()
  print("Hello World!")
  asyncio.sleep(1)
end

asyncio.run(hello_world)
