--- concurrent.futures: Python's thread and process pools over tulua
-- (documented in lua/concurrent/futures.md). An executor runs functions in
-- workers, each with a Lua state of its own, so a thread pool runs Lua in
-- parallel. The machinery here (futures, ids, the timeline, map's window) is
-- the same for every kind of worker; a backend starts the workers and moves
-- the jobs:
--   backend:submit(id, fn, ...)   encodes (raising on what cannot cross), queues
--   backend:state(id)             "pending" | "running" | "finished"
--   backend:cancel(id)            "removed" (never delivered) | "running" | false
--   backend:shutdown(cancel)      no new jobs; returns the ids it removed
--   backend:close()               ends the workers (interrupting their jobs)
-- and calls deliver(id, status, worker, started, finished, ...) once for
-- every job it did not remove: status "ok" with the results, "error" with
-- the error and the worker's traceback, "cancelled", "broken" or "crashed"
-- with a message.
local tulua = require "tulua"
local thread_pool = require "tulua.thread_pool"

local park, unpark, now, new_error = tulua.park, tulua.unpark, tulua.now, tulua.new_error
local after = require("tulua.timer").after
local type, select, error, pcall, setmetatable, getmetatable, tostring =
  type, select, error, pcall, setmetatable, getmetatable, tostring
local unpack = table.unpack

local M = {}

local common = require "tulua.common"
local ERROR_MT, error_class, need_task, check_timeout =
  common.ERROR_MT, common.error_class, common.need_task, common.check_timeout

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

local PENDING, RUNNING, CANCELLED, FINISHED = "pending", "running", "cancelled", "finished"

local Future = {}
Future.__index = Future
Future.__name = "concurrent.futures.Future"

--- Creates a pending Future, for code that implements an executor.
function M.Future()
  return setmetatable({_state = PENDING}, Future)
end

local function is_future(x) return getmetatable(x) == Future end

local function report_callback_error(f, err)
  io.stderr:write("exception calling callback for ", tostring(f), ": ", tostring(err), "\n")
end

-- Ends f: wakes the tasks waiting on it and calls its done callbacks, in
-- the order they were added (as Python, at once; an error is reported on
-- stderr and the others still run).
local function settle(f, state)
  f._state = state
  local ws = f._waiters
  if ws then
    f._waiters = nil
    for i = 1, #ws do ws[i](f) end
  end
  local cbs = f._callbacks
  if cbs then
    f._callbacks = nil
    for i = 1, #cbs do
      local ok, err = pcall(cbs[i], f)
      if not ok then report_callback_error(f, err) end
    end
  end
end

-- Internal waiters are done callbacks that never fail and that a
-- cancelled wait can take back.
local function add_waiter(f, fn)
  local ws = f._waiters
  if ws then ws[#ws + 1] = fn else f._waiters = {fn} end
end

local function remove_waiter(f, fn)
  local ws = f._waiters
  if not ws then return end
  for i = #ws, 1, -1 do
    if ws[i] == fn then table.remove(ws, i); return end
  end
end

local function is_done(f)
  local s = f._state
  return s == FINISHED or s == CANCELLED
end

-- Parks the current task until f is done or the deadline passes; returns
-- whether f is done.
local function wait_done(f, timeout, name)
  if is_done(f) then return true end
  local me = need_task(name)
  if timeout and timeout <= 0 then return false end
  local waiting = true
  local function wake()
    if waiting then waiting = false; unpark(me) end
  end
  add_waiter(f, wake)
  local timer = timeout and after(timeout, wake)
  local ok, err = park()
  waiting = false
  if timer then timer:close() end
  if not is_done(f) then remove_waiter(f, wake) end
  if not ok then error(err, 0) end
  return is_done(f)
end

--- Returns whether the future was cancelled.
function Future:cancelled() return self._state == CANCELLED end

--- Returns whether the future is done (finished or cancelled).
function Future:done() return is_done(self) end

--- Returns whether a worker runs the future's job right now.
function Future:running()
  if self._state == PENDING and self._executor then
    local ex = self._executor
    if ex._backend and ex._backend:state(self._id) == "running" then return true end
  end
  return self._state == RUNNING
end

--- Returns the job's results, waiting up to timeout seconds (nil: no
-- limit) in the current task; raises the job's error, CancelledError, or
-- TimeoutError when the time is up.
function Future:result(timeout)
  if self._state ~= FINISHED then
    check_timeout(timeout, 1, "result")
    if not wait_done(self, timeout, "result") then error(M.TimeoutError(), 2) end
    if self._state == CANCELLED then error(M.CancelledError(), 2) end
  end
  if self._error ~= nil then error(self._error, 0) end
  local n = self._n
  if n == 1 then return self[1] end
  return unpack(self, 1, n)
end

--- Returns the job's error, or nil when it succeeded; waits as result().
function Future:exception(timeout)
  if not is_done(self) then
    check_timeout(timeout, 1, "exception")
    if not wait_done(self, timeout, "exception") then error(M.TimeoutError(), 2) end
  end
  if self._state == CANCELLED then error(M.CancelledError(), 2) end
  return self._error
end

--- Cancels the future: a queued job is dropped, and a running one is
-- interrupted (its to-be-closed variables are closed in the worker). Returns
-- false if the future is already finished.
function Future:cancel()
  local s = self._state
  if s == CANCELLED then return true end
  if s == FINISHED then return false end
  local ex = self._executor
  if ex and ex._backend and ex._backend:cancel(self._id) == "removed" then
    ex:_forget(self._id)
  end
  settle(self, CANCELLED)
  return true
end

--- Calls fn(future) once the future is done (at once if it is).
function Future:add_done_callback(fn)
  if type(fn) ~= "function" then
    error("bad argument #1 to 'add_done_callback' (function expected, got " .. type(fn) .. ")", 2)
  end
  if is_done(self) then
    local ok, err = pcall(fn, self)
    if not ok then report_callback_error(self, err) end
    return
  end
  local cbs = self._callbacks
  if cbs then cbs[#cbs + 1] = fn else self._callbacks = {fn} end
end

--- For executors: marks a pending future running; returns false if it was
-- cancelled (Python's set_running_or_notify_cancel).
function Future:set_running_or_notify_cancel()
  if self._state == CANCELLED then return false end
  if self._state ~= PENDING then
    error(M.InvalidStateError("the future is " .. self._state), 2)
  end
  self._state = RUNNING
  return true
end

--- For executors: sets the results.
function Future:set_result(...)
  if is_done(self) then error(M.InvalidStateError("the future is done"), 2) end
  local n = select("#", ...)
  self._n = n
  for i = 1, n do self[i] = (select(i, ...)) end
  settle(self, FINISHED)
end

--- For executors: sets the error.
function Future:set_exception(err)
  if is_done(self) then error(M.InvalidStateError("the future is done"), 2) end
  self._error = err == nil and "nil error" or err
  settle(self, FINISHED)
end

function Future:__tostring()
  local s = self._state
  if s == PENDING and self:running() then s = RUNNING end
  if s == FINISHED then s = self._error ~= nil and "finished raised" or "finished" end
  return ("<Future %s>"):format(s)
end

-- ---- waiting on several futures ----

M.FIRST_COMPLETED = "FIRST_COMPLETED"
M.FIRST_EXCEPTION = "FIRST_EXCEPTION"
M.ALL_COMPLETED = "ALL_COMPLETED"

local function check_futures(fs, fname)
  if type(fs) ~= "table" then
    error(("bad argument #1 to '%s' (table expected, got %s)"):format(fname, type(fs)), 3)
  end
  for i = 1, #fs do
    if not is_future(fs[i]) then
      error(("bad argument #1 to '%s' (element %d is not a Future)"):format(fname, i), 3)
    end
  end
end

local function failed(f) return f._state == FINISHED and f._error ~= nil end

--- Waits until return_when holds (ALL_COMPLETED by default) or timeout
-- passes; returns two sets (tables keyed by future): done and not_done.
function M.wait(fs, opts)
  check_futures(fs, "wait")
  if opts ~= nil and type(opts) ~= "table" then
    error("bad argument #2 to 'wait' (table expected, got " .. type(opts) .. ")", 2)
  end
  opts = opts or {}
  local timeout = check_timeout(opts.timeout, 2, "wait")
  local when = opts.return_when or M.ALL_COMPLETED
  if when ~= M.FIRST_COMPLETED and when ~= M.FIRST_EXCEPTION and when ~= M.ALL_COMPLETED then
    error("bad argument #2 to 'wait' (invalid return_when: " .. tostring(when) .. ")", 2)
  end
  local left, satisfied = 0, false
  local function enough(f)
    return when == M.FIRST_COMPLETED or (when == M.FIRST_EXCEPTION and failed(f))
  end
  for i = 1, #fs do
    local f = fs[i]
    if not is_done(f) then left = left + 1 elseif enough(f) then satisfied = true end
  end
  if left > 0 and not satisfied and (timeout == nil or timeout > 0) then
    local me = need_task("wait")
    local waiting = false
    local function wake()
      if waiting then waiting = false; unpark(me) end
    end
    local function on_done(f)
      left = left - 1
      if left == 0 or enough(f) then satisfied = true; wake() end
    end
    for i = 1, #fs do
      if not is_done(fs[i]) then add_waiter(fs[i], on_done) end
    end
    local timer = timeout and after(timeout, function() satisfied = true; wake() end)
    local ok, err = true, nil
    while not satisfied do
      waiting = true
      ok, err = park()
      waiting = false
      if not ok then break end
    end
    if timer then timer:close() end
    for i = 1, #fs do
      if not is_done(fs[i]) then remove_waiter(fs[i], on_done) end
    end
    if not ok then error(err, 0) end
  end
  local done, not_done = {}, {}
  for i = 1, #fs do
    local f = fs[i]
    if is_done(f) then done[f] = true else not_done[f] = true end
  end
  return done, not_done
end

--- Iterates over the futures as they finish (for f in as_completed(fs)),
-- each once; raises TimeoutError from the iterator once timeout seconds
-- have passed since the call.
function M.as_completed(fs, timeout)
  check_futures(fs, "as_completed")
  check_timeout(timeout, 2, "as_completed")
  local deadline = timeout and now() + timeout
  local ready, head, tail, left = {}, 1, 0, 0
  local seen, waiter = {}, nil
  local function on_done(f)
    tail = tail + 1
    ready[tail] = f
    local w = waiter
    if w then waiter = nil; unpark(w) end
  end
  local listening = {}
  for i = 1, #fs do
    local f = fs[i]
    if not seen[f] then
      seen[f] = true
      left = left + 1
      if is_done(f) then
        tail = tail + 1
        ready[tail] = f
      else
        listening[#listening + 1] = f
        add_waiter(f, on_done)
      end
    end
  end
  local function cleanup()
    for i = 1, #listening do
      if not is_done(listening[i]) then remove_waiter(listening[i], on_done) end
    end
  end
  local function iter()
    if left == 0 then return nil end
    while head > tail do
      local remaining = deadline and deadline - now()
      if remaining and remaining <= 0 then
        cleanup()
        error(M.TimeoutError(("%d (of %d) futures unfinished"):format(left, #fs)), 2)
      end
      local me = need_task("as_completed")
      waiter = me
      local timer = remaining and after(remaining, function()
        if waiter == me then waiter = nil; unpark(me) end
      end)
      local ok, err = park()
      waiter = nil
      if timer then timer:close() end
      if not ok then cleanup(); error(err, 0) end
    end
    local f = ready[head]
    ready[head] = nil
    head = head + 1
    left = left - 1
    return f
  end
  -- the closing value lets go of the futures when a loop breaks early
  return iter, nil, nil, setmetatable({}, {__close = cleanup})
end

-- ---- executors ----

local Executor = {}
Executor.__index = Executor
Executor.__name = "concurrent.futures.Executor"

-- The timeline keeps the most recent jobs, in flat arrays.
local TIMELINE_MAX = 4096

local function record(ex, f, worker, t0, t1, status)
  local n = ex._tl_n + 1
  ex._tl_n = n
  local i = (n - 1) % TIMELINE_MAX + 1
  local tl = ex._tl
  tl[4 * i - 3], tl[4 * i - 2], tl[4 * i - 1], tl[4 * i] = f._id, worker, t0, t1
  ex._tl_status[i] = status
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

local function make_deliver(holder)
  return function(id, status, worker, t0, t1, ...)
    local ex = holder.weak.ex
    if not ex then return end
    local pending = ex._pending
    local f = pending[id]
    if f == nil then return end
    pending[id] = nil
    ex._inflight = ex._inflight - 1
    local t00 = ex._t0
    record(ex, f, worker, t0 - t00, t1 - t00, status)
    if f._state == PENDING or f._state == RUNNING then
      if status == "ok" then
        local n = select("#", ...)
        f._n = n
        if n == 1 then f[1] = ... else for i = 1, n do f[i] = (select(i, ...)) end end
        settle(f, FINISHED)
      elseif status == "error" then
        f._error = remote_error(...)
        settle(f, FINISHED)
      elseif status == "cancelled" then
        settle(f, CANCELLED)
      elseif status == "broken" then
        f._error = M.BrokenExecutor(...)
        settle(f, FINISHED)
      else -- crashed
        f._error = new_error("EWORKER", (...))
        settle(f, FINISHED)
      end
    end
    if ex._inflight == 0 then ex:_idle() end
  end
end

local function new_executor(kind, max_workers, backend_new, opts)
  -- the backend keeps deliver, which finds the executor here: weakly, so
  -- that an idle executor is collected, and strongly while jobs are out
  local holder = {weak = setmetatable({}, {__mode = "v"})}
  local ex = setmetatable({
    _kind = kind, _max_workers = max_workers, _pending = {}, _inflight = 0,
    _next_id = 0, _t0 = now(), _tl = {}, _tl_status = {}, _tl_n = 0,
  }, Executor)
  holder.weak.ex = ex
  ex._holder = holder
  ex._backend = backend_new(max_workers, opts, make_deliver(holder))
  return ex
end

function Executor:__tostring()
  return ("<%s max_workers=%d%s>"):format(self._kind, self._max_workers,
    self._shutdown and " shut down" or "")
end

-- A job the backend removed will never be delivered.
function Executor:_forget(id)
  if self._pending[id] then
    self._pending[id] = nil
    self._inflight = self._inflight - 1
    if self._inflight == 0 then self:_idle() end
  end
end

-- Nothing is in flight: wake shutdown(true), or end the workers of an
-- executor shut down without waiting.
function Executor:_idle()
  self._holder.strong = nil
  local w = self._closer
  if w then self._closer = nil; unpark(w) end
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
function Executor:submit(fn, ...)
  if getmetatable(self) ~= Executor then
    error("bad argument #1 to 'submit' (executor expected)", 2)
  end
  if type(fn) ~= "function" then
    error("bad argument #1 to 'submit' (function expected, got " .. type(fn) .. ")", 2)
  end
  if self._shutdown then error("cannot schedule new futures after shutdown", 2) end
  local id = self._next_id + 1
  self._next_id = id
  -- every field it will have, so that the table is never resized
  local f = setmetatable({false, _state = PENDING, _executor = self, _id = id, _n = 0}, Future)
  local ok, err = pcall(self._backend.submit, self._backend, id, fn, ...)
  if not ok then
    if type(err) == "string" and err:find("the pool is broken", 1, true) then
      error(M.BrokenExecutor(err), 2)
    end
    error("submit: " .. tostring(err), 2)
  end
  self._pending[id] = f
  local n = self._inflight + 1
  self._inflight = n
  -- while jobs are out, their futures' callbacks must run even if nothing
  -- else refers to the executor (the backend anchors itself meanwhile)
  if n == 1 then self._holder.strong = self end
  return f
end

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
      error(("bad argument #%d to '%s' (table or iterator function expected, got %s)")
        :format(i + 1, fname, type(it)), 3)
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

local function is_options(x)
  if type(x) ~= "table" or x[1] ~= nil then return false end
  return next(x) == nil or x.timeout ~= nil or x.chunksize ~= nil or x.buffersize ~= nil
end

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
  if type(fn) ~= "function" then
    error("bad argument #1 to 'map' (function expected, got " .. type(fn) .. ")", 2)
  end
  local n = select("#", ...)
  local opts = {}
  if n >= 2 and is_options((select(n, ...))) then
    opts = select(n, ...)
    n = n - 1
  end
  if n == 0 then error("bad argument #2 to 'map' (at least one iterable expected)", 2) end
  local timeout = check_timeout(opts.timeout, n + 2, "map")
  local chunksize = opts.chunksize or 1
  if math.type(chunksize) ~= "integer" or chunksize < 1 then
    error("bad argument #" .. (n + 2) .. " to 'map' (chunksize must be a positive integer)", 2)
  end
  local window = opts.buffersize or math.max(2 * self._max_workers, 64)
  if math.type(window) ~= "integer" or window < 1 then
    error("bad argument #" .. (n + 2) .. " to 'map' (buffersize must be a positive integer)", 2)
  end
  local multi = n > 1
  local nextitem = zip("map", n, ...)
  local array = n == 1 and type((...)) == "table" and ... or nil
  local pos = 1
  local deadline = timeout and now() + timeout
  local fs, head, tail = {}, 1, 0 -- jobs in flight, in order
  local exhausted = false
  local chunk_out, chunk_i = nil, 0
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
          items = table.move(array, pos, math.min(pos + chunksize - 1, #array), 1, {})
          pos = pos + chunksize
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
  if wait == nil then wait = true end
  if not self._shutdown then
    self._shutdown = true
    local b = self._backend
    if b then
      local removed = b:shutdown(cancel_futures and true or false)
      for i = 1, #removed do
        local id = removed[i]
        local f = self._pending[id]
        self:_forget(id)
        if f then settle(f, CANCELLED) end
      end
    end
  end
  if self._inflight == 0 then
    self:_close_backend()
  elseif wait then
    local me = need_task("shutdown")
    while self._inflight > 0 do
      self._closer = me
      local ok, err = park()
      if self._closer == me then self._closer = nil end
      if not ok then error(err, 0) end
    end
    self:_close_backend()
  end
end

Executor.__close = function(self) self:shutdown(true) end

--- Returns the jobs that ran (the most recent 4096), in submission
-- order: {index=, worker=, start=, finish=, status=} with times in seconds
-- since the executor was created, status "done", "failed" or "cancelled";
-- jobs still running follow with finish nil and status "running".
function Executor:timeline()
  local out = {}
  local n = self._tl_n
  local first = n > TIMELINE_MAX and n - TIMELINE_MAX + 1 or 1
  local tl, st = self._tl, self._tl_status
  local names = {ok = "done", error = "failed", cancelled = "cancelled"}
  for k = first, n do
    local i = (k - 1) % TIMELINE_MAX + 1
    out[#out + 1] = {index = tl[4 * i - 3], worker = tl[4 * i - 2], start = tl[4 * i - 1],
      finish = tl[4 * i], status = names[st[i]] or "failed"}
  end
  table.sort(out, function(a, b) return a.index < b.index end)
  return out
end

--- The number of workers.
function Executor:max_workers() return self._max_workers end

-- ---- the pools ----

--- The CPUs of the system (Python's os.cpu_count()).
M.cpu_count = thread_pool.cpu_count

--- The CPUs this process may use (Python's os.process_cpu_count()).
M.process_cpu_count = thread_pool.process_cpu_count

local function check_workers(n, fname, default)
  if n == nil then return default end
  if math.type(n) ~= "integer" or n < 1 then
    error(("bad argument #1 to '%s' (max_workers must be a positive integer)"):format(fname), 3)
  end
  return n
end

local function check_opts(opts, fname)
  if opts == nil then return {} end
  if type(opts) ~= "table" then
    error(("bad argument #2 to '%s' (table expected, got %s)"):format(fname, type(opts)), 3)
  end
  if opts.initializer ~= nil and type(opts.initializer) ~= "function" then
    error(("bad argument #2 to '%s' (initializer must be a function)"):format(fname), 3)
  end
  if opts.initargs ~= nil and type(opts.initargs) ~= "table" then
    error(("bad argument #2 to '%s' (initargs must be a table)"):format(fname), 3)
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
  local mtpc = opts.max_tasks_per_child
  if mtpc ~= nil and (math.type(mtpc) ~= "integer" or mtpc < 1) then
    error("bad argument #2 to 'ProcessPoolExecutor' (max_tasks_per_child must be a positive integer)", 2)
  end
  local backend = require("concurrent.process_pool").new
  local ok, ex = pcall(new_executor, "ProcessPoolExecutor", max_workers, backend, opts)
  if not ok then error(ex, 2) end
  return ex
end

M.Executor = Executor
M.FutureClass = Future

return M
