--- concurrent.timeline: an executor's timeline drawn as text.
-- The talk shows how a pool ran its jobs as a picture: one row per worker,
-- time running left to right, each job a bar. render() draws that picture
-- from the records of ThreadPoolExecutor:timeline() (or of a process pool),
-- so a script can show whether its jobs overlapped: with threads on I/O, and
-- with CPU work on as many cores as there are. A pure function: it reads the
-- records and returns a string.
local M = {}

local type, ipairs, tostring = type, ipairs, tostring
local format, rep, sub = string.format, string.rep, string.sub
local concat, sort = table.concat, table.sort
local floor, ceil, max, min, log = math.floor, math.ceil, math.max, math.min, math.log
local math_type = math.type
local args = require("tulua._args")
local arg_error = args.arg_error

-- Job marks, by submission number: 1-9, then a-z, then again from 1. A
-- failed or cancelled job is drawn with its status mark instead: its bar
-- should stand out, and the legend still names it.
local MARKS = "123456789abcdefghijklmnopqrstuvwxyz"
local STATUS_MARKS = {failed = "X", cancelled = "-"}
local DEFAULT_WIDTH = 60
-- Bounds of the sizes the picture follows (its loops and strings): wider
-- than any screen, and as many workers as a pool may have.
local MAX_WIDTH, MAX_WORKERS = 10000, 1024
local MIN_TICK_GAP = 6 -- columns between ticks at least, so the axis stays readable

-- Formats seconds with the given number of decimals (Lua has no "%.*f").
local function seconds(t, decimals)
  return format("%." .. decimals .. "f", t)
end

-- Called from render's checkers, so it blames render's caller: level 4
-- (bad_arg, the checker, render, its caller), one more from a closure.
local function bad_arg(n, msg, level, fname)
  arg_error(n, fname or "render", msg, level or 4)
end

local function is_time(x)
  return type(x) == "number" and x >= 0 and x < math.huge
end

local OPTIONS = {width = true, workers = true, now = true, row = true}

-- Checks opts and returns width, workers, now, row.
local function check_opts(opts)
  if opts == nil then return DEFAULT_WIDTH, 0, nil, "worker" end
  if type(opts) ~= "table" then bad_arg(2, "table expected, got " .. type(opts)) end
  args.check_options(opts, OPTIONS, 2, "render", 3)
  local width, workers, now = opts.width or DEFAULT_WIDTH, opts.workers or 0, opts.now
  if math_type(width) ~= "integer" or width < 1 then
    bad_arg(2, "field 'width' must be a positive integer")
  elseif width > MAX_WIDTH then
    bad_arg(2, format("field 'width' must be 1 to %d", MAX_WIDTH))
  end
  if math_type(workers) ~= "integer" or workers < 0 then
    bad_arg(2, "field 'workers' must be a non-negative integer")
  elseif workers > MAX_WORKERS then
    bad_arg(2, format("field 'workers' must be 0 to %d", MAX_WORKERS))
  end
  if now ~= nil and not is_time(now) then bad_arg(2, "field 'now' must be a non-negative number") end
  local row = opts.row or "worker"
  if type(row) ~= "string" or not row:match("^[%w ]+$") then
    bad_arg(2, "field 'row' must be a word")
  end
  return width, workers, now, row
end

