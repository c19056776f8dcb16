-- Slide "もしCPUが2コアしかなかったら?" (what if the CPU had only 2 cores?):
-- a process pool with more workers than cores. The slide shows only a
-- picture: the busy_cpu tasks of process_cpu.lua on more processes than
-- there are cores, each task stretched out, because the processes take turns
-- on the cores. Its point, in the next slide's words: processes cannot run
-- in parallel beyond the number of cores.
--
-- The script times one task alone first, then runs twice as many tasks as
-- there are cores on as many worker processes, and prints how long each
-- took: about twice as long as alone, while all of them together take about
-- the time of two tasks one after the other. Then comes the pool's
-- timeline, with every worker busy and every bar twice as long as alone.
-- The timings vary from run to run, more so on a busy machine; on 2 cores
-- the script takes about a second.
--
-- Run it with: tulua scripts/talk/more_workers_than_cores.lua
-- (--svg FILE also writes the timeline as an SVG picture)
local futures = require "concurrent.futures"
local timeline = require "concurrent.timeline"
local svg_path = arg and arg[1] == "--svg" and (arg[2] or error("--svg needs a file name"))
local now = require("tulua").now

local CORES = futures.cpu_count()
local WORKER_NUM = CORES * 2
local TASK_NUM = WORKER_NUM
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

local start = now()
busy_cpu(0)
local alone = now() - start

start = now()
local submitted = {}
local executor <close> = futures.ProcessPoolExecutor(WORKER_NUM)
for index = 0, TASK_NUM - 1 do
  submitted[#submitted + 1] = executor:submit(busy_cpu, index)
end

for x in futures.as_completed(submitted) do
  print(x:result())
end
local total = now() - start

local cores = CORES == 1 and "1 core" or CORES .. " cores"
local records = executor:timeline()
print()
print(("%d worker processes on %s; one task alone takes %.2f s, here:"):format(WORKER_NUM, cores, alone))
for _, r in ipairs(records) do
  r.name = ("process%d"):format(r.index - 1)
  local took = r.finish - r.start
  print(("  %s %.2f s (%.1fx as long)"):format(r.name, took, took / alone))
end
print(("all %d tasks in %.2f s: %s run no more than %d at once"):format(TASK_NUM, total, cores, CORES))
print()
print(timeline.render(records, {workers = WORKER_NUM}))
if svg_path then
  assert(timeline.write_svg(svg_path, records, {workers = WORKER_NUM, title = "more workers than cores"}))
end
