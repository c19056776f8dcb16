-- Slide "asyncio 挙動の確認" (watching asyncio work): the compute/print_sum
-- chain, from Python's documentation ("Example: Chain coroutines"). The
-- Python on the slide:
--
--   import asyncio
--
--   async def compute(x, y):
--       print("Compute %s + %s ..." % (x, y))
--       await asyncio.sleep(1.0)
--       return x + y
--
--   async def print_sum(x, y):
--       result = await compute(x, y)
--       print("%s + %s = %s" % (x, y, result))
--
--   loop = asyncio.get_event_loop()
--   loop.run_until_complete(print_sum(1, 2))
--   loop.close()
--
-- Where Python awaits compute(x, y), Lua simply calls it: the task waits
-- inside compute's sleep while the loop runs. run_until_complete takes the
-- function and its arguments instead of a coroutine object. It prints
-- "Compute 1 + 2 ...", and one second later "1 + 2 = 3".
--
-- Run it with: tulua scripts/talk/compute_chain.lua
local asyncio = require "asyncio"

local function compute(x, y)
  print(("Compute %s + %s ..."):format(x, y))
  asyncio.sleep(1.0)
  return x + y
end

local function print_sum(x, y)
  local result = compute(x, y)
  print(("%s + %s = %s"):format(x, y, result))
end

local loop = asyncio.get_event_loop()
loop:run_until_complete(print_sum, 1, 2)
loop:close()
