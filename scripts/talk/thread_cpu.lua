-- Slide "ThreadPoolExecuter - CPUバウンドの例" (ThreadPoolExecutor, a
-- CPU-bound example): three threads each sum a long range of numbers. The
-- Python on the slide:
--
--   from concurrent.futures import ThreadPoolExecutor, as_completed
--
--   def busy_cpu(index):
--       # a biggish computation
--       sum(range(10**8))
--       return 'Finish thread{}'.format(index)
--
--   if __name__ == '__main__':
--       futures = []
--       worker_num = 3  # worker threads
--       task_num = 6    # tasks to run
--
--       with ThreadPoolExecutor(worker_num) as executer:
--           for index in range(task_num):
--               futures.append(executer.submit(busy_cpu, index))
--
--       # show the results as they finish
--       for x in as_completed(futures):
--           print(x.result())
--
-- In CPython the threads take turns holding the GIL, so the pool is no
-- faster than one thread; the talk's answer is ProcessPoolExecutor
-- (process_cpu.lua). A tulua worker thread owns a Lua state of its own, and
-- nothing is shared between the states, so there is no such lock: the
-- threads run on every core there is. To show it, the script runs the six
-- tasks one after the other first, then on the pool, and prints the
-- speedup: about 2x on 2 cores, less when other programs keep the cores
-- busy. A plain Lua loop sums 10^8 numbers in about a third of a second in
-- a Release build, so the whole script takes about 3 s on 2 cores.
--
-- Run it with: tulua scripts/talk/thread_cpu.lua
-- (--svg FILE also writes the timeline as an SVG picture)
local futures = require "concurrent.futures"
local timeline = require "concurrent.timeline"
local svg_path = arg and arg[1] == "--svg" and (arg[2] or error("--svg needs a file name"))
local now = require("tulua").now

local WORKER_NUM = 3
local TASK_NUM = 6
local N = 100000000 -- Python's 10**8: 10 ^ 8 would be a float in Lua

-- sum(range(n))
local function sum_range(n)
  local s = 0
  for i = 0, n - 1 do s = s + i end
  return s
end

local function busy_cpu(index)
  sum_range(N)
  return ("Finish thread%d"):format(index)
end

local start = now()
for index = 0, TASK_NUM - 1 do busy_cpu(index) end
local sequential = now() - start

start = now()
local submitted = {}
local executor <close> = futures.ThreadPoolExecutor(WORKER_NUM)
for index = 0, TASK_NUM - 1 do
  submitted[#submitted + 1] = executor:submit(busy_cpu, index)
end

for x in futures.as_completed(submitted) do
  print(x:result())
end
local pooled = now() - start

print()
print(("one after the other: %.2f s; ThreadPoolExecutor(%d): %.2f s"):format(sequential, WORKER_NUM, pooled))
local cores = futures.cpu_count()
print(("speedup %.1fx on %d core%s: no GIL, each worker thread owns its Lua state"):format(
  sequential / pooled, cores, cores == 1 and "" or "s"))
print("(the speedup is smaller while other programs keep the cores busy)")

local records = executor:timeline()
for _, r in ipairs(records) do r.name = ("thread%d"):format(r.index - 1) end
print()
print(timeline.render(records, {workers = WORKER_NUM}))
if svg_path then
  assert(timeline.write_svg(svg_path, records, {workers = WORKER_NUM, title = "ThreadPoolExecutor(3): busy_cpu"}))
end
