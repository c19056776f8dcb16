--- tulua.trace: traces in the Chrome trace event format, and their pictures.
-- start/stop record what the runtime does (tasks, waits, pool jobs) into a
-- JSON file that Perfetto and chrome://tracing open (the recorder is in C,
-- host/trace.c); svg draws the pool jobs of such a file as the picture of
-- concurrent.timeline's svg format. Reference: host/trace.md.
local C = require("tulua._trace")
local args = require("tulua._args")

local type, tostring, math_type, ipairs, pcall, error, tonumber =
  type, tostring, math.type, ipairs, pcall, error, tonumber
local arg_error, type_error = args.arg_error, args.type_error

local M = {}

-- The ring holds at least this many events (fewer could not hold one
-- step's), and at most as many as fit in a few GB.
local MIN_EVENTS, MAX_EVENTS = 16, 1 << 24
local START_OPTIONS = {max_events = true, gc_slow = true}
-- gc_slow at most a day, as tulua.set_debug's slow
local MAX_SLOW = 86400

--- Starts recording into the file at path (replaced), for the whole process:
-- this runtime's tasks and every pool's jobs. One trace at a time.
-- @param path string
-- @param opts optional table: max_events (integer, 16 to 2^24, default
--   65536): the events held in memory until the writer thread writes them;
--   more are dropped and counted in the file; gc_slow (seconds, 0 to 86400,
--   default 0.001): collector steps that take this long or longer are
--   recorded
-- @return true, or nil, message, code (EBUSY: a trace is on; the file's
--   error)
function M.start(path, opts)
  if type(path) ~= "string" then type_error(1, "start", "string", path) end
  local max, slow = 0, nil
  if opts ~= nil then
    if type(opts) ~= "table" then type_error(2, "start", "table", opts) end
    args.check_options(opts, START_OPTIONS, 2, "start")
    if opts.max_events ~= nil then
      max = opts.max_events
      if math_type(max) ~= "integer" or max < MIN_EVENTS or max > MAX_EVENTS then
        arg_error(2, "start", ("field 'max_events' must be an integer from %d to %d")
          :format(MIN_EVENTS, MAX_EVENTS))
      end
    end
    slow = opts.gc_slow
    if slow ~= nil and (type(slow) ~= "number" or not (slow >= 0 and slow <= MAX_SLOW)) then
      arg_error(2, "start", ("field 'gc_slow' must be a number from 0 to %d"):format(MAX_SLOW))
    end
  end
  local ok, err, code = C.start(path, max, slow)
  if not ok then return nil, err, code end
  -- the tasks already there: their steps carry their names too
  for _, task in ipairs(require("tulua").all_tasks()) do C.name(task, task:get_name()) end
  return true
end

--- Stops the trace this runtime started and writes the rest of the file.
-- @return the number of events written and of events dropped, or nil,
--   message, code (EINVAL: no trace was started here)
function M.stop()
  return C.stop()
end

--- Whether a trace is being recorded (by any runtime of the process).
function M.active()
  return C.on()
end

-- ---- reading a trace back ----

-- A JSON reader, enough for any trace: values as Lua values (null as nil
-- in tables, numbers as floats or integers). Raises "offset N: message".
local byte, sub, find, char = string.byte, string.sub, string.find, utf8.char
local ESCAPES = {b = "\b", f = "\f", n = "\n", r = "\r", t = "\t"}

local function decode_json(text)
  local pos = 1
  local function fail(msg) error(("offset %d: %s"):format(pos, msg), 0) end
  local function skip()
    pos = find(text, "[^ \t\r\n]", pos) or #text + 1
  end
  local value
  local function string_value()
    local out, start = {}, pos + 1
    while true do
      local stop = find(text, '["\\]', start)
      if not stop then fail("unfinished string") end
      out[#out + 1] = sub(text, start, stop - 1)
      if byte(text, stop) == 34 then pos = stop + 1; return table.concat(out) end
      local e = sub(text, stop + 1, stop + 1)
      if e == "u" then
        local hex = sub(text, stop + 2, stop + 5)
        if not find(hex, "^%x%x%x%x$") then fail("bad \\u escape") end
        out[#out + 1] = char(tonumber(hex, 16))
        start = stop + 6
      else
        out[#out + 1] = ESCAPES[e] or e
        start = stop + 2
      end
    end
  end
  function value()
    skip()
    local c = sub(text, pos, pos)
    if c == "{" then
      local t = {}
      pos = pos + 1
      skip()
      if sub(text, pos, pos) == "}" then pos = pos + 1; return t end
      repeat
        skip()
        if sub(text, pos, pos) ~= '"' then fail("key expected") end
        local k = string_value()
        skip()
        if sub(text, pos, pos) ~= ":" then fail("':' expected") end
        pos = pos + 1
        t[k] = value()
        skip()
        c = sub(text, pos, pos)
        pos = pos + 1
      until c ~= ","
      if c ~= "}" then fail("'}' expected") end
      return t
    elseif c == "[" then
      local t, n = {}, 0
      pos = pos + 1
      skip()
      if sub(text, pos, pos) == "]" then pos = pos + 1; return t end
      repeat
        n = n + 1
        t[n] = value()
        skip()
        c = sub(text, pos, pos)
        pos = pos + 1
      until c ~= ","
      if c ~= "]" then fail("']' expected") end
      return t
    elseif c == '"' then
      return string_value()
    end
    local word = text:match("^[%w%.%+%-]+", pos)
    if word == "true" or word == "false" or word == "null" then
      pos = pos + #word
      if word == "null" then return nil end
      return word == "true"
    end
    local n = word and tonumber(word)
    if not n then fail("value expected") end
    pos = pos + #word
    return n
  end
  local v = value()
  skip()
  if pos <= #text then fail("text after the value") end
  return v
end
M._decode_json = decode_json -- for the specs

-- How a job's status in the trace is drawn.
local STATUSES = {ok = "done", error = "failed", cancelled = "cancelled", broken = "failed", crashed = "failed"}

-- Orders lanes by kind, then by the number in their name (worker 2 before
-- worker 10, process 999 before process 1000).
local function lane_before(a, b)
  local ka, na = a:match("^(.-)(%d*)$")
  local kb, nb = b:match("^(.-)(%d*)$")
  if ka ~= kb then return ka < kb end
  return (tonumber(na) or 0) < (tonumber(nb) or 0)
end

--- Returns the records and lane names of the pool jobs of a trace (the
-- decoded JSON): what concurrent.timeline.svg draws, times in seconds from
-- the trace's first event.
function M.jobs(trace)
  local events = type(trace) == "table" and trace.traceEvents
  if type(events) ~= "table" then return nil, "not a trace: no traceEvents", "EINVAL" end
  local names, jobs, t0 = {}, {}, math.huge
  for _, e in ipairs(events) do
    if type(e) == "table" then
      local key = tostring(e.pid) .. "/" .. tostring(e.tid)
      if e.ph == "M" and e.name == "thread_name" and type(e.args) == "table" then
        names[key] = e.args.name
      elseif type(e.ts) == "number" then
        t0 = math.min(t0, e.ts)
        if e.ph == "X" and e.cat == "job" and type(e.dur) == "number" then
          jobs[#jobs + 1] = {key = key, e = e}
        end
      end
    end
  end
  local lanes, lane_of = {}, {}
  for _, j in ipairs(jobs) do
    local name = names[j.key] or j.key
    if not lane_of[name] then lanes[#lanes + 1] = name; lane_of[name] = true end
  end
  table.sort(lanes, lane_before)
  for i, name in ipairs(lanes) do lane_of[name] = i end
  table.sort(jobs, function(a, b) return a.e.ts < b.e.ts end)
  local records = {}
  for i, j in ipairs(jobs) do
    local e, args_ = j.e, type(j.e.args) == "table" and j.e.args or {}
    records[i] = {
      index = i, worker = lane_of[names[j.key] or j.key],
      start = (e.ts - t0) / 1e6, finish = (e.ts + e.dur - t0) / 1e6,
      status = STATUSES[args_.status] or "done", name = type(e.name) == "string" and e.name or nil,
    }
  end
  return records, lanes
end

local SVG_OPTIONS = {width = true, title = true}

--- Draws the pool jobs of a trace file as an SVG picture: one lane per
-- worker track, a bar per job, as executor:timeline{format = "svg"}.
-- @param trace_path string, a file that start/stop wrote
-- @param svg_path string, the picture's file (replaced)
-- @param opts optional table: width (pixels, default 800), title (string,
--   default the trace file's name)
-- @return true, or nil, message, code (the files' errors, or EINVAL for a
--   file that is no trace)
function M.svg(trace_path, svg_path, opts)
  if type(trace_path) ~= "string" then type_error(1, "svg", "string", trace_path) end
  if type(svg_path) ~= "string" then type_error(2, "svg", "string", svg_path) end
  if opts ~= nil then
    if type(opts) ~= "table" then type_error(3, "svg", "table", opts) end
    args.check_options(opts, SVG_OPTIONS, 3, "svg")
  end
  local f, err, code = io.open(trace_path, "r")
  if not f then return nil, err, code end
  local text = f:read("a")
  f:close()
  local ok, trace = pcall(decode_json, text)
  if not ok then return nil, trace_path .. ": not JSON: " .. trace, "EINVAL" end
  local records, lanes, ecode = M.jobs(trace)
  if not records then return nil, trace_path .. ": " .. lanes, ecode end
  return require("concurrent.timeline").write_svg(svg_path, records, {
    lanes = lanes, width = opts and opts.width, title = opts and opts.title or trace_path,
  })
end

return M
