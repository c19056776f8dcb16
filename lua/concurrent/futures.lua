--- concurrent.futures: Python's thread and process pools over tulua
-- (documented in lua/concurrent/futures.md). An executor runs functions in
-- workers, each with a Lua state of its own, so a thread pool runs Lua in
-- parallel. The machinery here and in its C core (bindings/future.c: the
-- futures, job ids, the timeline; map's window) is the same for every kind
-- of worker; a backend, made by backend_new(max_workers, opts, core),
-- starts the workers and moves the jobs:
--   backend:submit(id, fn, ...)   encodes (raising on what cannot cross), queues
--                                 (or a submit in C, bindings/future.h)
--   backend:state(id)             "pending" | "running" | "finished"
--   backend:cancel(id)            "removed" (never delivered) | "running" | false
--   backend:shutdown(cancel)      no new jobs; returns the ids it removed
--   backend:close()               ends the workers (interrupting their jobs)
-- and delivers once every job it did not remove, core:deliver(id, status,
-- worker, started, finished, ...) (tulua__core_deliver in C): status "ok"
-- with the results, "error" with the error and the worker's traceback,
-- "cancelled", "broken" or "crashed" with a message. A job's id is unique
-- among the jobs in flight and is given again once it is delivered or
-- removed: a backend forgets an id before it delivers it.
local tulua = require "tulua"
local thread_pool = require "tulua._thread_pool"

local now = tulua.now
local type, select, error, pcall, setmetatable, getmetatable, tostring, pairs =
  type, select, error, pcall, setmetatable, getmetatable, tostring, pairs

local M = {}

local common = require "tulua._common"
local ERROR_MT, error_class, need_task, new_waker = common.ERROR_MT, common.error_class,
  common.need_task, common.new_waker
local check_timeout, check_return_when = common.check_timeout, common.check_return_when
local args = require "tulua._args"
local arg_error, type_error, check_options, check_count, check_self =
  args.arg_error, args.type_error, args.check_options, args.check_count, args.check_self

-- The most workers a pool may have (bindings/thread_pool.c refuses more
-- too): every pool keeps per-worker state, and a process pool forks them.
local MAX_WORKERS = 1024
-- The bound of the other counts (map's chunksize and buffersize,
-- max_tasks_per_child): far above any use, and index arithmetic on it
-- cannot overflow.
local MAX_COUNT = 0x7fffffff

-- ---- errors ----

M.CancelledError = error_class("ECANCELED", "future cancelled")
M.TimeoutError = error_class("ETIMEDOUT", "timed out")
M.InvalidStateError = error_class("EINVALIDSTATE", "invalid state")
M.BrokenExecutor = error_class("EBROKEN", "the executor is broken")

--- Returns whether err is an error object of class cls (futures.TimeoutError...).
M.is_error = common.is_error

--- Returns whether err is a cancellation (CancelledError).
function M.is_cancelled(err) return M.is_error(err, M.CancelledError) end

--- Returns whether err is a TimeoutError.
function M.is_timeout(err) return M.is_error(err, M.TimeoutError) end

-- ---- Future ----

-- The Future is C (bindings/future.c), methods and waits included: one
-- userdata per job, whose results a pool's deliverer sets without calling
-- Lua. C calls up into this file only through the hooks installed below
-- (bindings/future.h).
local future = require "tulua._future"
local is_future, state_of, failed = future.is_future, future.state, future.failed
local add_waiter, remove_waiter, settle_cancelled = future.add_waiter, future.remove_waiter, future.cancel
-- wait_done(f, timeout, name) -> whether f is done: waits in the current
-- task until it is or timeout seconds have passed
local wait_done = future.wait

--- Creates a pending Future, for code that implements an executor.
M.Future = future.new

local function is_done(f)
  local s = state_of(f)
  return s == "finished" or s == "cancelled"
end

-- Turns what the worker sent for a failed job into the error result()
-- raises: a string gets the worker's traceback; an error object of tulua
-- (its metatable does not cross) gets its metatable back.
local function remote_error(err, tb)
  if tb then
    -- the worker's own frames below the job's say nothing to the user
    tb = tb:gsub("\n\t%[C%]: in %?\n\t%[C%]: in function 'xpcall'.*$", "")
      :gsub("^stack traceback:", "stack traceback (in the worker):")
  end
  if type(err) == "string" then
    return tb and err .. "\n" .. tb or err
  end
  if type(err) == "table" and getmetatable(err) == nil and type(err.code) == "string" and
    type(err.message) == "string" then
    setmetatable(err, ERROR_MT)
  end
  if type(err) == "table" and tb and err.traceback == nil then err.traceback = tb end
  if err == nil then return "nil error" .. (tb and "\n" .. tb or "") end
  return err
end

-- The hooks of bindings/future.h, installed here and nowhere else: what
-- each is for, when it runs and what it may raise is written there.
future.set_hooks {
  remote_error = remote_error,
  report = function(f, err)
    tulua._report("exception calling callback for " .. tostring(f) .. ": " .. tostring(err))
  end,
  idle = function(ex) ex:_idle() end,
}

-- ---- waiting on several futures ----

M.FIRST_COMPLETED = common.FIRST_COMPLETED
M.FIRST_EXCEPTION = common.FIRST_EXCEPTION
M.ALL_COMPLETED = common.ALL_COMPLETED

local function check_futures(fs, fname)
  if type(fs) ~= "table" then
    type_error(1, fname, "table", fs, 3)
  end
  for i = 1, #fs do
    if not is_future(fs[i]) then
      arg_error(1, fname, "element " .. i .. " is not a Future", 3)
    end
  end
end

local WAIT_OPTIONS = {timeout = true, return_when = true}

local completion_ops = {done = is_done, failed = failed, listen = add_waiter, unlisten = remove_waiter}

--- Waits until return_when holds (ALL_COMPLETED by default) or timeout
-- passes; returns two sets (tables keyed by future): done and not_done. A
-- timeout of 0 or less does not wait (tulua._common.wait says why).
function M.wait(fs, opts)
  check_futures(fs, "wait")
  if opts ~= nil and type(opts) ~= "table" then
    type_error(2, "wait", "table", opts)
  end
  opts = opts or {}
  check_options(opts, WAIT_OPTIONS, 2, "wait")
  local timeout = check_timeout(opts.timeout, 2, "wait")
  local when = check_return_when(opts.return_when, 2, "wait")
  local done, not_done = common.wait(fs, completion_ops, timeout, when, "wait")
  return done, not_done
end

--- Iterates over the futures as they finish (for f in as_completed(fs)),
-- each once; raises TimeoutError from the iterator once timeout seconds
-- have passed since the call.
function M.as_completed(fs, timeout)
  check_futures(fs, "as_completed")
  check_timeout(timeout, 2, "as_completed")
  return common.as_completed(fs, completion_ops, timeout, "as_completed", function(left, total)
    return M.TimeoutError(("%d (of %d) futures unfinished"):format(left, total))
  end)
end

-- ---- executors ----

local Executor = {}
Executor.__index = Executor
Executor.__name = "concurrent.futures.Executor"
-- check_self's mark of the class (an executor's own _kind names its pool)
Executor._kind = "concurrent.futures.Executor"

