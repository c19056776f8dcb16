--- concurrent._worker: the worker side of concurrent.futures, the loop that runs jobs in a
-- worker, a thread pool's thread or a process pool's process. A port hands
-- it jobs: port.take(w) says whether one was taken ("job"), none is queued
-- ("idle": port.wait(w) suspends until there is) or the worker must end
-- ("stop"); port.run(w) decodes the job taken and calls it, and
-- port.finish(w, ok, ...) sends the outcome back (port.handler is the
-- message handler of the call) and, as take, takes the next. Both ports
-- are C, sharing bindings/worker.c: a thread pool's (bindings/thread_pool.c)
-- and a process worker's, which reads its channel (process_pool.c).
local xpcall = xpcall

local M = {}

local function call_init(fn, ...)
  if fn ~= nil then fn(...) end
end

--- Runs the initializer (port.init), then jobs until the port says stop.
-- An initializer that fails breaks the pool (port.broken), as in Python.
function M.serve(w, port)
  if port == nil then
    port = require("tulua._thread_pool").port
    -- in a thread, os.exit would end the whole process, the owner included
    os.exit = function() -- luacheck: ignore 122
      error("os.exit in a thread-pool worker would end the whole process", 2)
    end
  end
  local take, wait, run, finish = port.take, port.wait, port.run, port.finish
  local handler = port.handler
  local ok, err = xpcall(function() call_init(port.init(w)) end, handler)
  if not ok then
    local msg = type(err) == "table" and not getmetatable(err) and
      tostring(err[1]) .. "\n" .. tostring(err[2]) or tostring(err)
    port.broken(w, "the initializer failed: " .. msg)
    return
  end
  local state = take(w)
  while true do
    if state == "job" then
      state = finish(w, xpcall(run, handler, w))
    elseif state == "idle" then
      wait(w)
      state = take(w)
    else
      return
    end
  end
end

return M
