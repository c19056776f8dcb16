--- concurrent._process_pool: the process backend of concurrent.futures
-- (futures.ProcessPoolExecutor), over the transport of
-- bindings/process_pool.c. Each worker is a tulua process running the job
-- runner of concurrent._worker; jobs and replies cross its channel as
-- tulua.transfer buffers. See the backend interface at the top of
-- lua/concurrent/futures.lua.
--
-- Dispatch. Jobs wait in the parent's queue, in order. A worker gets one
-- when it is idle; a new worker starts (up to max_workers) when none is;
-- and a busy worker may hold more than the job it runs, up to a window
-- that adapts: 1 at first, doubled (up to WINDOW_MAX) by every job that
-- ran in under FAST seconds, back to 1 after a slower one; and nothing is
-- sent ahead to a worker that has not answered for FAST seconds (it may
-- run a long job) or whose window holds WINDOW_BYTES of encoded jobs. So
-- many small jobs stream to the workers without a round trip each, while
-- long ones do not queue behind each other on one worker when another is
-- free (only those sent in the same burst can, and no more than a worker's
-- share of the jobs outstanding). The
-- frames queued during a loop turn leave in one write per worker.
--
-- A worker's jobs are numbered per worker (1 to 2^31 - 1, the value of
-- the signal that interrupts one) and answered in order: the oldest job
-- of its window is the one it runs, the others have not started. Cancel
-- sends a frame (the worker skips a job it has not started) and, to the
-- job that runs, cancel_process's signal.
--
-- Crashes. A worker that dies fails the job it was running ("crashed",
-- naming its exit status or signal); the jobs queued behind it had not
-- started and go back to the front of the queue; a new worker takes its
-- place when there is work. The pool is broken (as Python's) only when
-- the initializer fails, or when workers cannot be started (or keep dying
-- before they are ready).
--
-- Transports. The dispatch above is the same for every kind of worker
-- process; what starts a worker, moves the frames and stops a job is a
-- transport's: this file's own (local processes over socket pairs) or
-- MPI's (lua/concurrent/_mpi_pool.lua, ranks over Open MPI), given to
-- M.new as a table:
--   tr.start(pool, slot, on_event) -> link, pid | nil, err: a worker for
--     the slot, whose link has the methods of process_pool.c's Link
--   tr.interrupt(pool, w, wid): stops job wid, which w runs
--   tr.died(pool, w, how) -> nil | message: a worker that died; a message
--     breaks the pool (MPI cannot start a rank again)
--   tr.failed(w, err, tb) -> err, tb: a failed job's error, as delivered
--   tr.extra: a value sent to each worker with its package paths
--
-- Lifetime. While jobs are outstanding the pool is anchored (the table
-- busy) and the workers that have jobs keep the loop alive; an idle pool
-- keeps nothing alive, and when collected (or at the end of the program)
-- its __gc ends the workers. close() closes every channel, so idle
-- workers end at once and running jobs are interrupted, then waits for the
-- processes (SIGKILL after GRACE seconds), leaving no zombie.
local tulua = require "tulua"
local C = require "tulua._process_pool"
local trace = require "tulua._trace"
local transfer = require "tulua.transfer"

local encode = transfer.encode
local cancel_process = C.cancel_process
local now = tulua.now
local trace_on = trace.on
local pcall, error, setmetatable, pairs, next, select, tostring =
  pcall, error, setmetatable, pairs, next, select, tostring

local M = {}

local FAST = 0.001 -- seconds: a job this short lets its worker's window grow
local WINDOW_MAX = 64 -- jobs sent to one worker ahead of their turn
local WINDOW_BYTES = 1 << 20 -- encoded bytes beyond which none is sent ahead
local GRACE = 2 -- seconds a closed worker has to end before SIGKILL
local RESEND = 0.05 -- seconds between the signals to a job being cancelled
local JOB_MAX = 0x7fffffff -- worker job numbers are 1 to JOB_MAX
local START_FAILURES = 3 -- workers in a row that die before they are ready
-- (not killed by SIGKILL) break the pool

-- The code a worker process runs: tulua -E -e CODE, its channel on fd 3.
-- -E: LUA_INIT does not run in every worker, and the package paths come
-- from the parent (its current ones) rather than from the environment.
local WORKER_CODE = "require('concurrent._process_pool').worker_main(3)"

-- link -> worker, for the events of the transport; weak, so that a pool
-- nobody refers to is collected (its links live until their child ends)
local owners = setmetatable({}, {__mode = "kv"})

-- pool -> true while it has jobs outstanding: it must finish them
local busy = {}

local function report(err)
  tulua._report("tulua: process pool: " .. tostring(err))
end

local Pool = {}
Pool.__index = Pool

-- ---- bookkeeping ----

local function add_outstanding(pool, n)
  local after = pool.outstanding + n
  pool.outstanding = after
  if after == 0 then
    busy[pool] = nil
  elseif not busy[pool] then
    busy[pool] = true
  end
end

local function deliver(pool, ...)
  local ok, err = pcall(pool.core.deliver, pool.core, ...)
  if not ok then report(err) end
end

-- Whether the child of w may be signalled: it handles the signal (before
-- it says so, the signal would kill it) and it has not been reaped (its
-- pid is not someone else's).
local function signalable(w)
  return w.ready and not w.gone and w.link:alive()
end

local function stop_resender(pool)
  if pool.resender and next(pool.cancels) == nil then
    pool.resender:close()
    pool.resender = nil
  end
end

-- Takes the oldest job off w's window; returns its id and payload.
local function pop_window(pool, w)
  local h = w.fh
  local id, payload = w.fid[h], w.fbuf[h]
  w.fid[h], w.fwid[h], w.fbuf[h] = nil, nil, nil
  w.n = w.n - 1
  w.bytes = w.bytes - #payload
  if w.n == 0 then
    w.fh, w.ft = 1, 0
    w.link:ref(false)
  else
    w.fh = h + 1
  end
  pool.where[id] = nil
  if pool.cancels[id] then
    pool.cancels[id] = nil
    stop_resender(pool)
  end
  return id, payload
end

-- Puts a job back at the front of the queue (it never started).
local function requeue_front(pool, id, payload)
  local h = pool.qh - 1
  pool.qh = h
  pool.q[h], pool.qid[h] = payload, id
  pool.qpos[id] = h
  pool.nqueued = pool.nqueued + 1
end

-- Empties the queue; returns the ids of the jobs that were in it.
local function take_queue(pool)
  local q, qid, qpos = pool.q, pool.qid, pool.qpos
  local ids = {}
  for h = pool.qh, pool.qt do
    local id = qid[h]
    if id then
      ids[#ids + 1] = id
      qpos[id] = nil
    end
    q[h], qid[h] = nil, nil
  end
  pool.qh, pool.qt, pool.nqueued = 1, 0, 0
  return ids
end

-- Fails every queued job with the pool's failure.
local function fail_queue(pool)
  local ids = take_queue(pool)
  local t = now()
  for i = 1, #ids do
    add_outstanding(pool, -1)
    deliver(pool, ids[i], "broken", 0, t, t, pool.broken)
  end
end

local function break_pool(pool, msg)
  if pool.broken then return end
  pool.broken = msg
  fail_queue(pool)
end

-- ---- workers ----

local on_event

local function start_worker(pool, slot)
  local link, pid = pool.tr.start(pool, slot, on_event)
  if not link then return nil, pid end
  link:send("P", 0, encode(package.path, package.cpath, pool.tr.extra))
  link:send("I", 0, pool.init)
  local w = {
    pool = pool, link = link, pid = pid, index = slot,
    fid = {}, fwid = {}, fbuf = {}, fh = 1, ft = 0, -- the window, oldest first
    n = 0, bytes = 0, win = 1, heard = 0, next_wid = 0, taken = 0, retiring = false, gone = false, ready = false,
  }
  owners[link] = w
  pool.slots[slot] = w
  pool.nslots = pool.nslots + 1
  if slot > pool.high then pool.high = slot end
  return w
end

-- The worker leaves its slot (it died, broke, or retires); its process is
-- reaped by libuv, or by close().
local function leave(pool, w)
  if w.gone then return end
  w.gone = true
  pool.slots[w.index] = nil
  pool.nslots = pool.nslots - 1
  pool.exiting[w.link] = w -- until it has exited
end

-- A worker that reached max_tasks_per_child ends once its jobs are done.
local function retire(pool, w)
  leave(pool, w)
  w.link:close()
end

-- Picks the worker for the next job: an idle one, else a new one (in the
-- lowest free slot), else the least loaded one with room in its window.
-- nil, and the reason when no worker could start, if none. The loop goes
-- up to the highest slot ever taken, never to max_workers: a pool that
-- may have many workers costs only those it started.
local function pick(pool)
  local best, free_slot, t
  local slots, high = pool.slots, pool.high
  -- no worker holds more than its share of the jobs outstanding: a burst of
  -- a few long jobs, sent to a worker whose window small jobs had widened,
  -- would queue there behind each other while another worker idles
  local share = (pool.outstanding + pool.max - 1) // pool.max
  if high < pool.max then free_slot = high + 1 end
  for k = 1, high do
    local w = slots[k]
    if w == nil then
      if free_slot == nil or k < free_slot then free_slot = k end
    elseif not w.retiring then
      local n = w.n
      if n == 0 then return w end
      if n < w.win and n < share and w.bytes < WINDOW_BYTES and (best == nil or n < best.n) then
        -- a worker silent for FAST may have started a long job: none ahead
        t = t or now()
        if t - w.heard < pool.fast then best = w end
      end
    end
  end
  if free_slot then
    local w, err = start_worker(pool, free_slot)
    if w then return w end
    if best == nil and pool.nslots == 0 then return nil, err end
  end
  return best
end

local function send(pool, w, id, payload)
  local wid = w.next_wid % JOB_MAX + 1
  w.next_wid = wid
  local t = w.ft + 1
  w.ft = t
  w.fid[t], w.fwid[t], w.fbuf[t] = id, wid, payload
  local n = w.n + 1
  w.n = n
  w.bytes = w.bytes + #payload
  if n == 1 then
    w.link:ref(true)
    w.heard = now()
  end
  local taken = w.taken + 1
  w.taken = taken
  if pool.mtpc and taken >= pool.mtpc then w.retiring = true end
  pool.where[id] = w
  -- an idle worker gets its job at once, the others at the end of the turn
  w.link:send("J", wid, payload, n == 1)
end

-- Hands queued jobs to workers while some can take them.
local function dispatch(pool)
  if pool.closed or pool.broken then return end
  local q, qid, qpos = pool.q, pool.qid, pool.qpos
  local h, t = pool.qh, pool.qt
  local failure
  while h <= t do
    local id = qid[h]
    if id then
      local w, err = pick(pool)
      if not w then
        failure = err
        break
      end
      local payload = q[h]
      q[h], qid[h], qpos[id] = nil, nil, nil
      pool.nqueued = pool.nqueued - 1
      send(pool, w, id, payload)
    else -- removed by cancel
      q[h], qid[h] = nil, nil
    end
    h = h + 1
  end
  if h > t then h, pool.qt = 1, 0 end
  pool.qh = h
  if failure then break_pool(pool, "cannot start a worker process: " .. tostring(failure)) end
end

-- ---- events of a worker ----

local function on_reply(pool, w, wid, status, t0, t1, ...)
  if w.n == 0 or w.fwid[w.fh] ~= wid then -- not what it was asked
    w.link:reap(0)
    return
  end
  local id, payload = pop_window(pool, w)
  if trace_on() then
    -- the worker's clock is the loop's (CLOCK_MONOTONIC): its own track
    trace.job(pool.tr.trace_kind or "process", pool.trace_no, w.index, w.pid or 0, id, status, t0, t1,
      #payload, w.link:received())
  end
  w.heard = now()
  if t1 - t0 < pool.fast then
    if w.win < WINDOW_MAX then w.win = w.win * 2 end
  else
    w.win = 1
  end
  if w.retiring and w.n == 0 then retire(pool, w) end
  add_outstanding(pool, -1)
  if status == "error" and pool.tr.failed then
    deliver(pool, id, status, w.index, t0, t1, pool.tr.failed(w, ...))
  else
    deliver(pool, id, status, w.index, t0, t1, ...)
  end
end

-- The initializer failed in w: the pool is broken, and so are the jobs w
-- was given (it runs none).
local function on_broken(pool, w, t, msg)
  leave(pool, w)
  break_pool(pool, msg)
  while w.n > 0 do
    local id = pop_window(pool, w)
    add_outstanding(pool, -1)
    deliver(pool, id, "broken", w.index, t, t, msg)
  end
end

-- w's process ended without being asked to: the job it ran fails; those
-- behind it had not started and go back to the queue (or, if they were
-- being cancelled, end so). A worker that dies before it is ready ran no
-- job: all go back; but if workers keep dying as they start (by
-- themselves: an initializer that exits, a broken executable), the pool
-- is broken.
local function on_exit(pool, w)
  leave(pool, w)
  local _, sig, how = w.link:status()
  local fatal = pool.tr.died and pool.tr.died(pool, w, how)
  if fatal then break_pool(pool, fatal) end
  if not w.ready and sig ~= 9 then -- SIGKILL comes from outside (OOM, a user)
    pool.start_failures = pool.start_failures + 1
    if pool.start_failures >= START_FAILURES then
      break_pool(pool, ("worker processes die as they start (worker process %d: %s)")
        :format(w.pid, how))
    end
  end
  if w.n == 0 then return end
  local id
  if w.ready then id = pop_window(pool, w) end
  local back, cancelled = {}, {}
  while w.n > 0 do
    local was_cancelled = pool.cancels[w.fid[w.fh]]
    local rid, payload = pop_window(pool, w)
    if was_cancelled then
      cancelled[#cancelled + 1] = rid
    else
      back[#back + 1] = rid
      back[#back + 1] = payload
    end
  end
  local t = now()
  if pool.broken then
    for i = 1, #back, 2 do
      add_outstanding(pool, -1)
      deliver(pool, back[i], "broken", w.index, t, t, pool.broken)
    end
  else
    for i = #back - 1, 1, -2 do requeue_front(pool, back[i], back[i + 1]) end
  end
  if id then
    add_outstanding(pool, -1)
    if fatal then
      deliver(pool, id, "broken", w.index, t, t, fatal)
    else
      deliver(pool, id, "crashed", w.index, t, t,
        ("worker process %d died (%s) while running this job"):format(w.pid, how))
    end
  end
  for i = 1, #cancelled do
    add_outstanding(pool, -1)
    deliver(pool, cancelled[i], "cancelled", w.index, t, t)
  end
end

local function on_frame(pool, w, wid, status, ...)
  if wid == nil then return false end
  if w.gone then return true end -- a worker that broke: nothing more counts
  if status == "ready" then
    w.ready = true
    pool.start_failures = 0
    local id = w.fid[w.fh]
    if id and pool.cancels[id] then pool.tr.interrupt(pool, w, w.fwid[w.fh]) end
  elseif status == "broken" then
    on_broken(pool, w, (...), select(3, ...))
  else
    on_reply(pool, w, wid, status, ...)
  end
  return true
end

-- The transport's handler: frames came from link's worker, or it exited.
function on_event(link)
  local w = owners[link]
  if w == nil then return end
  local pool = w.pool
  if pool.closed then return end
  while not pool.closed and on_frame(pool, w, link:recv()) do end
  if pool.closed then return end
  if link:status() ~= nil then
    if not w.gone then on_exit(pool, w) end
    pool.exiting[link] = nil
  end
  dispatch(pool)
end

-- ---- the backend interface ----

--- Encodes fn and its arguments (raising with the path of a value that
-- cannot cross) and queues the job.
function Pool:submit(id, fn, ...)
  if self.closed then error("attempt to use a closed process pool", 0) end
  if self.stopping then error("cannot schedule new futures after shutdown", 0) end
  if self.broken then error("the pool is broken: " .. self.broken, 0) end
  local payload = encode(fn, ...)
  local t = self.qt + 1
  self.qt = t
  self.q[t], self.qid[t] = payload, id
  self.qpos[id] = t
  self.nqueued = self.nqueued + 1
  add_outstanding(self, 1)
  if trace_on() then trace.submit(self.trace_no, id, #payload) end
  -- jobs queued before this one wait for a worker already
  if self.nqueued == 1 then dispatch(self) end
end

--- Returns "process <pid>" of the worker running job id, or nil (for
-- `tulua --ps`).
function Pool:worker_of(id)
  local w = self.where[id]
  if w and w.fid[w.fh] == id then return "process " .. w.pid end
  return nil
end

--- Returns "pending", "running" or "finished".
function Pool:state(id)
  if self.qpos[id] then return "pending" end
  local w = self.where[id]
  if w == nil then return "finished" end
  if w.fid[w.fh] == id then return "running" end
  return "pending"
end

local function resend(pool)
  if pool.closed then return end
  for id in pairs(pool.cancels) do
    local w = pool.where[id]
    if w and w.fid[w.fh] == id then pool.tr.interrupt(pool, w, w.fwid[w.fh]) end
  end
end

--- Cancels a job: "removed" if it was queued here (it is not delivered),
-- "running" if a worker has it (it is interrupted if it runs, skipped if
-- not; deliver tells how it ended), false if it is not known.
function Pool:cancel(id)
  local h = self.qpos[id]
  if h then
    self.qid[h], self.q[h], self.qpos[id] = false, nil, nil
    self.nqueued = self.nqueued - 1
    add_outstanding(self, -1)
    return "removed"
  end
  local w = self.where[id]
  if w == nil then return false end
  local k = w.fh
  while w.fid[k] ~= id do k = k + 1 end
  local wid = w.fwid[k]
  -- The worker skips a job whose cancel frame it has read before the job
  -- starts, and the signal stops the job that runs. But the signal may
  -- come just before the job starts (and be ignored), after the worker's
  -- last look at the channel: so it is sent again, while the job is the
  -- one its worker runs, until the job ends.
  w.link:send("C", wid)
  if k == w.fh then self.tr.interrupt(self, w, wid) end
  self.cancels[id] = true
  if not self.resender then
    self.resender = require("tulua.timer").every(RESEND, resend, self)
  end
  return "running"
end

--- Takes no more jobs; with cancel, removes the queued ones (returning
-- their ids) and asks the workers to skip those they have not started.
function Pool:shutdown(cancel)
  self.stopping = true
  local removed = {}
  if cancel and not self.closed then
    removed = take_queue(self)
    add_outstanding(self, -#removed)
    for k = 1, self.high do
      local w = self.slots[k]
      if w then
        for i = w.fh + 1, w.ft do w.link:send("C", w.fwid[i]) end
      end
    end
  end
  return removed
end

--- Ends the workers: their channels close, so idle ones end at once and
-- running jobs are interrupted; waits for the processes (up to GRACE
-- seconds each, then SIGKILL). Nothing is delivered any more.
function Pool:close()
  if self.closed then return end
  self.closed = true
  busy[self] = nil
  if self.resender then
    self.resender:close()
    self.resender = nil
  end
  local links = {}
  for k = 1, self.high do
    local w = self.slots[k]
    if w then
      if w.n > 0 then self.tr.interrupt(self, w, w.fwid[w.fh]) end
      w.link:close()
      links[#links + 1] = w.link
      self.slots[k] = nil
    end
  end
  for link in pairs(self.exiting) do links[#links + 1] = link end
  self.exiting, self.nslots = {}, 0
  for i = 1, #links do links[i]:reap(GRACE) end
end

Pool.__gc = Pool.close

-- The transport of local worker processes.
local processes = {
  start = function(pool, _, handler) return C.spawn(pool.file, pool.argv, handler) end,
  interrupt = function(_, w, wid)
    if signalable(w) then cancel_process(w.pid, wid) end
  end,
}

--- Creates the backend of a ProcessPoolExecutor(max_workers, opts) that
-- delivers each job to the executor's core: core:deliver(id, status,
-- worker, started, finished, ...) (see futures.lua). opts: initializer, initargs, max_tasks_per_child,
-- executable (the tulua binary workers run; default: this one). Raises if
-- the initializer or its arguments cannot cross. tr: another transport
-- (see the top of this file), which ignores executable.
function M.new(max_workers, opts, core, tr)
  local init = ""
  if opts.initializer ~= nil then
    local args = opts.initargs or {}
    init = encode(opts.initializer, table.unpack(args, 1, args.n or #args))
  end
  local file, name = opts.executable, opts.executable
  if file == nil and tr == nil then
    file, name = C.executable()
    if not file then error(name, 2) end
  end
  return setmetatable({
    max = max_workers, core = core, init = init, mtpc = opts.max_tasks_per_child,
    file = file, argv = {name, "-E", "-e", WORKER_CODE}, tr = tr or processes,
    trace_no = trace.pool_no(),
    slots = {}, nslots = 0, exiting = {},
    high = 0, -- the highest slot ever taken: loops over slots stop there
    -- the queue: payloads and ids from qh to qt (id false: cancelled),
    -- id -> index, and how many are live
    q = {}, qid = {}, qpos = {}, qh = 1, qt = 0, nqueued = 0,
    where = {}, -- id -> the worker that has the job
    cancels = {}, -- id -> true: a running job being interrupted
    outstanding = 0, stopping = false, closed = false, broken = nil, start_failures = 0,
    fast = FAST, -- a field, so that a spec can make "quick" independent of the machine's load
  }, Pool)
end

--- The handler of a transport's links: frames came from link's worker, or
-- it is gone.
M.on_event = function(link) return on_event(link) end

-- ---- the worker process ----

--- The main of a worker process: runs the jobs that come on descriptor fd
-- (concurrent._worker's loop over this module's port), then exits, as
-- Python's workers do, without waiting for anything a job left running.
function M.worker_main(fd)
  local port = C.port_open(fd)
  package.path, package.cpath = C.port.paths(port)
  require("concurrent._worker").serve(port, C.port)
  io.stdout:flush()
  os.exit(0)
end

return M