-- The live executors, for `tulua --ps` (weak: the list keeps none alive).
local executors = setmetatable({}, {__mode = "k"})
local executor_seq = 0

--- Returns the executors not yet collected, oldest first (internal: for
-- tulua._ps).
function M._executors()
  local list = {}
  for ex in pairs(executors) do list[#list + 1] = ex end
  table.sort(list, function(a, b) return executors[a] < executors[b] end)
  return list
end

local function new_executor(kind, max_workers, backend_new, opts)
  local core = future.core()
  -- submit in the instance: each call then skips the lookup through the
  -- class's __index (W4's submit: 0.284 -> 0.270 us)
  local ex = setmetatable({_kind = kind, _max_workers = max_workers, _core = core,
    submit = Executor.submit}, Executor)
  -- the backend delivers to the core, which keeps the executor only while
  -- jobs are in flight: an idle executor is collected and shut down
  local backend = backend_new(max_workers, opts, core)
  core:set_backend(backend)
  ex._backend = backend
  executor_seq = executor_seq + 1
  executors[ex] = executor_seq
  return ex
end

--- Returns the jobs in flight: {seq=, state=, worker=} (worker: "thread
-- worker 2", "process 4123", while one runs the job), for tulua --ps.
function Executor:_jobs()
  local jobs = self._core:jobs()
  local b = self._backend
  for _, j in ipairs(jobs) do
    if b and b.worker_of then
      j.worker = b:worker_of(j.id)
      if j.worker then j.state = "running" end
    end
  end
  return jobs
end

function Executor:__tostring()
  return ("<%s max_workers=%d%s>"):format(self._kind, self._max_workers,
    self._shutdown and " shut down" or "")
end

-- Nothing is in flight: wake shutdown(true), or end the workers of an
-- executor shut down without waiting.
function Executor:_idle()
  local wake = self._wake_closer
  if wake then wake() end
  if self._shutdown then self:_close_backend() end
end

function Executor:_close_backend()
  local b = self._backend
  if b then
    self._backend = nil
    b:close()
  end
end

--- Submits fn(...) to run in a worker; returns a Future. fn and its
-- arguments are copied to the worker now: a value that cannot cross is an
-- error here, naming its path ("argument #2.log: cannot transfer a userdata").
Executor.submit = future.submit

-- The iterables of map, zipped: a function that returns the next tuple
-- (packed) or nil at the end of the shortest.
local function zip(fname, n, ...)
  local its = {}
  for i = 1, n do
    local it = select(i, ...)
    if type(it) == "table" then
      local k, t = 0, it
      its[i] = function() k = k + 1; if k <= #t then return true, t[k] end end
    elseif type(it) == "function" then
      its[i] = function()
        local v = it()
        if v ~= nil then return true, v end
      end
    else
      type_error(i + 1, fname, "table or iterator function", it, 3)
    end
  end
  if n == 1 then
    local it = its[1]
    return function()
      local more, v = it()
      if more then return true, v end
    end
  end
  return function()
    local t = {n = n}
    for i = 1, n do
      local more, v = its[i]()
      if not more then return nil end
      t[i] = v
    end
    return true, t
  end
end

-- map's last argument is its options when it is a plain table with no [1]
-- (an iterable has items, an object has a metatable): so a misspelt
-- option is an error rather than an empty iterable
local function is_options(x)
  return type(x) == "table" and getmetatable(x) == nil and x[1] == nil
end

local MAP_OPTIONS = {timeout = true, chunksize = true, buffersize = true}

-- Runs a chunk of map's items in the worker: the first result of each.
local function run_chunk(fn, multi, items)
  local out = {n = #items}
  if multi then
    for i = 1, #items do
      local t = items[i]
      out[i] = fn(table.unpack(t, 1, t.n))
    end
  else
    for i = 1, #items do out[i] = fn(items[i]) end
  end
  return out
end

local function run_one(fn, multi, item)
  if multi then return (fn(table.unpack(item, 1, item.n))) end
  return (fn(item))
end

--- Maps fn over the iterables (tables or iterator functions, zipped and
-- stopped at the shortest) in the workers; returns an iterator of the
-- results in order (the first value fn returns for each item; a nil result
-- ends a for loop, as with any Lua iterator). Lazy and bounded: at most
-- buffersize jobs (default the larger of 64 and twice max_workers) are in flight. Options (a
-- last table argument): timeout (seconds from this call), chunksize (items
-- per job), buffersize. A job's error is raised by the iterator when its
-- turn comes; breaking out of the loop cancels the jobs still in flight.
function Executor:map(fn, ...)
  check_self(self, "concurrent.futures.Executor", "map")
  if type(fn) ~= "function" then
    type_error(1, "map", "function", fn)
  end
  local n = select("#", ...)
  local opts = {}
  if n >= 2 and is_options((select(n, ...))) then
    opts = select(n, ...)
    n = n - 1
  end
  if n == 0 then arg_error(2, "map", "at least one iterable expected") end
  check_options(opts, MAP_OPTIONS, n + 2, "map")
  local timeout = check_timeout(opts.timeout, n + 2, "map")
  local chunksize = check_count(opts.chunksize or 1, MAX_COUNT, n + 2, "map", "chunksize")
  local window = check_count(opts.buffersize or math.max(2 * self._max_workers, 64), MAX_COUNT,
    n + 2, "map", "buffersize")
  local multi = n > 1
  local nextitem = zip("map", n, ...)
  local array = n == 1 and type((...)) == "table" and ... or nil
  local pos = 1
  local deadline = timeout and now() + timeout
  local fs, head, tail = {}, 1, 0 -- jobs in flight, in order
  local exhausted = false
  local chunk_out, chunk_i = nil, 0
  -- the executors' own submit encodes the job before it returns, so one
  -- table can carry every slice: a chunk then leaves no table of its own
  -- to the collector (a first map grew the heap by megabytes of them)
  local reuse = array ~= nil and chunksize > 1 and self.submit == Executor.submit
  local slice, slice_n = reuse and {} or nil, 0
  local function fill()
    while not exhausted and tail - head + 1 < window do
      if chunksize == 1 then
        local more, item = nextitem()
        if not more then exhausted = true; break end
        tail = tail + 1
        fs[tail] = self:submit(run_one, fn, multi, item)
      else
        local items
        if array then -- a slice, without a call per item
          -- #array - pos: pos + chunksize could pass maxinteger
          local last = #array - pos < chunksize and #array or pos + chunksize - 1
          if reuse then
            items = slice
            table.move(array, pos, last, 1, items)
            for i = last - pos + 2, slice_n do items[i] = nil end
            slice_n = last - pos + 1
          else
            items = table.move(array, pos, last, 1, {})
          end
          pos = last + 1
          if pos > #array then exhausted = true end
        else
          items = {}
          for i = 1, chunksize do
            local more, item = nextitem()
            if not more then exhausted = true; break end
            items[i] = item
          end
        end
        if #items == 0 then break end
        tail = tail + 1
        fs[tail] = self:submit(run_chunk, fn, multi, items)
      end
    end
  end
  local function cancel_rest()
    for i = head, tail do
      if fs[i] then fs[i]:cancel(); fs[i] = nil end
    end
    head = tail + 1
    exhausted = true
  end
  fill()
  local function iter()
    if chunk_out then
      chunk_i = chunk_i + 1
      if chunk_i <= chunk_out.n then return chunk_out[chunk_i] end
      chunk_out = nil
    end
    if head > tail then return nil end
    local f = fs[head]
    if not wait_done(f, deadline and deadline - now(), "map") then
      cancel_rest()
      error(M.TimeoutError(), 2)
    end
    fs[head] = nil
    head = head + 1
    local ok, r = pcall(f.result, f)
    if not ok then cancel_rest(); error(r, 0) end
    fill()
    if chunksize == 1 then return r end
    chunk_out, chunk_i = r, 1
    if r.n >= 1 then return r[1] end
    chunk_out = nil
    return iter()
  end
  return iter, nil, nil, setmetatable({}, {__close = cancel_rest})
end

--- Stops taking work. With wait (default true) waits in the current task
-- until every submitted job has ended and the workers are gone; with
-- cancel_futures, cancels the jobs that have not started.
function Executor:shutdown(wait, cancel_futures)
  check_self(self, "concurrent.futures.Executor", "shutdown")
  if wait == nil then wait = true end
  local core = self._core
  if not self._shutdown then
    self._shutdown = true
    core:shutdown()
    local b = self._backend
    if b then
      local removed = b:shutdown(cancel_futures and true or false)
      for i = 1, #removed do
        local f = core:forget(removed[i])
        if f then settle_cancelled(f) end
      end
    end
  end
  if core:inflight() == 0 then
    self:_close_backend()
  elseif wait then
    local me = need_task("shutdown")
    local park_me, wake = new_waker("shutdown")
    self._wake_closer = wake
    while core:inflight() > 0 do
      local ok, err = park_me(me)
      if not ok then
        if self._wake_closer == wake then self._wake_closer = nil end
        error(err, 0)
      end
    end
    if self._wake_closer == wake then self._wake_closer = nil end
    self:_close_backend()
  end
end

Executor.__close = function(self) self:shutdown(true) end

--- Returns the jobs that ended (the most recent 4096), in submission
-- order: {index=, worker=, start=, finish=, status=} with times in seconds
-- since the executor was created, status "done", "failed" or "cancelled".
-- With opts, draws them instead: opts.format "svg" returns
-- concurrent.timeline.svg's picture, "text" render's, and the other keys
-- of opts go to that function (width, workers, now, title).
function Executor:timeline(opts)
  check_self(self, "concurrent.futures.Executor", "timeline")
  local records = self._core:timeline()
  if opts == nil then return records end
  if type(opts) ~= "table" then type_error(2, "timeline", "table", opts) end
  local draw_opts, fmt = {}, opts.format
  for k, v in pairs(opts) do if k ~= "format" then draw_opts[k] = v end end
  if draw_opts.workers == nil then draw_opts.workers = self._max_workers end
  local timeline = require("concurrent.timeline")
  if fmt == "svg" then return timeline.svg(records, draw_opts) end
  if fmt == "text" then return timeline.render(records, draw_opts) end
  arg_error(2, "timeline", "field 'format' must be \"svg\" or \"text\"")
end

--- The number of workers.
function Executor:max_workers()
  check_self(self, "concurrent.futures.Executor", "max_workers")
  return self._max_workers
end

-- ---- the pools ----

--- The CPUs of the system (Python's os.cpu_count()).
M.cpu_count = thread_pool.cpu_count

--- The CPUs this process may use (Python's os.process_cpu_count()).
M.process_cpu_count = thread_pool.process_cpu_count

local function check_workers(n, fname, default)
  if n == nil then return math.min(default, MAX_WORKERS) end
  return check_count(n, MAX_WORKERS, 1, fname, "max_workers", 3)
end

local POOL_OPTIONS = {
  ThreadPoolExecutor = {initializer = true, initargs = true, thread_name_prefix = true},
  ProcessPoolExecutor = {initializer = true, initargs = true, max_tasks_per_child = true, executable = true},
  MPIPoolExecutor = {initializer = true, initargs = true, env = true, wdir = true, path = true,
    hosts = true, hostfile = true, heartbeat = true},
}

local function check_opts(opts, fname)
  if opts == nil then return {} end
  if type(opts) ~= "table" then
    type_error(2, fname, "table", opts, 3)
  end
  check_options(opts, POOL_OPTIONS[fname], 2, fname, 3)
  if opts.initializer ~= nil and type(opts.initializer) ~= "function" then
    arg_error(2, fname, "initializer must be a function", 3)
  end
  if opts.initargs ~= nil and type(opts.initargs) ~= "table" then
    arg_error(2, fname, "initargs must be a table", 3)
  end
  return opts
end

--- Creates a pool of max_workers threads (default min(32, CPUs + 4)), each
-- running its own tulua runtime. opts: initializer, initargs (a table),
-- thread_name_prefix.
function M.ThreadPoolExecutor(max_workers, opts)
  max_workers = check_workers(max_workers, "ThreadPoolExecutor",
    math.min(32, M.process_cpu_count() + 4))
  opts = check_opts(opts, "ThreadPoolExecutor")
  local ok, ex = pcall(new_executor, "ThreadPoolExecutor", max_workers, thread_pool.new, opts)
  if not ok then error(ex, 2) end
  return ex
end

--- Creates a pool of max_workers tulua processes (default: the CPUs this
-- process may use). opts: initializer, initargs, max_tasks_per_child.
function M.ProcessPoolExecutor(max_workers, opts)
  max_workers = check_workers(max_workers, "ProcessPoolExecutor", M.process_cpu_count())
  opts = check_opts(opts, "ProcessPoolExecutor")
  if opts.max_tasks_per_child ~= nil then
    check_count(opts.max_tasks_per_child, MAX_COUNT, 2, "ProcessPoolExecutor", "max_tasks_per_child")
  end
  local backend = require("concurrent._process_pool").new
  local ok, ex = pcall(new_executor, "ProcessPoolExecutor", max_workers, backend, opts)
  if not ok then error(ex, 2) end
  return ex
end

-- A string, or a table of strings (MPIPoolExecutor's path and hosts).
local function is_strings(v)
  if type(v) == "string" then return true end
  if type(v) ~= "table" then return false end
  for i = 1, #v do
    if type(v[i]) ~= "string" then return false end
  end
  return true
end

local function check_mpi_opts(opts, static)
  local fname = "MPIPoolExecutor"
  if opts.env ~= nil then
    if type(opts.env) ~= "table" then arg_error(2, fname, "env must be a table", 3) end
    for k, v in pairs(opts.env) do
      if type(k) ~= "string" or type(v) ~= "string" then
        arg_error(2, fname, "env must map strings to strings", 3)
      end
    end
  end
  if opts.wdir ~= nil and type(opts.wdir) ~= "string" then
    arg_error(2, fname, "wdir must be a string", 3)
  end
  if opts.path ~= nil and not is_strings(opts.path) then
    arg_error(2, fname, "path must be a string or a table of strings", 3)
  end
  if opts.hosts ~= nil and not is_strings(opts.hosts) then
    arg_error(2, fname, "hosts must be a string or a table of strings", 3)
  end
  if opts.hostfile ~= nil and type(opts.hostfile) ~= "string" then
    arg_error(2, fname, "hostfile must be a string", 3)
  end
  local hb = opts.heartbeat
  if hb ~= nil and (type(hb) ~= "number" or not (hb > 0 and hb < math.huge)) then
    arg_error(2, fname, "heartbeat must be a positive number of seconds", 3)
  end
  if static and (opts.hosts ~= nil or opts.hostfile ~= nil) then
    arg_error(2, fname, "hosts and hostfile are for spawned workers, not the ranks of mpiexec", 3)
  end
end

--- Creates a pool of max_workers MPI ranks (documented in
-- lua/concurrent/futures.md): spawned with MPI_Comm_spawn, or the ranks
-- 1..N-1 of `mpiexec -n N tulua -l concurrent.futures.mpi script.lua`
-- (default: those, else the CPUs this process may use). opts:
-- initializer, initargs, env, wdir, path, hosts, hostfile, heartbeat. MPI is loaded
-- here, at the first call, never by requiring this module.
function M.MPIPoolExecutor(max_workers, opts)
  opts = check_opts(opts, "MPIPoolExecutor")
  local ok, mpi_pool = pcall(require, "concurrent._mpi_pool")
  if not ok then error(mpi_pool, 2) end
  check_mpi_opts(opts, mpi_pool.is_static())
  max_workers = check_workers(max_workers, "MPIPoolExecutor",
    mpi_pool.default_workers(M.process_cpu_count()))
  local ex
  ok, ex = pcall(new_executor, "MPIPoolExecutor", max_workers, mpi_pool.new, opts)
  if not ok then error(ex, 2) end
  return ex
end

M.Executor = Executor

return M
