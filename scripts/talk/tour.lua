-- A short tour of tulua: tasks on one event loop, sleeping without blocking,
-- and a file read that does not stop the other tasks; then the scripts of the
-- talk, each run in turn by the same tulua binary: its first half (thread and
-- process pools, the GIL that tulua does not have, the number of cores),
-- then its second half (coroutines, asyncio, the event loop, uvloop).
-- Run it with: tulua scripts/talk/tour.lua
local tulua = require "tulua"
local fs = require "tulua.fs"

print("1. The main chunk is a task: it can sleep at the top level.")
local t0 = tulua.now()
tulua.sleep(0.1)
print(string.format("   slept %.2f s", tulua.now() - t0))

print("2. Tasks interleave on one thread, each time one of them waits.")
local order = {}
local function worker(name, delay)
  for i = 1, 3 do
    tulua.sleep(delay)
    order[#order + 1] = name .. i
  end
  return name .. " done"
end
local a = tulua.spawn(worker, "a", 0.01)
local b = tulua.spawn(worker, "b", 0.015)
print("   " .. a:join() .. ", " .. b:join())
print("   order: " .. table.concat(order, " "))

print("3. A file read waits on libuv's thread pool; the loop keeps turning.")
local turns, reading = 0, true
local spinner = tulua.spawn(function()
  while reading do tulua.sleep(0); turns = turns + 1 end
end)
local path = arg and arg[0] or "scripts/talk/tour.lua"
local text = assert(fs.read_file(path))
reading = false
spinner:join()
print(string.format("   read %d bytes of %s while another task ran %d times", #text, path, turns))

print("4. Errors travel to whoever joins the task.")
local failing = tulua.spawn(function() tulua.sleep(0.01); error("no luck", 0) end)
local _, msg = pcall(failing.join, failing)
print("   " .. msg:match("^[^\n]*"))

print("5. Cancelling a waiting task wakes it with a cancellation error.")
local sleeper = tulua.spawn(tulua.sleep, 60)
tulua.sleep(0)
sleeper:cancel()
local _, err = pcall(sleeper.join, sleeper)
print("   " .. tostring(err) .. " (code " .. err.code .. ")")

print("6. The talk: each script of scripts/talk, pools first, then coroutines, run by this same tulua.")
-- The program is the first argument before the options: arg[-1] unless
-- options such as -W came before the script.
local program_index = -1
while arg and arg[program_index - 1] ~= nil do program_index = program_index - 1 end
local program = arg and arg[program_index] or "tulua"
local dir = path:match("^(.*)/[^/]*$") or "."
local talk = {
  {"thread_io.lua", "ThreadPoolExecutor, I/O-bound: six large files on three threads"},
  {"thread_cpu.lua", "ThreadPoolExecutor, CPU-bound: no GIL, so the threads run in parallel"},
  {"cpu_count.lua", "os.cpu_count(): futures.cpu_count()"},
  {"process_cpu.lua", "ProcessPoolExecutor, CPU-bound: the same sums on three processes"},
  {"more_workers_than_cores.lua", "what if the CPU had only 2 cores: more workers than cores"},
  {"generator_coroutine.lua", "generator-based coroutines: next(c), c.send('World')"},
  {"hello_world.lua", "async/await: hello_world"},
  {"compute_chain.lua", "watching asyncio work: compute and print_sum"},
  {"event_loop.lua", "the event loop: three tasks on one thread"},
  {"uvloop.lua", "uvloop: the loop already is libuv"},
}
local function shell_quote(s)
  return "'" .. s:gsub("'", "'\\''") .. "'"
end
for _, script in ipairs(talk) do
  local file = dir .. "/" .. script[1]
  print(("\n--- %s (%s)"):format(file, script[2]))
  -- os.execute blocks the loop while the script runs: no task is left here
  -- to run meanwhile. Flushing first keeps the lines in order in a pipe.
  io.stdout:flush()
  local ok, how, code = os.execute(shell_quote(program) .. " " .. shell_quote(file))
  if not ok then error(("%s failed: %s %s"):format(file, how, code), 0) end
end
