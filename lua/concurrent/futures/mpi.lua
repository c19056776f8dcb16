--- concurrent.futures.mpi: the static start of MPIPoolExecutor (documented
-- in lua/concurrent/futures/mpi.md). Loaded before the script by
--   mpiexec -n N tulua -l concurrent.futures.mpi script.lua
-- on rank 0 it starts MPI and makes the pools use ranks 1..N-1, and
-- returns concurrent.futures; on every other rank it serves the jobs of
-- rank 0's pool and exits, so that the script runs on rank 0 only. Outside
-- mpiexec, it only returns concurrent.futures (pools are then spawned).
local futures = require "concurrent.futures"
local mpi_pool = require "concurrent._mpi_pool" -- raises without MPI

-- Open MPI's mpiexec tells each rank its place in the environment, so the
-- rank is known before MPI_Init (which a worker rank calls on its own
-- thread, the owner on its communication thread).
local rank = tonumber(os.getenv("OMPI_COMM_WORLD_RANK") or os.getenv("PMIX_RANK") or "")
local size = tonumber(os.getenv("OMPI_COMM_WORLD_SIZE") or "")

if rank and size and size > 1 then
  if rank > 0 then
    mpi_pool.worker_main() -- does not return
  end
  mpi_pool.start_static()
end

return futures
