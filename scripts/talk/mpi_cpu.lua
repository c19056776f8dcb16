-- The talk's CPU-bound example (process_cpu.lua) on MPI ranks: the same
-- busy_cpu jobs in an MPIPoolExecutor, whose workers are Open MPI ranks, on
-- one machine or across a cluster; the timeline draws one row per rank.
--
-- Run it either way (as root, Open MPI also wants
-- OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1):
--   mpiexec -n 4 tulua -l concurrent.futures.mpi scripts/talk/mpi_cpu.lua
--     (rank 0 runs this script, ranks 1-3 are the workers)
--   tulua scripts/talk/mpi_cpu.lua
--     (spawns 3 worker ranks; with fewer cores than 1 + 3, set
--     OMPI_MCA_rmaps_base_oversubscribe=1)
-- An optional argument scales the work: N = 10^8 by default, as the slide's.
local futures = require "concurrent.futures"
local timeline = require "concurrent.timeline"

local TASK_NUM = 6
local N = math.tointeger(tonumber(arg[1])) or 100000000

local function sum_range(n)
  local s = 0
  for i = 0, n - 1 do s = s + i end
  return s
end

local function busy_cpu(index)
  sum_range(N)
  return ("Finish rank job %d"):format(index)
end

local submitted = {}
local executor <close> = futures.MPIPoolExecutor(3)
for index = 0, TASK_NUM - 1 do
  submitted[#submitted + 1] = executor:submit(busy_cpu, index)
end

for x in futures.as_completed(submitted) do
  print(x:result())
end

print()
print(timeline.render(executor:timeline(), {workers = executor:max_workers(), row = "rank"}))
