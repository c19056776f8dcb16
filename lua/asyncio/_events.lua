--- asyncio._events: the event loop object (all of them share the
-- runtime's one libuv loop), its Handles, run_in_executor and to_thread
-- (internal: the asyncio facade exports them).
local tulua = require "tulua"
local common = require "tulua._common"
local futures = require "asyncio._futures"
local waiters = require "asyncio._waiters"

-- spawn_protected: as in asyncio._futures, where the comment says why
local spawn, current, now = tulua.spawn_protected, tulua.current, tulua.now
local after = require("tulua.timer").after
local need_task, check_timeout = common.need_task, common.check_timeout
local args = require("tulua._args")
local type_error, check_self = args.type_error, args.check_self
local start_task = require("asyncio._tasks")._start
local Future, to_future, wrap_future = futures.Future, futures.to_future, futures.wrap_future
local wq_new, wq_wait, wq_wake_all = waiters.new, waiters.wait, waiters.wake_all
local pack, unpack = table.pack, table.unpack
local type, error, pcall, setmetatable = type, error, pcall, setmetatable

local M = {}

local Loop = {}
Loop.__index = Loop
Loop.__name = "asyncio.Loop"
Loop._kind = "asyncio.Loop"

local Handle = {}
Handle.__index = Handle
Handle.__name = "asyncio.Handle"
Handle._kind = "asyncio.Handle"

--- Stops the callback from running (if it has not started).
function Handle:cancel()
  check_self(self, "asyncio.Handle", "cancel")
  if self._cancelled then return end
  self._cancelled = true
  if self._timer then self._timer:close() end
  if self._task then self._task:cancel() end
end

Handle.cancelled = args.getter("asyncio.Handle", "cancelled", "_cancelled")
Handle.when = args.getter("asyncio.Handle", "when", "_when")

local loop_obj

--- Creates a loop object (all share the runtime's one libuv loop).
function M.new_event_loop()
  return setmetatable({_closed = false, _running = 0, _stopping = false}, Loop)
end

--- Returns the current loop object, creating it the first time.
function M.get_event_loop()
  if loop_obj == nil then loop_obj = M.new_event_loop() end
  return loop_obj
end

--- Returns the current loop object; raises outside a task.
function M.get_running_loop()
  if current() == nil then error("no running event loop", 2) end
  return M.get_event_loop()
end

--- Makes loop the current loop object.
function M.set_event_loop(loop)
  if loop ~= nil then check_self(loop, "asyncio.Loop", "set_event_loop") end
  loop_obj = loop
end

local function check_open(loop)
  if loop._closed then error("Event loop is closed", 3) end
end

--- Runs aw (a function with its arguments, a Task or a Future) to its end;
-- returns its results.
function Loop:run_until_complete(aw, ...)
  check_self(self, "asyncio.Loop", "run_until_complete")
  check_open(self)
  local f = type(aw) == "function" and spawn(aw, ...) or to_future(aw, 1, "run_until_complete")
  need_task("run_until_complete")
  self._running = self._running + 1
  local r = pack(pcall(f.join, f))
  self._running = self._running - 1
  if not r[1] then error(r[2], 0) end
  return unpack(r, 2, r.n)
end

--- Waits until stop() is called.
function Loop:run_forever()
  check_self(self, "asyncio.Loop", "run_forever")
  check_open(self)
  local me = need_task("run_forever")
  self._running = self._running + 1
  self._forever = self._forever or wq_new("run_forever")
  local ok, err = true, nil
  while not self._stopping and ok do
    ok, err = pcall(wq_wait, self._forever, me)
  end
  self._stopping = false
  self._running = self._running - 1
  if not ok then error(err, 0) end
end

--- Makes run_forever return.
function Loop:stop()
  check_self(self, "asyncio.Loop", "stop")
  self._stopping = true
  if self._forever then wq_wake_all(self._forever) end
end

--- Whether the loop runs: always, seen from a task.
function Loop:is_running()
  check_self(self, "asyncio.Loop", "is_running")
  return self._running > 0 or current() ~= nil
end
Loop.is_closed = args.getter("asyncio.Loop", "is_closed", "_closed")

--- Closes the loop object; raises if it is running.
function Loop:close()
  check_self(self, "asyncio.Loop", "close")
  if self._running > 0 then error("Cannot close a running event loop", 2) end
  self._closed = true
end

function Loop:time()
  check_self(self, "asyncio.Loop", "time")
  return now()
end

local function check_fn(fn, argn, fname)
  if type(fn) ~= "function" then
    type_error(argn, fname, "function", fn, 3)
  end
end

--- Runs fn(...) as a new task on the next loop turn; returns a Handle.
function Loop:call_soon(fn, ...)
  check_self(self, "asyncio.Loop", "call_soon")
  check_fn(fn, 1, "call_soon")
  return setmetatable({_task = spawn(fn, ...), _cancelled = false}, Handle)
end

--- Runs fn(...) as a new task `delay` seconds from now; returns a Handle.
function Loop:call_later(delay, fn, ...)
  check_self(self, "asyncio.Loop", "call_later")
  check_timeout(delay, 1, "call_later")
  check_fn(fn, 2, "call_later")
  return setmetatable({_timer = after(math.max(delay, 0), fn, ...),
    _cancelled = false, _when = now() + delay}, Handle)
end

--- Runs fn(...) as a new task at loop:time() `when`; returns a Handle.
function Loop:call_at(when, fn, ...)
  check_self(self, "asyncio.Loop", "call_at")
  check_timeout(when, 1, "call_at")
  check_fn(fn, 2, "call_at")
  local h = self:call_later(math.max(when - now(), 0), fn, ...)
  h._when = when
  return h
end

function Loop:create_task(fn, ...)
  check_self(self, "asyncio.Loop", "create_task")
  if type(fn) ~= "table" then check_fn(fn, 1, "create_task") end
  local t = start_task("create_task", fn, ...)
  return t
end

function Loop:create_future()
  check_self(self, "asyncio.Loop", "create_future")
  return Future()
end
function Loop:set_debug(on)
  check_self(self, "asyncio.Loop", "set_debug")
  tulua.set_debug(on)
end
function Loop:get_debug()
  check_self(self, "asyncio.Loop", "get_debug")
  return tulua.get_debug()
end

-- ---- executors ----

-- concurrent.futures is loaded only by programs that use executors.
local function cf()
  return require "concurrent.futures"
end

--- Runs fn(...) in executor (nil: the loop's default ThreadPoolExecutor)
-- and returns an asyncio Future of its results. fn and its arguments are
-- copied to the worker, which has a Lua state of its own.
function Loop:run_in_executor(executor, fn, ...)
  check_self(self, "asyncio.Loop", "run_in_executor")
  if executor ~= nil then check_self(executor, "concurrent.futures.Executor", "run_in_executor") end
  check_open(self)
  if executor == nil then
    executor = self._default_executor
    if executor == nil then
      executor = cf().ThreadPoolExecutor(nil, {thread_name_prefix = "asyncio"})
      self._default_executor = executor
    end
  end
  return wrap_future(executor:submit(fn, ...))
end

--- Makes executor the default of run_in_executor and to_thread.
function Loop:set_default_executor(executor)
  check_self(self, "asyncio.Loop", "set_default_executor")
  if executor ~= nil then check_self(executor, "concurrent.futures.Executor", "set_default_executor") end
  self._default_executor = executor
end

--- Shuts the default executor down, waiting for its jobs.
function Loop:shutdown_default_executor()
  check_self(self, "asyncio.Loop", "shutdown_default_executor")
  local ex = self._default_executor
  self._default_executor = nil
  if ex then ex:shutdown(true) end
end

--- Runs fn(...) in the running loop's default executor and waits for it in
-- the current task (Python's await asyncio.to_thread(fn, ...)); returns its
-- results. Unlike Python's, fn runs in another Lua state: it and its
-- arguments are copied there, and it may run in parallel with this one.
function M.to_thread(fn, ...)
  if type(fn) ~= "function" then
    type_error(1, "to_thread", "function", fn)
  end
  need_task("to_thread")
  local f = M.get_running_loop():run_in_executor(nil, fn, ...)
  local r = pack(pcall(f.join, f))
  if not r[1] then
    f:cancel() -- the task was cancelled: so is the job
    error(r[2], 0)
  end
  return unpack(r, 2, r.n)
end


return M
