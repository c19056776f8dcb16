--- asyncio._waiters: the FIFO queues of parked tasks behind asyncio's
-- futures, locks and queues (internal). A queue holds {task=, woken=,
-- dead=} records. A waiter that is cancelled gets park()'s `false, err`,
-- undoes its bookkeeping (passing on a wake-up it can no longer use) and
-- only then raises: that is what makes the primitives cancellation-safe.
local tulua = require "tulua"

local park, unpark = tulua.park, tulua.unpark
local error = error

local M = {}

--- Returns an empty waiter queue; what ("lock", "queue get") names its
-- waits for `tulua --ps` and traces.
function M.new(what) return {head = 1, tail = 0, what = what} end

local function push(q, rec)
  local t = q.tail + 1
  q.tail = t
  q[t] = rec
end

--- Wakes the first waiter that is still parked; returns whether one was.
-- A record whose task was cancelled meanwhile (not parked any more) is
-- dropped: that task sees it was not woken and takes nothing.
function M.wake(q)
  local h = q.head
  while h <= q.tail do
    local rec = q[h]
    q[h] = nil
    h = h + 1
    if not rec.dead and unpark(rec.task) then
      rec.woken = true
      q.head = h
      return true
    end
  end
  q.head, q.tail = 1, 0
  return false
end

local wake = M.wake

--- Wakes every waiter.
function M.wake_all(q)
  while wake(q) do end
end

--- Returns whether some waiter may still be woken (dead records aside).
function M.live(q)
  for i = q.head, q.tail do
    if not q[i].dead then return true end
  end
  return false
end

--- Parks the current task me in q. Returns true once woken; when
-- cancelled, marks the record dead, calls on_cancel(arg, woken) and raises.
function M.wait(q, me, on_cancel, arg)
  local rec = {task = me}
  push(q, rec)
  local ok, err = park(q.what)
  if ok then return true end
  rec.dead = true
  if on_cancel then on_cancel(arg, rec.woken) end
  error(err, 0)
end

return M
