--- asyncio._runners: asyncio.run, which runs a function as the main task
-- of a program and cleans up the tasks it leaves (internal: the asyncio
-- facade exports it).
local tulua = require "tulua"
local common = require "tulua._common"
local futures = require "asyncio._futures"
local tasks = require "asyncio._tasks"

local spawn = tulua.spawn_protected
local need_task = common.need_task
local args = require("tulua._args")
local type_error = args.type_error
local wait_done = futures.wait_done
local all_tasks, gather = tasks.all_tasks, tasks.gather
local pack, unpack = table.pack, table.unpack
local type, error, pcall, ipairs = type, error, pcall, ipairs

local M = {}

local RUN_OPTIONS = {debug = true}

--- Runs fn() as a new task and waits for it, then cancels the tasks
-- started meanwhile that are still running and waits for them; returns
-- fn's results or raises its error. opts.debug = true turns debug mode on
-- meanwhile. Cancelling the calling task (Ctrl-C) cancels fn's task.
function M.run(fn, opts)
  if type(fn) ~= "function" then
    type_error(1, "run", "function", fn)
  end
  if opts ~= nil then
    if type(opts) ~= "table" then type_error(2, "run", "table", opts) end
    args.check_options(opts, RUN_OPTIONS, 2, "run")
  end
  local me = need_task("run")
  local before = all_tasks()
  local old_debug = tulua.get_debug()
  if opts and opts.debug then tulua.set_debug(true) end
  local main = spawn(fn)
  local r = pack(pcall(main.join, main))
  if not r[1] and not main:done() then
    -- cancelled while waiting: the cancellation goes on to fn's task
    main:cancel()
    wait_done(main)
  end
  local left = {}
  for _, t in ipairs(tulua.all_tasks()) do
    if not before[t] and t ~= me then left[#left + 1] = t; t:cancel() end
  end
  local ok, err = true, nil
  if #left > 0 then ok, err = pcall(gather, left, {return_exceptions = true}) end
  tulua.set_debug(old_debug)
  if not ok then error(err, 0) end
  if not r[1] then error(r[2], 0) end
  return unpack(r, 2, r.n)
end

return M
