--- concurrent._mpi_pool: the MPI backend of concurrent.futures
-- (futures.MPIPoolExecutor): the process pool's dispatch
-- (concurrent._process_pool) over the MPI transport of bindings/mpi_pool.c
-- (the module tulua._mpi, loaded only here). Workers are MPI ranks, either
-- spawned (MPI_Comm_spawn, all at the pool's first job) or, under
-- `mpiexec ... tulua -l concurrent.futures.mpi`, the ranks 1..N-1 of the
-- job, which this module's worker_main serves jobs on.
--
-- What differs from local processes (the transport's functions, see the
-- top of _process_pool.lua): a rank that dies cannot be started again, so
-- it breaks the pool, naming its rank and host, and so does one that has
-- sent nothing, not even a heartbeat, for opts.heartbeat seconds; a
-- running job is stopped by a cancel frame, which the worker's MPI thread
-- turns into job control's signal, on any host; a failed job's traceback
-- names the rank and host it ran on.
local process_pool = require "concurrent._process_pool"
local mpi = require "tulua._mpi"
local P = require "tulua._process_pool"

local M = {}

-- The code a spawned worker runs: tulua -E -e CODE (-E: as a process
-- pool's worker, LUA_INIT does not run and the paths are the owner's).
local WORKER_CODE = "require('concurrent._mpi_pool').worker_main()"

local FAST = 0.01 -- seconds (the process pool's is 0.001)
-- seconds without word from a worker (whose MPI thread sends a heartbeat
-- every quarter of it, whatever its job does) after which it is dead
local HEARTBEAT = 30

-- set by concurrent.futures.mpi under mpiexec: the ranks of the job serve
local static = false

-- Names worker w: "worker rank 2 on host node7".
local function who(w)
  local index, _, host = w.link:info()
  return ("worker rank %d on host %s"):format(index or w.index, host or "?")
end

local transport = {}
-- a job's track in a trace: "rank N" (host/trace.c)
transport.trace_kind = "rank"

function transport.start(pool, slot, handler)
  local hub = pool.hub
  if hub == nil then
    local ok, h = pcall(mpi.hub, pool.max, handler, pool.spawn, pool.heartbeat, pool.trace_no)
    if not ok then return nil, h end
    hub, pool.hub = h, h
  end
  local link = hub:links()[slot]
  link:send("V", 0, pool.version)
  return link, nil
end

-- The cancel frame, sent at once: the worker's MPI thread, which reads it
-- while the job runs, stops the job with job control's signal, on any
-- host (the dispatch sends it again until the job ends).
function transport.interrupt(_, w, wid)
  w.link:send("C", wid, nil, true)
end

function transport.died(_, w, how)
  return ("%s died (%s)"):format(who(w), how)
end

function transport.failed(w, err, tb)
  if type(tb) == "string" then
    tb = tb:gsub("^stack traceback:", "stack traceback (in " .. who(w) .. "):")
  elseif type(err) == "string" then
    err = err .. " (in " .. who(w) .. ")"
  end
  return err, tb
end

local function strings(v)
  if type(v) == "string" then return {v} end
  return v
end

--- Creates the backend of an MPIPoolExecutor(max_workers, opts) (see
-- _process_pool.new); opts checked by futures.lua: initializer, initargs,
-- env, wdir, path, hosts, hostfile, heartbeat.
function M.new(max_workers, opts, core)
  local tr = setmetatable({extra = {env = opts.env, wdir = opts.wdir, path = strings(opts.path)}},
    {__index = transport})
  local pool = process_pool.new(max_workers, opts, core, tr)
  pool.version = mpi.version()
  -- a round trip through MPI and two idle waits takes longer than one
  -- over a socket pair: the windows grow, and jobs go ahead, on that scale
  pool.fast = FAST
  pool.heartbeat = opts.heartbeat or HEARTBEAT
  if static then
    pool.hub = mpi.hub(max_workers, process_pool.on_event, nil, pool.heartbeat, pool.trace_no)
  else
    local file, name = P.executable()
    if not file then error(name, 2) end
    local hosts = opts.hosts
    if type(hosts) == "table" then hosts = table.concat(hosts, ",") end
    pool.spawn = {name, "-E", "-e", WORKER_CODE, hosts = hosts, hostfile = opts.hostfile}
  end
  return pool
end

--- The number of workers a pool has by default: the ranks besides this
-- one under mpiexec, else the CPUs this process may use.
function M.default_workers(cpus)
  if static then
    local _, size = mpi.world()
    return math.max(size - 1, 1)
  end
  return cpus
end

--- Whether the pools use the ranks of an mpiexec (a static start).
function M.is_static() return static end

-- ---- the ranks ----

--- On rank 0 of an mpiexec: starts MPI, and the pools use ranks 1..N-1.
-- Returns the size of the job.
function M.start_static()
  static = true
  local _, size = mpi.world()
  return size
end

-- Applies a pool's env, wdir and path in this worker.
local function apply(extra)
  if type(extra) ~= "table" then return end
  for k, v in pairs(extra.env or {}) do assert(mpi.setenv(k, v)) end
  if extra.wdir then assert(mpi.chdir(extra.wdir)) end
  local dirs = extra.path or {}
  for i = #dirs, 1, -1 do
    local d = dirs[i]
    package.path = d .. "/?.lua;" .. d .. "/?/init.lua;" .. package.path
  end
end

--- The main of a worker rank: serves the jobs of its owner (rank 0) until
-- told to stop, then leaves MPI and exits. A worker whose version differs
-- from its owner's has told it so (the pool breaks) and waits for the
-- stop.
function M.worker_main()
  local ok, port = pcall(mpi.worker_open)
  if not ok or port == nil then -- a version told to the owner; or stopped unused
    if not ok then mpi.worker_wait_stop() end
    mpi.worker_close()
    os.exit(0)
  end
  local path, cpath, extra = P.port.paths(port)
  package.path, package.cpath = path, cpath
  local applied, err = pcall(apply, extra)
  if not applied then
    P.port.broken(port, "cannot set up " .. tostring(err))
  else
    require("concurrent._worker").serve(port, P.port)
  end
  io.stdout:flush()
  -- any later frame is not for this process
  if not applied then mpi.worker_wait_stop() end
  mpi.worker_close()
  os.exit(0)
end


return M
