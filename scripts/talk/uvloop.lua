-- Slide "asyncioへの対応(3)" (moving to asyncio, part 3): installing uvloop,
-- asyncio's event loop rebuilt on libuv. The Python on the slide:
--
--   import asyncio
--   import uvloop
--   asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
--
-- tulua needs no such step: its one event loop already is libuv's, the loop
-- uvloop wraps. To show the loop at work, the script runs a burst of 100000
-- asyncio.sleep(0) calls, each a round trip through the loop (the task
-- yields, the loop polls for I/O, the task runs again). The time it took is
-- not printed, so that the output is the same on every run: only whether it
-- stayed under a second (about 0.05 s on a laptop, in a Release build).
--
-- Run it with: tulua scripts/talk/uvloop.lua
local asyncio = require "asyncio"

local ROUND_TRIPS = 100000

print("Python: pip install uvloop, then")
print("  asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())")
print("puts asyncio on libuv, the event loop of Node.js, for speed.")
print("tulua: nothing to install; its event loop already is libuv.")

local function burst()
  local loop = asyncio.get_running_loop()
  local start = loop:time()
  for _ = 1, ROUND_TRIPS do
    asyncio.sleep(0)
  end
  return loop:time() - start
end

local elapsed = asyncio.run(burst)
print(("%d asyncio.sleep(0) round trips through libuv's loop: %s"):format(ROUND_TRIPS,
  elapsed < 1 and "under a second" or "over a second (a debug or sanitizer build?)"))
