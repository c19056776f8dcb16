--- asyncio._exceptions: asyncio's error classes and the tests for them
-- (internal: the asyncio facade exports them).
local common = require "tulua._common"
local error_class = common.error_class

local M = {}

M.CancelledError = error_class("ECANCELED", "task cancelled")
M.TimeoutError = error_class("ETIMEDOUT", "timed out")
M.InvalidStateError = error_class("EINVALIDSTATE", "invalid state")
M.QueueEmpty = error_class("EQUEUEEMPTY", "queue is empty")
M.QueueFull = error_class("EQUEUEFULL", "queue is full")
M.ExceptionGroup = error_class("EGROUP", "unhandled errors in a TaskGroup")

--- Returns whether err is an error object of class cls (asyncio.TimeoutError...).
M.is_error = common.is_error

local is_error = common.is_error

--- Returns whether err is a cancellation (CancelledError).
function M.is_cancelled(err)
  return is_error(err, M.CancelledError)
end

--- Returns whether err is a TimeoutError.
function M.is_timeout(err)
  return is_error(err, M.TimeoutError)
end

return M
