-- Slide "イベントループ" (the event loop): one thread runs many tasks, and
-- switches to another task whenever the running one waits. The slide shows
-- only a diagram; the Python this script mirrors is:
--
--   import asyncio
--
--   async def worker(name, delay, steps):
--       for step in range(1, steps + 1):
--           await asyncio.sleep(delay)
--           print("%.1f s  %s: step %d/%d" % (loop.time() - start, name, step, steps))
--
--   async def main():
--       global loop, start
--       loop = asyncio.get_running_loop()
--       start = loop.time()
--       await asyncio.gather(worker("A", 0.3, 3), worker("B", 0.4, 2),
--                            worker("C", 1.0, 1))
--       print(...)  # the total time
--
--   asyncio.run(main())
--
-- The three tasks sleep 0.9 s, 0.8 s and 1.0 s, 2.7 s in all, yet the whole
-- program takes about 1.0 s: while one task sleeps, the loop runs the others.
-- Their steps fall at least 0.1 s apart, so the order of the lines is fixed.
--
-- Run it with: tulua scripts/talk/event_loop.lua
local asyncio = require "asyncio"

local WORKERS = {{"A", 0.3, 3}, {"B", 0.4, 2}, {"C", 1.0, 1}}

local loop = asyncio.get_event_loop()
local start

local function worker(name, delay, steps)
  for step = 1, steps do
    asyncio.sleep(delay)
    print(("%.1f s  %s: step %d/%d"):format(loop:time() - start, name, step, steps))
  end
end

local function main()
  start = loop:time()
  local tasks, total, longest = {}, 0, 0
  for i, w in ipairs(WORKERS) do
    local name, delay, steps = w[1], w[2], w[3]
    print(("%s sleeps %d x %.1f s"):format(name, steps, delay))
    tasks[i] = asyncio.create_task(worker, name, delay, steps)
    total = total + delay * steps
    longest = math.max(longest, delay * steps)
  end
  asyncio.gather(table.unpack(tasks))
  print(("%.1f s  all done: the longest task took %.1f s, the sleeps add up to %.1f s"):format(
    loop:time() - start, longest, total))
end

asyncio.run(main)
