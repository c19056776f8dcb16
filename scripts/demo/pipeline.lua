-- pipeline.lua: runs a pipeline of programs like the shell's `ls | sort`,
-- without a shell: each program is started with tulua.process, and between
-- two neighbours a task copies what the first writes (its stdout pipe) into
-- the second's stdin pipe, counting the bytes. The first program reads
-- tulua's own stdin, the last one writes to tulua's stdout. Separate the
-- programs with a '|' argument (quoted, so that the shell leaves it alone).
-- Prints one line per copy and the statuses on stderr; exits with the last
-- program's status, as sh does.
--
--   build/tulua scripts/demo/pipeline.lua                      -- ls / '|' sort -r
--   build/tulua scripts/demo/pipeline.lua ls -l /usr/bin '|' sort -k5 -n '|' tail -3
local tulua = require "tulua"
local process = require "tulua.process"

local stages, argv = {}, {}
for _, a in ipairs(#arg > 0 and arg or {"ls", "/", "|", "sort", "-r"}) do
  if a == "|" then stages[#stages + 1], argv = argv, {} else argv[#argv + 1] = a end
end
stages[#stages + 1] = argv
for _, s in ipairs(stages) do assert(#s > 0, "usage: pipeline.lua program [args] ['|' program [args]]...") end

-- Copies from into to until from ends, then closes both: to's reader then
-- sees the end of its input. Stops early when to's reader has exited
-- (the write then fails with EPIPE: tulua does not die of SIGPIPE). Returns
-- the number of bytes copied.
local function copy(from, to)
  local n = 0
  while true do
    local data = from:read()
    if not data or not to:write(data) then break end
    n = n + #data
  end
  to:close()
  from:close()
  return n
end

local procs, copies = {}, {}
for k, s in ipairs(stages) do
  procs[k] = assert(process.spawn(s, {
    stdin = k > 1 and "pipe" or "inherit",
    stdout = k < #stages and "pipe" or "inherit",
  }))
  if k > 1 then copies[k - 1] = tulua.spawn(copy, procs[k - 1].stdout, procs[k].stdin) end
end

for k, task in ipairs(copies) do
  io.stderr:write(("%s -> %s: %d bytes\n"):format(stages[k][1], stages[k + 1][1], task:join()))
end
local status
for k, p in ipairs(procs) do
  local signal
  status, signal = p:wait()
  io.stderr:write(("%s: %s\n"):format(stages[k][1], signal or ("status " .. status)))
end
if status < 0 then status = 128 - status end   -- ended by signal N: 128 + N, as sh says
os.exit(status)
