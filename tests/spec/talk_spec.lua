-- The scripts of the talk (scripts/talk/*.lua): each one runs under tulua
-- from the repository's root, as its header says, and must print exactly
-- what the Python it mirrors prints, exit with status 0 and write nothing on
-- stderr. The pools of the first half finish their tasks in an order that
-- varies, so their lines are compared in any order, and their timings and
-- timelines by shape only: speed is for the benchmarks. Timing is checked
-- where it is the point of a second-half script.
-- TULUA names the binary under test (default build/tulua).

package.path = (debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or ".") .. "/?.lua;" .. package.path
local support = require("support")
local tulua = require("tulua")

local SPEC_DIR = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "."
local ROOT = support.absolute(SPEC_DIR .. "/../..")

-- Runs `tulua scripts/talk/<name>` in the repository's root; returns
-- {status=, stdout=, stderr=} and the seconds it took.
local function run(name)
  local out, err = os.tmpname(), os.tmpname()
  local start = tulua.now()
  local _, _, status = os.execute(string.format("cd %s && %s %s > %s 2> %s", support.shell_quote(ROOT),
    support.shell_quote(support.TULUA), support.shell_quote("scripts/talk/" .. name),
    support.shell_quote(out), support.shell_quote(err)))
  local elapsed = tulua.now() - start
  local result = {status = status, stdout = support.read_file(out), stderr = support.read_file(err)}
  os.remove(out)
  os.remove(err)
  return result, elapsed
end

-- The paragraphs of text (the blocks of lines between blank lines), each an
-- array of its lines.
local function paragraphs_of(text)
  local paragraphs = {}
  for block in (text:gsub("\n$", "") .. "\n\n"):gmatch("(.-)\n\n") do
    local lines = {}
    for line in (block .. "\n"):gmatch("(.-)\n") do lines[#lines + 1] = line end
    paragraphs[#paragraphs + 1] = lines
  end
  return paragraphs
end

-- The lines "Finish <what>0" up to "Finish <what><tasks - 1>", sorted.
local function finish_lines(what, tasks)
  local lines = {}
  for index = 0, tasks - 1 do lines[#lines + 1] = ("Finish %s%d"):format(what, index) end
  table.sort(lines)
  return lines
end

local function sorted(lines)
  local copy = table.move(lines, 1, #lines, 1, {})
  table.sort(copy)
  return copy
end

-- Checks a timeline drawn by concurrent.timeline with its default width:
-- one row per worker, each job drawn, the axis, and a legend (wrapped when
-- long) naming every job as done.
local MARKS = "123456789abcdefghijklmnopqrstuvwxyz"
local function assert_timeline(picture, what, tasks, workers)
  assert.is_true(#picture >= workers + 3, table.concat(picture, "\n"))
  local drawn = ""
  for w = 1, workers do
    local label, cells = picture[w]:match("^(worker +%d+ |)(.*)|$")
    assert.are.equal(("worker %" .. #tostring(workers) .. "d |"):format(w), label)
    assert.are.equal(60, #cells, picture[w])
    drawn = drawn .. cells
  end
  local indent = #picture[1] - 61
  assert.is_truthy(picture[workers + 1]:find("^" .. (" "):rep(indent) .. "%+[-+]+%+$"), picture[workers + 1])
  assert.is_truthy(picture[workers + 2]:find("^" .. (" "):rep(indent) .. "0[.0-9 ]* s$"), picture[workers + 2])
  local legend = {}
  for index = 1, tasks do
    local mark = MARKS:sub((index - 1) % #MARKS + 1, (index - 1) % #MARKS + 1)
    assert.is_truthy(drawn:find(mark, 1, true), "job " .. index .. " not drawn")
    legend[index] = ("%s %s%d"):format(mark, what, index - 1)
  end
  assert.are.equal(table.concat(legend, "  "), table.concat(picture, "  ", workers + 3))
end

-- Checks the output of a pool script: the Finish lines in any order, then
-- the paragraphs that match the patterns in middle, then the timeline.
local function assert_pool_output(stdout, what, tasks, workers, middle)
  local paragraphs = paragraphs_of(stdout)
  assert.are.equal(#middle + 2, #paragraphs, stdout)
  assert.are.same(finish_lines(what, tasks), sorted(paragraphs[1]))
  for i, patterns in ipairs(middle) do
    local lines = paragraphs[i + 1]
    assert.are.equal(#patterns, #lines, stdout)
    for j, pattern in ipairs(patterns) do
      assert.is_truthy(lines[j]:find(pattern), lines[j] .. " does not match " .. pattern)
    end
  end
  assert_timeline(paragraphs[#paragraphs], what, tasks, workers)
end

local function cores()
  return require("concurrent.futures").cpu_count()
end

local function plural_cores(n)
  return n == 1 and "1 core" or n .. " cores"
end

local function check_thread_io(stdout)
  assert_pool_output(stdout, "thread", 6, 3, {})
end

local function check_thread_cpu(stdout)
  assert_pool_output(stdout, "thread", 6, 3, {{
    "^one after the other: %d+%.%d%d s; ThreadPoolExecutor%(3%): %d+%.%d%d s$",
    "^speedup %d+%.%dx on " .. plural_cores(cores()) .. ": no GIL, each worker thread owns its Lua state$",
    "^%(the speedup is smaller while other programs keep the cores busy%)$",
  }})
end

local function check_process_cpu(stdout)
  assert_pool_output(stdout, "process", 6, 3, {})
end

local function check_more_workers_than_cores(stdout)
  local n = cores()
  local seconds = "%d+%.%d%d s"
  local patterns = {("^%d worker processes on %s; one task alone takes "):format(2 * n, plural_cores(n))
    .. seconds .. ", here:$"}
  for index = 0, 2 * n - 1 do
    patterns[#patterns + 1] = "^  process" .. index .. " " .. seconds .. " %(%d+%.%dx as long%)$"
  end
  patterns[#patterns + 1] = ("^all %d tasks in "):format(2 * n) .. seconds
    .. (": %s run no more than %d at once$"):format(plural_cores(n), n)
  assert_pool_output(stdout, "process", 2 * n, 2 * n, {patterns})
end

local GENERATOR_COROUTINE = "thread\tsuspended\nHello\nWorld\n"
local HELLO_WORLD = "Hello World!\n"
local COMPUTE_CHAIN = "Compute 1 + 2 ...\n1 + 2 = 3\n"
local EVENT_LOOP = [[
A sleeps 3 x 0.3 s
B sleeps 2 x 0.4 s
C sleeps 1 x 1.0 s
0.3 s  A: step 1/3
0.4 s  B: step 1/2
0.6 s  A: step 2/3
0.8 s  B: step 2/2
0.9 s  A: step 3/3
1.0 s  C: step 1/1
1.0 s  all done: the longest task took 1.0 s, the sleeps add up to 2.7 s
]]
-- Checks event_loop's output against EVENT_LOOP without depending on the
-- machine's load: the same lines, each time no earlier than the one shown
-- there (load makes them later, never earlier), each worker's steps in
-- order, the first steps of A and B before C's one step (they ran while C
-- slept: one after the other, C would start after them) and "all done"
-- last. Lines whose times are 0.1 s apart may swap under load.
local function check_event_loop(stdout)
  local want, got, at = {}, {}, {}
  for line in EVENT_LOOP:gmatch("[^\n]+") do
    local time, rest = line:match("^(%d+%.%d) s  (.*)$")
    want[rest or line] = tonumber(time) or false
  end
  for line in stdout:gmatch("[^\n]+") do
    local time, rest = line:match("^(%d+%.%d) s  (.*)$")
    got[#got + 1] = rest or line
    at[rest or line] = #got
    local shown = want[rest or line]
    assert.is_truthy(shown ~= nil, "unexpected line: " .. line .. "\n" .. stdout)
    assert.is_true(not shown or tonumber(time) >= shown, stdout)
  end
  local lines = {}
  for line in EVENT_LOOP:gmatch("[^\n]+") do lines[#lines + 1] = (line:gsub("^%d+%.%d s  ", "")) end
  assert.are.same(sorted(lines), sorted(got))
  local function before(a, b) assert.is_true(at[a] < at[b], stdout) end
  before("A: step 1/3", "A: step 2/3")
  before("A: step 2/3", "A: step 3/3")
  before("B: step 1/2", "B: step 2/2")
  before("A: step 1/3", "C: step 1/1")
  before("B: step 1/2", "C: step 1/1")
  assert.is_truthy(got[#got]:find("^all done: "), stdout)
end

local UVLOOP = [[
Python: pip install uvloop, then
  asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
puts asyncio on libuv, the event loop of Node.js, for speed.
tulua: nothing to install; its event loop already is libuv.
100000 asyncio.sleep(0) round trips through libuv's loop: under a second
]]

-- Checks uvloop's output against UVLOOP, whatever the burst's speed: how
-- long it takes depends on the build and on the machine's load.
local function check_uvloop(stdout)
  assert.are.equal(UVLOOP, (stdout:gsub("over a second %(a debug or sanitizer build%?%)\n$", "under a second\n")))
end

describe("scripts/talk", function()
  it("thread_io reads six files on three threads, prints the Finish lines in any order, then the timeline", function()
    local result = run("thread_io.lua")
    assert.are.same({0, ""}, {result.status, result.stderr})
    check_thread_io(result.stdout)
  end)

  it("thread_io removes its temporary directory", function()
    local dir = os.tmpname()
    os.remove(dir)
    assert(require("tulua.fs").mkdir(dir))
    local _, _, status = os.execute(("cd %s && TMPDIR=%s %s scripts/talk/thread_io.lua > /dev/null"):format(
      support.shell_quote(ROOT), support.shell_quote(dir), support.shell_quote(support.TULUA)))
    local left = assert(require("tulua.fs").readdir(dir))
    support.remove_tree(dir)
    assert.are.same({0, {}}, {status, left})
  end)

  it("thread_cpu sums on three threads, then prints the time one after the other and on the pool, and the timeline",
    function()
      local result = run("thread_cpu.lua")
      assert.are.same({0, ""}, {result.status, result.stderr})
      check_thread_cpu(result.stdout)
    end)

  it("cpu_count prints the number of cores", function()
    local result = run("cpu_count.lua")
    assert.are.same({status = 0, stdout = cores() .. "\n", stderr = ""}, result)
    assert.is_true(cores() >= 1)
  end)

  it("process_cpu sums on three processes, prints Finish process lines in any order, then the timeline", function()
    local result = run("process_cpu.lua")
    assert.are.same({0, ""}, {result.status, result.stderr})
    check_process_cpu(result.stdout)
  end)

  it("more_workers_than_cores runs twice as many processes as cores and prints how long each task took", function()
    local result = run("more_workers_than_cores.lua")
    assert.are.same({0, ""}, {result.status, result.stderr})
    check_more_workers_than_cores(result.stdout)
  end)

  it("generator_coroutine prints the new coroutine, then Hello on the first resume and World on the send", function()
    assert.are.same({status = 0, stdout = GENERATOR_COROUTINE, stderr = ""}, (run("generator_coroutine.lua")))
  end)

  it("hello_world prints Hello World! and ends after its one-second sleep", function()
    local result, elapsed = run("hello_world.lua")
    assert.are.same({status = 0, stdout = HELLO_WORLD, stderr = ""}, result)
    assert.is_true(elapsed >= 0.95, "took " .. elapsed .. " s")
  end)

  it("compute_chain prints the computation, then 1 + 2 = 3 after compute's one-second sleep", function()
    local result, elapsed = run("compute_chain.lua")
    assert.are.same({status = 0, stdout = COMPUTE_CHAIN, stderr = ""}, result)
    assert.is_true(elapsed >= 0.95, "took " .. elapsed .. " s")
  end)

  it("event_loop interleaves three tasks on one thread: their steps in the order of their times", function()
    -- the interleaved order (C's one step last) shows that they ran at
    -- once; the sum of their sleeps would put C's step after 2.7 s
    local result, elapsed = run("event_loop.lua")
    assert.are.same({0, ""}, {result.status, result.stderr})
    check_event_loop(result.stdout)
    assert.is_true(elapsed >= 0.95, "took " .. elapsed .. " s")
  end)

  it("uvloop explains that the loop already is libuv and runs its burst of sleep(0) round trips", function()
    local result = run("uvloop.lua")
    assert.are.same({0, ""}, {result.status, result.stderr})
    check_uvloop(result.stdout)
  end)

  it("tour shows the core, then every script of the talk under its heading", function()
    local result = run("tour.lua")
    assert.are.same({0, ""}, {result.status, result.stderr})
    local core = result.stdout:match("^(.-)\n%-%-%- ")
    assert.is_truthy(core, result.stdout)
    for i = 1, 6 do
      assert.is_truthy(core:find("\n" .. i .. ". ", 1, true) or core:find("^" .. i .. "%. "), "no item " .. i)
    end
    -- Each script's output follows its heading; the pools' outputs vary,
    -- so they are checked as in their own tests.
    local headings, outputs = {}, {}
    local talk, pos = result.stdout:sub(#core + 1), 1
    while pos <= #talk do
      local heading, first = talk:match("^\n%-%-%- ([^\n]*)\n()", pos)
      assert.is_truthy(heading, talk:sub(pos))
      local last = talk:find("\n\n--- ", first, true) or #talk
      headings[#headings + 1] = heading
      outputs[#outputs + 1] = talk:sub(first, last)
      pos = last + 1
    end
    assert.are.same({
      "scripts/talk/thread_io.lua (ThreadPoolExecutor, I/O-bound: six large files on three threads)",
      "scripts/talk/thread_cpu.lua (ThreadPoolExecutor, CPU-bound: no GIL, so the threads run in parallel)",
      "scripts/talk/cpu_count.lua (os.cpu_count(): futures.cpu_count())",
      "scripts/talk/process_cpu.lua (ProcessPoolExecutor, CPU-bound: the same sums on three processes)",
      "scripts/talk/more_workers_than_cores.lua (what if the CPU had only 2 cores: more workers than cores)",
      "scripts/talk/generator_coroutine.lua (generator-based coroutines: next(c), c.send('World'))",
      "scripts/talk/hello_world.lua (async/await: hello_world)",
      "scripts/talk/compute_chain.lua (watching asyncio work: compute and print_sum)",
      "scripts/talk/event_loop.lua (the event loop: three tasks on one thread)",
      "scripts/talk/uvloop.lua (uvloop: the loop already is libuv)",
    }, headings)
    check_thread_io(outputs[1])
    check_thread_cpu(outputs[2])
    assert.are.equal(cores() .. "\n", outputs[3])
    check_process_cpu(outputs[4])
    check_more_workers_than_cores(outputs[5])
    assert.are.same({GENERATOR_COROUTINE, HELLO_WORLD, COMPUTE_CHAIN}, {table.unpack(outputs, 6, 8)})
    check_event_loop(outputs[9])
    check_uvloop(outputs[10])
  end)
end)