-- Checks the records and returns jobs: {mark=, label=, worker=, start=,
-- finish=} with finish nil while running, plus the latest time they know.
local function check_records(records, fname)
  if type(records) ~= "table" then bad_arg(1, "table expected, got " .. type(records), nil, fname) end
  local jobs, latest = {}, 0
  for i, r in ipairs(records) do
    local function bad_field(name, what)
      bad_arg(1, format("record %d: field '%s' must be %s", i, name, what), 5, fname)
    end
    if type(r) ~= "table" then bad_arg(1, format("record %d: table expected, got %s", i, type(r)), nil, fname) end
    local index = r.index == nil and i or r.index
    if math_type(index) ~= "integer" or index < 1 then bad_field("index", "a positive integer") end
    if math_type(r.worker) ~= "integer" or r.worker < 1 then bad_field("worker", "a positive integer") end
    if r.worker > MAX_WORKERS then bad_field("worker", "1 to " .. MAX_WORKERS) end
    if not is_time(r.start) then bad_field("start", "a non-negative number") end
    if r.finish ~= nil and not (is_time(r.finish) and r.finish >= r.start) then
      bad_field("finish", "nil or a number not below 'start'")
    end
    if r.name ~= nil and type(r.name) ~= "string" then bad_field("name", "nil or a string") end
    local status = r.status or (r.finish == nil and "running" or "done")
    if type(status) ~= "string" then bad_field("status", "nil or a string") end
    local mark = STATUS_MARKS[status] or sub(MARKS, (index - 1) % #MARKS + 1, (index - 1) % #MARKS + 1)
    local label = mark .. " " .. (r.name or ("job " .. index))
    if status ~= "done" then label = label .. " (" .. status .. ")" end
    jobs[i] = {mark = mark, label = label, index = index, worker = r.worker, start = r.start, finish = r.finish,
      status = status, name = r.name or ("job " .. index)}
    latest = max(latest, r.start, r.finish or 0)
  end
  return jobs, latest
end

-- Returns the axis step, the number of steps and the decimals of the tick
-- labels: the smallest step of 1, 2 or 5 times a power of ten whose ticks,
-- spread over width columns up to past latest, leave room for their labels.
local function choose_axis(latest, width)
  if latest <= 0 then latest = 1 end -- nothing took any time: show one second
  local exp = floor(log(latest, 10)) - 3
  while true do
    for _, m in ipairs({1, 2, 5}) do
      local step = m * 10.0 ^ exp
      local steps = max(1, ceil(latest / step - 1e-9))
      local decimals = max(0, -exp)
      local label_width = #seconds(steps * step, decimals)
      if width / steps >= max(MIN_TICK_GAP, label_width + 2) or steps == 1 then
        return step, steps, decimals
      end
    end
    exp = exp + 1
  end
end

-- Draws one worker's jobs (sorted by start) into a row of width cells. A job
-- covers the cells whose larger part it ran in, and at least one: a job too
-- short for a cell of its own takes the next free one, so every job shows
-- (unless the row is full: then the last cell shows the latest job).
local function draw_row(jobs, width, scale, now)
  local cells = {}
  for c = 1, width do cells[c] = " " end
  local last = 0 -- the last cell drawn so far
  for _, job in ipairs(jobs) do
    local first = max(floor(job.start * scale + 0.5) + 1, last + 1)
    local stop = max(first, floor((job.finish or now) * scale + 0.5))
    first, stop = min(first, width), min(stop, width)
    for c = first, stop do cells[c] = job.mark end
    last = stop
  end
  return concat(cells)
end

--- Draws an executor's timeline as text, as the talk's pictures of a pool at
-- work: one row per worker (`worker 1 |...|`), time from left to right over
-- width columns, each job a run of its mark, then an axis in seconds and a
-- legend. A job's mark is its submission number, 1-9 then a-z (job 10 is
-- `a`), cycling after z; a failed job is drawn with `X`, a cancelled one
-- with `-`; idle time is blank. Every job gets at least one column, a
-- zero-length one included, while its row has room. A running job (finish nil) is drawn up to
-- opts.now, by default the latest start or finish in the records. The
-- legend names each job by its mark and its name (default `job <index>`),
-- with its status unless it is done: `1 thread0  2 job 2  X job 3 (failed)`.
-- @param records array of the records of `executor:timeline()`: tables with
--   worker (integer from 1), start and finish (seconds since the executor
--   was created; finish nil while running), and optionally index (the
--   submission number; default the position in the array), status
--   ("done", "failed", "cancelled" or "running"; default from finish) and
--   name (a string)
-- @param opts optional table: width (60 columns for the time), workers (rows
--   to draw at least, so that idle workers show too; default the highest
--   worker in the records), now (the time that running jobs reach), row (the
--   word before each row's number, default "worker")
-- @return string of lines without a final newline, for print
-- @raise for records or opts of the wrong shape, naming the record and field
function M.render(records, opts)
  local width, workers, now, row = check_opts(opts)
  local jobs, latest = check_records(records)
  now = now or latest
  latest = max(latest, now)
  local by_worker = {}
  for _, job in ipairs(jobs) do
    workers = max(workers, job.worker)
    local list = by_worker[job.worker] or {}
    by_worker[job.worker] = list
    list[#list + 1] = job
  end

  local step, steps, decimals = choose_axis(latest, width)
  local scale = width / (step * steps) -- columns per second
  local label_format = row .. " %" .. #tostring(max(workers, 1)) .. "d |"
  local indent = #format(label_format, 1)
  local lines = {}
  for w = 1, workers do
    local list = by_worker[w] or {}
    sort(list, function(a, b)
      if a.start ~= b.start then return a.start < b.start end
      return a.index < b.index
    end)
    lines[#lines + 1] = format(label_format, w) .. draw_row(list, width, scale, now) .. "|"
  end

  -- Tick k sits on the first cell of the time it names; the last one, on
  -- the closing bar. Labels go in from the right, so the last one, with the
  -- unit, always shows; one that would run into its right neighbour is left
  -- out (only in a row too narrow for its labels).
  local axis, ticks = {}, {}
  for c = 1, width + 1 do axis[c] = "-" end
  for c = 1, width + #seconds(steps * step, decimals) + 2 do ticks[c] = " " end
  local limit = math.huge -- the column of the leftmost label placed so far
  for k = steps, 0, -1 do
    local col = floor(k * width / steps + 0.5) + 1
    axis[col] = "+"
    local text = seconds(k * step, decimals) .. (k == steps and " s" or "")
    if col + #text < limit then
      for c = 1, #text do ticks[col + c - 1] = sub(text, c, c) end
      limit = col
    end
  end
  lines[#lines + 1] = rep(" ", indent) .. concat(axis)
  lines[#lines + 1] = rep(" ", indent) .. concat(ticks)

  -- The legend wraps at the width of the rows.
  local line_width = indent + width + 1
  if #jobs == 0 then
    lines[#lines + 1] = "no jobs"
  else
    local line = ""
    for _, job in ipairs(jobs) do
      if line ~= "" and #line + 2 + #job.label > line_width then
        lines[#lines + 1] = line
        line = ""
      end
      line = line == "" and job.label or line .. "  " .. job.label
    end
    lines[#lines + 1] = line
  end
  return concat(lines, "\n")
end

-- ---- the picture as SVG ----

local SVG_OPTIONS = {width = true, workers = true, now = true, title = true, lanes = true}
local DEFAULT_PIXELS, MIN_PIXELS = 800, 200
local CHAR = 7 -- pixels of a character of the 12 px font, about
local LANE, BAR = 26, 18 -- a lane's height and its bars'
-- Bars take the colour of their submission number; a failed job is red,
-- a cancelled one grey, as the text marks them with X and -.
local COLOURS = {"#4e79a7", "#f28e2b", "#59a14f", "#b07aa1", "#76b7b2", "#edc948", "#9c755f", "#ff9da7"}
local STATUS_COLOURS = {failed = "#d62728", cancelled = "#9d9d9d"}

local function xml(s)
  return (tostring(s):gsub("[&<>\"]", {["&"] = "&amp;", ["<"] = "&lt;", [">"] = "&gt;", ['"'] = "&quot;"}))
end

-- Numbers in the picture: a few decimals, no exponent.
local function px(x)
  return format("%.2f", x)
end

local function check_svg_opts(opts)
  if opts == nil then return DEFAULT_PIXELS, 0, nil, nil, nil end
  if type(opts) ~= "table" then bad_arg(2, "table expected, got " .. type(opts), nil, "svg") end
  args.check_options(opts, SVG_OPTIONS, 2, "svg", 3)
  local width, workers, now = opts.width or DEFAULT_PIXELS, opts.workers or 0, opts.now
  if math_type(width) ~= "integer" or width < MIN_PIXELS or width > MAX_WIDTH then
    bad_arg(2, format("field 'width' must be an integer from %d to %d", MIN_PIXELS, MAX_WIDTH), nil, "svg")
  end
  if math_type(workers) ~= "integer" or workers < 0 or workers > MAX_WORKERS then
    bad_arg(2, format("field 'workers' must be an integer from 0 to %d", MAX_WORKERS), nil, "svg")
  end
  if now ~= nil and not is_time(now) then bad_arg(2, "field 'now' must be a non-negative number", nil, "svg") end
  if opts.title ~= nil and type(opts.title) ~= "string" then
    bad_arg(2, "field 'title' must be a string", nil, "svg")
  end
  local lanes = opts.lanes
  if lanes ~= nil then
    if type(lanes) ~= "table" then bad_arg(2, "field 'lanes' must be a list of strings", nil, "svg") end
    for i, name in ipairs(lanes) do
      if type(name) ~= "string" then
        bad_arg(2, format("field 'lanes': item %d must be a string", i), nil, "svg")
      end
    end
  end
  return width, workers, now, opts.title, lanes
end

--- Draws the same picture as render as an SVG image, for a browser or a
-- report: one lane per worker (named `worker N`, or by opts.lanes), a bar
-- per job (coloured by submission number; failed red, cancelled grey),
-- labelled with the job's name where it fits and in its tooltip always, and
-- a time axis in seconds. The root element carries the scale
-- (data-x0: the pixel of time 0, data-px-per-s) and each bar its job
-- (class "job", data-index, data-worker, data-start, data-finish), so that
-- a program can check the picture.
-- @param records as render's
-- @param opts optional table: width (pixels, 200 to 10000, default 800),
--   workers and now (as render's), title (a string above the lanes), lanes
--   (a list: the name of lane i; default `worker i`)
-- @return string, a whole SVG document
-- @raise for records or opts of the wrong shape
function M.svg(records, opts)
  local width, workers, now, title, lanes = check_svg_opts(opts)
  local jobs, latest = check_records(records, "svg")
  now = now or latest
  latest = max(latest, now)
  for _, job in ipairs(jobs) do workers = max(workers, job.worker) end
  if lanes then workers = max(workers, #lanes) end
  local names, longest = {}, 0
  for w = 1, workers do
    names[w] = lanes and lanes[w] or ("worker " .. w)
    longest = max(longest, #names[w])
  end
  local x0 = 16 + CHAR * longest
  local plot = width - x0 - 48 -- room on the right for the last tick's label
  local step, steps, decimals = choose_axis(latest, max(1, floor(plot / CHAR)))
  local scale = plot / (step * steps) -- pixels per second
  local top = title and 34 or 10
  local height = top + workers * LANE + 44
  local out = {}
  local function add(...) out[#out + 1] = format(...) end
  add('<?xml version="1.0" encoding="UTF-8"?>\n')
  add('<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d"'
    .. ' font-family="sans-serif" font-size="12" data-x0="%s" data-px-per-s="%s">\n',
    width, height, width, height, px(x0), px(scale))
  add('<rect class="background" x="0" y="0" width="%d" height="%d" fill="#ffffff"/>\n', width, height)
  if title then
    add('<text class="title" x="%s" y="22" font-size="15" font-weight="bold">%s</text>\n', px(x0), xml(title))
  end
  for w = 1, workers do
    local y = top + (w - 1) * LANE
    add('<g class="lane" data-worker="%d">', w)
    add('<rect x="%s" y="%d" width="%s" height="%d" fill="%s"/>', px(x0), y, px(plot), LANE,
      w % 2 == 1 and "#f3f3f3" or "#e8e8e8")
    add('<text x="%s" y="%d" text-anchor="end">%s</text></g>\n', px(x0 - 8), y + LANE // 2 + 4,
      xml(names[w]))
  end
  for _, job in ipairs(jobs) do
    local finish = job.finish or now
    local x, y = x0 + job.start * scale, top + (job.worker - 1) * LANE + (LANE - BAR) // 2
    local w = max(1, (finish - job.start) * scale)
    local colour = STATUS_COLOURS[job.status] or COLOURS[(job.index - 1) % #COLOURS + 1]
    local tip = format("%s: %s to %s s", job.label, seconds(job.start, 3), seconds(finish, 3))
    add('<g class="job" data-index="%d" data-worker="%d" data-start="%s" data-finish="%s">',
      job.index, job.worker, format("%.6f", job.start), format("%.6f", finish))
    add('<rect x="%s" y="%d" width="%s" height="%d" rx="2" fill="%s" stroke="#333333" stroke-width="0.5"%s>'
      .. '<title>%s</title></rect>', px(x), y, px(w), BAR, colour,
      job.finish == nil and ' fill-opacity="0.5"' or "", xml(tip))
    if #job.name * CHAR + 6 <= w then
      add('<text x="%s" y="%d" fill="#ffffff">%s</text>', px(x + 3), y + BAR // 2 + 4, xml(job.name))
    end
    add('</g>\n')
  end
  local axis_y = top + workers * LANE + 6
  add('<g class="axis"><line x1="%s" y1="%d" x2="%s" y2="%d" stroke="#333333"/>', px(x0), axis_y, px(x0 + plot), axis_y)
  for k = 0, steps do
    local x = x0 + k * step * scale
    add('<line x1="%s" y1="%d" x2="%s" y2="%d" stroke="#333333"/>', px(x), axis_y, px(x), axis_y + 5)
    add('<text x="%s" y="%d" text-anchor="middle">%s</text>', px(x), axis_y + 18,
      seconds(k * step, decimals) .. (k == steps and " s" or ""))
  end
  add('</g>\n</svg>\n')
  return concat(out)
end

--- Writes svg(records, opts) into the file at path (replaced): the talk
-- scripts' --svg FILE. With no opts.title the picture has none, as svg's.
-- @return true, or nil, message, code (io.open's or the write's)
function M.write_svg(path, records, opts)
  if type(path) ~= "string" then bad_arg(1, "string expected, got " .. type(path), nil, "write_svg") end
  local picture = M.svg(records, opts)
  local f, err, code = io.open(path, "w")
  if not f then return nil, err, code end
  local ok
  ok, err, code = f:write(picture)
  f:close()
  if not ok then return nil, err, code end
  return true
end

return M
