--- tulua._ps: the task list of `tulua --ps PID` and `tulua --pstree PID`
-- (internal; host/ps.md). report() makes the text a runtime writes when
-- asked (host/ps.c), print() shows it for the own runtime (tulua.ps()),
-- and client() is the asking side, run by the command line.
local tulua = require "tulua"

local info, all_tasks, now, sleep = tulua._task_info, tulua.all_tasks, tulua.now, tulua.sleep
local concat, sort, format = table.concat, table.sort, string.format
local type, pairs, ipairs, tostring, tonumber = type, pairs, ipairs, tostring, tonumber

local M = {}

-- Separates the --ps part of a report from the --pstree part.
local TREE_MARK = "\f\n"

-- How long the client waits for the report.
M.TIMEOUT = 5

local function seconds(s)
  if s == nil or s < 0 then return "-" end
  return format("%.1f s", s)
end

-- Returns the live tasks with their info, in id order, and a map id ->
-- record. A REPL line's own task (hidden from all_tasks) is left out, as
-- tulua.all_tasks leaves it out, unless busy: the task running Lua code
-- when the report is made inside it is in.
local function collect(busy)
  local list, by_id, seen = {}, {}, {}
  local function add(t)
    if seen[t] then return end
    seen[t] = true
    local r = info(t)
    if r then
      r.task = t
      r.name = t:get_name()
      list[#list + 1] = r
      by_id[r.id] = r
    end
  end
  for _, t in ipairs(all_tasks()) do add(t) end
  local cur = tulua.current()
  if busy and cur then add(cur) end
  sort(list, function(a, b) return a.id < b.id end)
  return list, by_id
end

-- Returns the ids of the tasks in the table a park named (the children of
-- a gather, a TaskGroup's set, the items of a wait): its values and keys
-- that are tasks.
local function awaited(on, by_task)
  if type(on) ~= "table" then return nil end
  local ids, seen = {}, {}
  for k, v in pairs(on) do
    for _, x in ipairs({k, v}) do
      local r = type(x) == "thread" and by_task[x]
      if r and not seen[r.id] then
        seen[r.id] = true
        ids[#ids + 1] = r.id
      end
    end
  end
  sort(ids)
  return #ids > 0 and ids or nil
end

-- Returns " on <worker>" for a wait on the future of a job that a worker
-- runs now, else "".
local function worker_of(r)
  local seq = r.wait and tonumber(r.wait:match("future #(%d+)$"))
  local ex = seq and type(r.on) == "userdata" and debug.getuservalue(r.on, 4)
  if type(ex) ~= "table" or type(ex._jobs) ~= "function" then return "" end
  for _, j in ipairs(ex:_jobs()) do
    if j.seq == seq then return j.worker and (" on " .. j.worker) or (" " .. j.state) end
  end
  return ""
end

local function what(r, by_task, busy)
  local running = busy and "running Lua code" or "running: it made this list"
  local w = r.wait and (r.wait .. worker_of(r)) or (r.state == "running" and running or "")
  local ids = awaited(r.on, by_task)
  if ids then
    for i, id in ipairs(ids) do ids[i] = "#" .. id end
    w = w .. ": awaits " .. concat(ids, " ")
  end
  return w
end

-- The executors of concurrent.futures, if it is loaded: their in-flight
-- jobs and the worker running each.
local function executor_lines(out)
  local futures = package.loaded["concurrent.futures"]
  local list = futures and futures._executors and futures._executors()
  if not list or #list == 0 then return end
  out[#out + 1] = ""
  out[#out + 1] = "executors:"
  for _, ex in ipairs(list) do
    out[#out + 1] = "  " .. tostring(ex)
    local jobs = ex:_jobs()
    if #jobs == 0 then out[#out + 1] = "    (no job in flight)" end
    for _, j in ipairs(jobs) do
      local where = j.worker and (" on " .. j.worker) or ""
      out[#out + 1] = format("    job #%d %s%s", j.seq, j.state, where)
    end
  end
end

local function header(list, busy)
  local pid = require("tulua.process").getpid()
  local lines = {format("tulua process %d: %d task%s", pid, #list, #list == 1 and "" or "s")}
  if busy then
    for _, r in ipairs(list) do
      if r.state == "running" then
        lines[#lines + 1] = format("(the loop is busy: task #%d '%s' has run Lua code for %s;"
          .. " this report was made inside it)", r.id, r.name, seconds(r.seconds))
      end
    end
  end
  return lines
end

--- Returns the --ps text: a table of the tasks.
local function ps_text(list, by_task, busy)
  local out = header(list, busy)
  local rows = {{"ID", "NAME", "STATE", "FOR", "WAITS FOR"}}
  for _, r in ipairs(list) do
    rows[#rows + 1] = {tostring(r.id), r.name, r.state, seconds(r.seconds), what(r, by_task, busy)}
  end
  local width = {}
  for _, row in ipairs(rows) do
    for i = 1, 4 do width[i] = math.max(width[i] or 0, #row[i]) end
  end
  for _, row in ipairs(rows) do
    out[#out + 1] = format("%" .. width[1] .. "s  %-" .. width[2] .. "s  %-" .. width[3]
      .. "s  %" .. width[4] .. "s  %s", row[1], row[2], row[3], row[4], row[5]):gsub("%s+$", "")
  end
  executor_lines(out)
  return concat(out, "\n") .. "\n"
end

-- The traceback lines of task r, without the header and the task's bottom
-- C function.
local function traceback(r)
  local tb = debug.traceback(r.task, nil, 0) or ""
  local lines = {}
  for line in tb:gmatch("[^\n]+") do
    if line ~= "stack traceback:" then lines[#lines + 1] = (line:gsub("^\t", "")) end
  end
  if lines[#lines] == "[C]: in ?" then lines[#lines] = nil end
  -- the running task's report is made in a hook, or by its tulua.ps():
  -- the frames that make it go
  for i = #lines, 1, -1 do
    if lines[i] == "[C]: in hook '?'" or lines[i] == "[C]: in function 'tulua.ps'" then
      return {table.unpack(lines, i + 1)}
    end
  end
  return lines
end

--- Returns the --pstree text: the tasks under the task that spawned them,
-- each with what it waits for (and which tasks it awaits) and its
-- traceback.
local function tree_text(list, by_id, by_task, busy)
  local out = header(list, busy)
  local children = {}
  local roots = {}
  for _, r in ipairs(list) do
    local p = by_id[r.parent]
    if p then
      children[p] = children[p] or {}
      local c = children[p]
      c[#c + 1] = r
    else
      roots[#roots + 1] = r
    end
  end
  local function node(r, prefix, last)
    local branch = prefix == nil and "" or (last and "`-- " or "|-- ")
    local w = what(r, by_task, busy)
    out[#out + 1] = format("%s%s#%d %s (%s %s)%s", prefix or "", branch, r.id, r.name, r.state,
      seconds(r.seconds), w ~= "" and (": " .. w) or "")
    local inner = prefix == nil and "" or (prefix .. (last and "    " or "|   "))
    local kids = children[r] or {}
    local bar = #kids > 0 and "|   " or "    "
    if r.state == "waiting" or r.state == "running" then
      for _, line in ipairs(traceback(r)) do out[#out + 1] = inner .. bar .. "  " .. line end
    end
    for i, c in ipairs(kids) do node(c, inner, i == #kids) end
  end
  for _, r in ipairs(roots) do node(r, nil, true) end
  executor_lines(out)
  return concat(out, "\n") .. "\n"
end

-- The tasks' records, by id and by task.
local function views(busy)
  local list, by_id = collect(busy)
  local by_task = {}
  for _, r in ipairs(list) do by_task[r.task] = r end
  return list, by_id, by_task
end

--- report(busy) -> the text of both views, --ps's then --pstree's after a
-- form feed line; busy: made inside a running task (ps.c's hook).
function M.report(busy)
  local list, by_id, by_task = views(busy)
  return ps_text(list, by_task, busy) .. TREE_MARK .. tree_text(list, by_id, by_task, busy)
end

--- print([tree]): prints the own runtime's list (tulua.ps()), only the
-- view asked for (the tree's tracebacks are not made for the list).
function M.print(tree)
  local list, by_id, by_task = views(false)
  io.write(tree and tree_text(list, by_id, by_task, false) or ps_text(list, by_task, false))
end

local function read_all(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end

--- client(mode, pid) -> nil | message: asks the tulua process pid for its
-- report and prints the part of mode ("--ps" or "--pstree"); returns the
-- message of a failure.
function M.client(mode, arg)
  local pid = math.tointeger(tonumber(arg or ""))
  if not pid or pid <= 0 then
    return format("%s: '%s' is not a process id", mode, tostring(arg))
  end
  local status = read_all("/proc/" .. pid .. "/status")
  if not status then return format("%s: no process %d", mode, pid) end
  local uid = status:match("\nUid:%s+(%d+)")
  local me = (read_all("/proc/self/status") or ""):match("\nUid:%s+(%d+)")
  if uid ~= me then
    return format("%s: process %d belongs to another user (uid %s); only your own processes answer",
      mode, pid, tostring(uid))
  end
  local caught = status:match("\nSigCgt:%s+(%x+)")
  if caught and (tonumber(caught:sub(-8), 16) >> 22) & 1 == 0 then
    return format("%s: process %d is not a tulua process, or its runtime does not answer --ps", mode, pid)
  end
  local dir, err = tulua._ps_dir()
  if not dir then return format("%s: %s", mode, err) end
  local path = dir .. "/" .. pid .. ".ps"
  os.remove(path)
  local ok, msg = require("tulua.process").kill(pid, "SIGURG")
  if not ok then return format("%s: process %d: %s", mode, pid, msg) end
  local deadline = now() + M.TIMEOUT
  local text
  repeat
    sleep(0.02)
    text = read_all(path)
    if not text and not read_all("/proc/" .. pid .. "/status") then
      return format("%s: process %d ended before it answered", mode, pid)
    end
    if not text and now() > deadline then
      return format("%s: no answer from process %d within %g s: it is not a tulua process (it"
        .. " catches SIGURG), or its runtime is blocked outside Lua code (a C call, or the process is"
        .. " stopped)", mode, pid, M.TIMEOUT)
    end
  until text
  os.remove(path)
  local at = text:find(TREE_MARK, 1, true)
  if at then text = mode == "--pstree" and text:sub(at + #TREE_MARK) or text:sub(1, at - 1) end
  io.write(text)
  return nil
end

return M
