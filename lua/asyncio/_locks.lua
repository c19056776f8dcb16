--- asyncio._locks: the synchronization primitives Lock, Event, Semaphore,
-- BoundedSemaphore and Condition (internal: the asyncio facade exports
-- them). Each hands itself to its waiters in FIFO order (asyncio._waiters).
local common = require "tulua._common"
local waiters = require "asyncio._waiters"

local need_task = common.need_task
local args = require "tulua._args"
local arg_error, type_error, check_self = args.arg_error, args.type_error, args.check_self
local wq_new, wq_wake, wq_wake_all, wq_live, wq_wait =
  waiters.new, waiters.wake, waiters.wake_all, waiters.live, waiters.wait
local type, error, pcall, setmetatable, getmetatable = type, error, pcall, setmetatable, getmetatable

local M = {}

-- A primitive's acquire() returns it, and its __close releases it:
-- `local _ <close> = lock:acquire()`.
local function releaser(self) self:release() end

local Lock = {__close = releaser, __name = "asyncio.Lock", _kind = "asyncio.Lock"}
Lock.__index = Lock

--- A mutual-exclusion lock for tasks (FIFO).
function M.Lock()
  return setmetatable({_locked = false, _waiters = wq_new("lock")}, Lock)
end

-- Hands the lock to the next waiter, or unlocks it.
local function lock_pass(self)
  if not wq_wake(self._waiters) then self._locked = false end
end

local function lock_cancelled(self, woken)
  if woken then lock_pass(self) end -- it was handed to us: pass it on
end

--- Waits for the lock and takes it; returns the lock.
function Lock:acquire()
  check_self(self, "asyncio.Lock", "acquire")
  if not self._locked then
    self._locked = true
    return self
  end
  wq_wait(self._waiters, need_task("acquire"), lock_cancelled, self)
  return self -- handed over by release(): still locked, now ours
end

--- Releases the lock (to the first waiter, if any).
function Lock:release()
  check_self(self, "asyncio.Lock", "release")
  if not self._locked then error("attempt to release an unlocked lock", 2) end
  lock_pass(self)
end

Lock.locked = args.getter("asyncio.Lock", "locked", "_locked")

local Event = {__name = "asyncio.Event", _kind = "asyncio.Event"}
Event.__index = Event

--- An event flag tasks can wait for.
function M.Event()
  return setmetatable({_set = false, _waiters = wq_new("event")}, Event)
end

--- Sets the flag and wakes every waiter.
function Event:set()
  check_self(self, "asyncio.Event", "set")
  if not self._set then
    self._set = true
    wq_wake_all(self._waiters)
  end
end

function Event:clear()
  check_self(self, "asyncio.Event", "clear")
  self._set = false
end

Event.is_set = args.getter("asyncio.Event", "is_set", "_set")

--- Waits until the flag is set; returns true.
function Event:wait()
  check_self(self, "asyncio.Event", "wait")
  if self._set then return true end
  wq_wait(self._waiters, need_task("wait"))
  return true
end

local Semaphore = {__close = releaser, __name = "asyncio.Semaphore", _kind = "asyncio.Semaphore"}
Semaphore.__index = Semaphore

local function new_semaphore(value, bound, fname)
  value = value == nil and 1 or value
  if math.type(value) ~= "integer" or value < 0 then
    arg_error(1, fname, "non-negative integer expected", 3)
  end
  return setmetatable({_value = value, _bound = bound and value,
    _waiters = wq_new("semaphore")}, Semaphore)
end

--- A semaphore with `value` permits (default 1).
function M.Semaphore(value)
  local sem = new_semaphore(value, false, "Semaphore")
  return sem
end

--- A semaphore whose release() raises when it would exceed `value`.
function M.BoundedSemaphore(value)
  local sem = new_semaphore(value, true, "BoundedSemaphore")
  return sem
end

-- Hands a permit to the next waiter, or returns it to the count.
local function sem_pass(self)
  if not wq_wake(self._waiters) then self._value = self._value + 1 end
