--- tulua.trace: traces in the Chrome trace event format, and their pictures.
-- start/stop record what the runtime does (tasks, waits, pool jobs) into a
-- JSON file that Perfetto and chrome://tracing open (the recorder is in C,
-- host/trace.c); svg draws the pool jobs of such a file as the picture of
-- concurrent.timeline's svg format. Reference: host/trace.md.
local C = require("tulua._trace")
local args = require("tulua._args")

local type, tostring, math_type = type, tostring, math.type
local arg_error, type_error = args.arg_error, args.type_error

local M = {}

-- The ring holds at least this many events (fewer could not hold one
-- step's), and at most as many as fit in a few GB.
local MIN_EVENTS, MAX_EVENTS = 16, 1 << 24
local START_OPTIONS = {max_events = true}

--- Starts recording into the file at path (replaced), for the whole process:
-- this runtime's tasks and every pool's jobs. One trace at a time.
-- @param path string
-- @param opts optional table: max_events (integer, 16 to 2^24, default
--   65536): the events held in memory until the writer thread writes them;
--   more are dropped and counted in the file
-- @return true, or nil, message, code (EBUSY: a trace is on; the file's
--   error)
function M.start(path, opts)
  if type(path) ~= "string" then type_error(1, "start", "string", path) end
  local max = 0
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
  end
  return C.start(path, max)
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

--- Draws the pool jobs of a trace file as an SVG picture: one lane per
-- worker track, a bar per job, as executor:timeline{format = "svg"}.
-- @param trace_path string, a file that start/stop wrote
-- @param svg_path string, the picture's file (replaced)
-- @param opts optional table: width (pixels, default 800), title (string)
-- @return true, or nil, message, code (the files' errors, or EINVAL for a
--   file that is no tulua trace)
function M.svg(trace_path, svg_path, opts)
  if type(trace_path) ~= "string" then type_error(1, "svg", "string", trace_path) end
  if type(svg_path) ~= "string" then type_error(2, "svg", "string", svg_path) end
  if opts ~= nil and type(opts) ~= "table" then type_error(3, "svg", "table", opts) end
  local svg = require("tulua._trace_svg")
  return svg.convert(trace_path, svg_path, opts, tostring)
end

return M
