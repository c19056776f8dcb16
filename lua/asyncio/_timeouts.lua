--- asyncio._timeouts: the to-be-closed timeout scopes, timeout() and
-- timeout_at() (internal: the asyncio facade exports them). A scope cancels
-- its task at the deadline and turns that cancellation into a TimeoutError
-- where the scope ends.
local tulua = require "tulua"
local common = require "tulua._common"
local exceptions = require "asyncio._exceptions"

local current, now = tulua.current, tulua.now
local after = require("tulua.timer").after
local check_timeout = common.check_timeout
local is_cancelled, TimeoutError = exceptions.is_cancelled, exceptions.TimeoutError
local check_self = require("tulua._args").check_self
local error, setmetatable = error, setmetatable

local M = {}

local Timeout = {}
Timeout.__index = Timeout
Timeout.__name = "asyncio.Timeout"
Timeout._kind = "asyncio.Timeout"

local function on_timeout(self)
  self._timer = nil
  if self._state == "active" then
    self._state = "expiring"
    self._task:cancel()
  end
end

--- Moves the deadline to `when` (loop:time() seconds, nil: never).
function Timeout:reschedule(when)
  check_self(self, "asyncio.Timeout", "reschedule")
  check_timeout(when, 1, "reschedule")
  if self._state ~= "active" then
    error("attempt to reschedule a timeout that has " ..
      (self._state == "exited" and "ended" or "expired"), 2)
  end
  if self._timer then self._timer:close(); self._timer = nil end
  self._when = when
  if when ~= nil then
    self._timer = after(math.max(when - now(), 0), on_timeout, self)
  end
end

--- The deadline (loop:time() seconds), or nil for none.
Timeout.when = require("tulua._args").getter("asyncio.Timeout", "when", "_when")

--- Whether the deadline passed (and cancelled the task).
function Timeout:expired()
  check_self(self, "asyncio.Timeout", "expired")
  return self._state == "expiring" or self._state == "expired"
end

-- Leaves the scope with err (nil: the body ended normally); returns the
-- error to raise instead, if any.
function Timeout:_leave(err)
  if self._timer then self._timer:close(); self._timer = nil end
  if self._state == "expiring" then
    self._state = "expired"
    -- no new cancel requests since entering: this cancellation is ours
    if self._task:uncancel() <= self._cancelling and is_cancelled(err) then
      return TimeoutError()
    end
  elseif self._state == "active" then
    self._state = "exited"
  end
  return nil
end

Timeout.__close = function(self, err)
  local e = self:_leave(err)
  if e then error(e, 0) end
end

--- A to-be-closed scope that cancels the current task at loop:time() `when`
-- and turns that cancellation into a TimeoutError at the end of the scope.
function M.timeout_at(when)
  check_timeout(when, 1, "timeout_at")
  local task = current()
  if task == nil then error("attempt to use 'timeout' outside a task", 2) end
  local self = setmetatable({_task = task, _state = "active",
    _cancelling = task:cancelling()}, Timeout)
  self:reschedule(when)
  return self
end

--- As timeout_at(loop:time() + delay); delay nil: no deadline.
function M.timeout(delay)
  check_timeout(delay, 1, "timeout")
  return M.timeout_at(delay and now() + delay)
end

return M
