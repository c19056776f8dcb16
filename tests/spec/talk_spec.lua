-- The scripts of the talk's second half (scripts/talk/*.lua): each one runs
-- under tulua from the repository's root, as its header says, and must print
-- exactly what the Python it mirrors prints, exit with status 0 and write
-- nothing on stderr. Timing is checked where it is the point of the script.
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
local UVLOOP = [[
Python: pip install uvloop, then
  asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
puts asyncio on libuv, the event loop of Node.js, for speed.
tulua: nothing to install; its event loop already is libuv.
100000 asyncio.sleep(0) round trips through libuv's loop: under a second
]]

describe("scripts/talk", function()
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

  it("event_loop interleaves three tasks on one thread and takes the longest task's time, not the sum", function()
    local result, elapsed = run("event_loop.lua")
    assert.are.same({status = 0, stdout = EVENT_LOOP, stderr = ""}, result)
    assert.is_true(elapsed >= 0.95 and elapsed < 2.7, "took " .. elapsed .. " s")
  end)

  it("uvloop explains that the loop already is libuv and runs its burst of sleep(0) round trips", function()
    assert.are.same({status = 0, stdout = UVLOOP, stderr = ""}, (run("uvloop.lua")))
  end)

  it("tour shows the core, then every script of the talk's second half under its heading, within 10 s", function()
    local result, elapsed = run("tour.lua")
    assert.are.same({0, ""}, {result.status, result.stderr})
    assert.is_true(elapsed < 10, "took " .. elapsed .. " s")
    local core = result.stdout:match("^(.-)\n%-%-%- ")
    assert.is_truthy(core, result.stdout)
    for i = 1, 6 do
      assert.is_truthy(core:find("\n" .. i .. ". ", 1, true) or core:find("^" .. i .. "%. "), "no item " .. i)
    end
    local talk = result.stdout:sub(#core + 1)
    assert.are.same("\n--- scripts/talk/generator_coroutine.lua"
      .. " (generator-based coroutines: next(c), c.send('World'))\n" .. GENERATOR_COROUTINE
      .. "\n--- scripts/talk/hello_world.lua (async/await: hello_world)\n" .. HELLO_WORLD
      .. "\n--- scripts/talk/compute_chain.lua (watching asyncio work: compute and print_sum)\n" .. COMPUTE_CHAIN
      .. "\n--- scripts/talk/event_loop.lua (the event loop: three tasks on one thread)\n" .. EVENT_LOOP
      .. "\n--- scripts/talk/uvloop.lua (uvloop: the loop already is libuv)\n" .. UVLOOP, talk)
  end)
end)