end

local function sem_cancelled(self, woken)
  if woken then sem_pass(self) end
end

--- Waits for a permit and takes it; returns the semaphore.
function Semaphore:acquire()
  check_self(self, "asyncio.Semaphore", "acquire")
  if self._value > 0 then -- permits are handed to waiters: none waits
    self._value = self._value - 1
    return self
  end
  wq_wait(self._waiters, need_task("acquire"), sem_cancelled, self)
  return self
end

--- Gives a permit back (to the first waiter, if any).
function Semaphore:release()
  check_self(self, "asyncio.Semaphore", "release")
  if self._bound and self._value >= self._bound and not wq_live(self._waiters) then
    error("BoundedSemaphore released too many times", 2)
  end
  sem_pass(self)
end

--- Whether acquire() would wait.
function Semaphore:locked()
  check_self(self, "asyncio.Semaphore", "locked")
  return self._value == 0 or wq_live(self._waiters)
end

local Condition = {__close = releaser, __name = "asyncio.Condition", _kind = "asyncio.Condition"}
Condition.__index = Condition

--- A condition variable over lock (a new Lock by default).
function M.Condition(lock)
  if lock ~= nil and getmetatable(lock) ~= Lock then
    type_error(1, "Condition", "asyncio.Lock", lock)
  end
  return setmetatable({_lock = lock or M.Lock(), _waiters = wq_new("condition")}, Condition)
end

--- Takes the condition's lock; returns the condition.
function Condition:acquire()
  check_self(self, "asyncio.Condition", "acquire")
  if self._lock._locked then need_task("acquire") end
  self._lock:acquire()
  return self
end

--- Releases the condition's lock.
function Condition:release()
  check_self(self, "asyncio.Condition", "release")
  if not self._lock._locked then error("attempt to release an unlocked lock", 2) end
  self._lock:release()
end

function Condition:locked()
  check_self(self, "asyncio.Condition", "locked")
  return self._lock:locked()
end

local function note_woken(box, woken)
  box.woken = woken
end

--- Releases the lock, waits for a notify, and takes the lock again (also
-- when cancelled, before raising). Returns true.
function Condition:wait()
  check_self(self, "asyncio.Condition", "wait")
  local lock = self._lock
  if not lock._locked then error("attempt to wait on a condition whose lock is not acquired", 2) end
  local me = need_task("wait")
  lock:release()
  local box = {}
  local ok, err = pcall(wq_wait, self._waiters, me, note_woken, box)
  -- take the lock back whatever happened, even through cancellations
  while true do
    local got, e = pcall(lock.acquire, lock)
    if got then break end
    ok, err = false, e
  end
  if not ok then
    -- notified, then cancelled: the next waiter gets the notification
    if box.woken then wq_wake(self._waiters) end
    error(err, 0)
  end
  return true
end

--- Waits until predicate() is true; returns its value.
function Condition:wait_for(predicate)
  check_self(self, "asyncio.Condition", "wait_for")
  if type(predicate) ~= "function" then
    type_error(1, "wait_for", "function", predicate)
  end
  local r = predicate()
  while not r do
    self:wait()
    r = predicate()
  end
  return r
end

--- Wakes up to n (default 1) waiting tasks; the lock must be held.
function Condition:notify(n)
  check_self(self, "asyncio.Condition", "notify")
  if n ~= nil and math.type(n) ~= "integer" then
    arg_error(1, "notify", type(n) == "number" and "number has no integer representation"
      or "number expected, got " .. type(n))
  end
  if not self._lock._locked then error("attempt to notify on a condition whose lock is not acquired", 2) end
  n = n or 1
  for _ = 1, n do
    if not wq_wake(self._waiters) then break end
  end
end

--- Wakes every waiting task; the lock must be held.
function Condition:notify_all()
  check_self(self, "asyncio.Condition", "notify_all")
  if not self._lock._locked then error("attempt to notify on a condition whose lock is not acquired", 2) end
  wq_wake_all(self._waiters)
end

return M
