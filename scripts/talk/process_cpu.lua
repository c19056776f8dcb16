-- Slide "ProcessPoolExecuter - CPUバウンドな例" (ProcessPoolExecutor, a
-- CPU-bound example): the sums of thread_cpu.lua, on three processes. The
-- Python on the slide:
--
--   from concurrent.futures import ProcessPoolExecutor, as_completed
--
--   def busy_cpu(index):
--       # a biggish computation
--       sum(range(10**8))
--       return 'Finish process{}'.format(index)
--
--   if __name__ == '__main__':
--       futures = []
--       worker_num = 3  # worker processes
--       task_num = 6    # tasks to run
--
--       # changing to ProcessPoolExecutor is all it takes
--       with ProcessPoolExecutor(worker_num) as executer:
--           for index in range(task_num):
--               futures.append(executer.submit(busy_cpu, index))
--
--       # show the results as they finish
--       for x in as_completed(futures):
--           print(x.result())
--
-- In CPython this is how CPU-bound work gets past the GIL. In tulua a
-- thread pool already does (thread_cpu.lua); a process pool adds isolation:
-- each worker is a tulua process, which gets busy_cpu as bytecode with a
-- copy of its upvalues. The results come in the order the tasks finished,
-- which varies from run to run; then comes the pool's timeline. With three
-- workers on a 2-core machine, the three first tasks share two cores, so
-- each runs slower than alone (more_workers_than_cores.lua shows that).
--
-- Run it with: tulua scripts/talk/process_cpu.lua
-- (--svg FILE also writes the timeline as an SVG picture)
local futures = require "concurrent.futures"
local timeline = require "concurrent.timeline"
local svg_path = arg and arg[1] == "--svg" and (arg[2] or error("--svg needs a file name"))

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
  return ("Finish process%d"):format(index)
end

local submitted = {}
local executor <close> = futures.ProcessPoolExecutor(WORKER_NUM)
for index = 0, TASK_NUM - 1 do
  submitted[#submitted + 1] = executor:submit(busy_cpu, index)
end

for x in futures.as_completed(submitted) do
  print(x:result())
end

local records = executor:timeline()
for _, r in ipairs(records) do r.name = ("process%d"):format(r.index - 1) end
print()
print(timeline.render(records, {workers = WORKER_NUM}))
if svg_path then
  assert(timeline.write_svg(svg_path, records, {workers = WORKER_NUM, title = "ProcessPoolExecutor(3): busy_cpu"}))
end
