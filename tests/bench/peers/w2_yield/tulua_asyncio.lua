-- W2 peer for tulua's asyncio module, written as py_asyncio.py is: TASKS tasks
-- (asyncio.create_task) each call asyncio.sleep(0) ITERS times; asyncio.gather
-- waits for them and collects each task's count.
-- Usage: tulua tulua_asyncio.lua [TASKS=1000] [ITERS=1000]
local asyncio = require "asyncio"

local TASKS = tonumber(arg[1]) or 1000
local ITERS = tonumber(arg[2]) or 1000

local function worker(iters)
  for _ = 1, iters do asyncio.sleep(0) end
  return iters
end

local function main()
  local loop = asyncio.get_running_loop()
  local t0 = loop:time()
  local tasks = {}
  for i = 1, TASKS do tasks[i] = asyncio.create_task(worker, ITERS) end
  local done = asyncio.gather(tasks)
  local dt = loop:time() - t0
  local total = 0
  for i = 1, done.n do total = total + done[i] end
  assert(done.n == TASKS and total == TASKS * ITERS, total)
  print(string.format("RESULT seconds=%.4f rtps=%.0f", dt, total / dt))
end

asyncio.run(main)
