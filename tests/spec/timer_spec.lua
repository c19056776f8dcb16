-- tulua.timer: after/every run a function as a task, through Timer objects
-- with stop/active/close. Spec bodies run in the main task. Fixtures run as
-- separate tulua processes: TULUA names the binary (default build/tulua).
local tulua = require("tulua")
local timer = require("tulua.timer")

local HERE = debug.getinfo(1, "S").short_src -- as error positions show it
package.path = (debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or ".") .. "/?.lua;" .. package.path
local support = require("support")
local run_fixture = support.run_fixture
local TULUA = support.TULUA
local error_of = support.error_in(HERE)

-- Sleeps in small steps until cond() is true; false if it never became
-- true within a second.
local function eventually(cond)
  for _ = 1, 200 do
    if cond() then return true end
    tulua.sleep(0.005)
  end
  return cond()
end

describe("tulua.timer", function()
  it("is the module tulua.timer", function()
    assert.are.equal(tulua.timer, timer)
  end)

  describe("after", function()
    it("runs fn with its arguments once, as a task, after the delay", function()
      local calls = {}
      local t0 = tulua.now()
      local main = tulua.current()
      timer.after(0.05, function(...)
        calls[#calls + 1] = {
          args = table.pack(...),
          elapsed = tulua.now() - t0,
          in_task = tulua.current() ~= nil and tulua.current() ~= main,
        }
      end, 1, nil, "three", nil)
      assert.is_true(eventually(function() return #calls > 0 end))
      tulua.sleep(0.06)
      assert.are.equal(1, #calls)
      assert.are.same({n = 4, 1, nil, "three", nil}, calls[1].args)
      assert.is_true(calls[1].in_task)
      assert.is_true(calls[1].elapsed >= 0.045, "elapsed " .. calls[1].elapsed)
    end)

    it("returns an active Timer that is no longer active once it ran", function()
      local ran = false
      local tm = timer.after(0.01, function() ran = true end)
      assert.are.equal("tulua.timer", getmetatable(tm).__name)
      assert.is_true(tm:active())
      assert.is_truthy(tostring(tm):match("^Timer %(active%): "))
      assert.is_true(eventually(function() return ran end))
      assert.is_false(tm:active())
      assert.is_truthy(tostring(tm):match("^Timer %(stopped%): "))
    end)

    it("runs a function that may wait", function()
      local log = {}
      timer.after(0, function()
        log[#log + 1] = "start"
        tulua.sleep(0.01)
        log[#log + 1] = "end"
      end)
      assert.is_true(eventually(function() return #log == 2 end))
      assert.are.same({"start", "end"}, log)
    end)

    it("with 0 runs the function at the next turn of the loop", function()
      local ran = false
      timer.after(0, function() ran = true end)
      assert.is_false(ran)
      assert.is_true(eventually(function() return ran end))
    end)

    it("runs a timer nobody refers to", function()
      local ran = false
      timer.after(0.01, function() ran = true end)
      collectgarbage("collect")
      assert.is_true(eventually(function()
        collectgarbage("collect")
        return ran
      end))
    end)

    it("raises for a delay that is not a number", function()
      assert.are.equal("bad argument #1 to 'after' (number expected, got string)",
        error_of(function() timer.after("soon", print) end))
    end)

    it("raises for a negative or NaN delay", function()
      assert.are.equal("bad argument #1 to 'after' (negative or NaN duration)",
        error_of(function() timer.after(-0.5, print) end))
      assert.are.equal("bad argument #1 to 'after' (negative or NaN duration)",
        error_of(function() timer.after(0 / 0, print) end))
    end)

    it("raises for a function that is missing or not a function", function()
      assert.are.equal("bad argument #2 to 'after' (function expected, got no value)",
        error_of(function() timer.after(1) end))
      assert.are.equal("bad argument #2 to 'after' (function expected, got number)",
        error_of(function() timer.after(1, 5) end))
    end)

    it("reports an error in the function as an uncaught task error", function()
      local status, stdout, stderr = run_fixture("timer_error.lua")
      assert.are.equal(1, status)
      assert.are.equal("", stdout)
      assert.are.equal(TULUA .. ": timer_error.lua:5: timer failed\n"
        .. "stack traceback:\n"
        .. "\t[C]: in function 'error'\n"
        .. "\ttimer_error.lua:5: in function <timer_error.lua:4>\n", stderr)
    end)
  end)

  describe("every", function()
    it("runs the function repeatedly, each time as a new task, until stop()", function()
      local tasks = {}
      local t0 = tulua.now()
      local tm = timer.every(0.02, function(tag)
        tasks[#tasks + 1] = {tulua.current(), tag}
      end, "tick")
      assert.is_true(eventually(function() return #tasks >= 3 end))
      local elapsed = tulua.now() - t0
      tm:stop()
      local n = #tasks
      tulua.sleep(0.06)
      assert.are.equal(n, #tasks)
      assert.is_true(elapsed >= 0.055, "elapsed " .. elapsed)
      assert.are.same({"tick", "tick", "tick"}, {tasks[1][2], tasks[2][2], tasks[3][2]})
      assert.are_not.equal(tasks[1][1], tasks[2][1])
      assert.is_false(tm:active())
    end)

    it("stops when its own function calls stop()", function()
      local n = 0
      local tm
      tm = timer.every(0.01, function()
        n = n + 1
        if n == 2 then tm:stop() end
      end)
      assert.is_true(eventually(function() return not tm:active() end))
      tulua.sleep(0.03)
      assert.are.equal(2, n)
    end)

    it("raises for an interval that is not positive", function()
      assert.are.equal("bad argument #1 to 'every' (interval must be positive)",
        error_of(function() timer.every(0, print) end))
      assert.are.equal("bad argument #1 to 'every' (negative or NaN duration)",
        error_of(function() timer.every(-1, print) end))
    end)
  end)

  describe("stop", function()
    it("before the timer fires means the function never runs", function()
      local ran = false
      local tm = timer.after(0.01, function() ran = true end)
      tm:stop()
      assert.is_false(tm:active())
      tulua.sleep(0.03)
      assert.is_false(ran)
    end)

    it("may be called again, and on a timer that already ran", function()
      local ran = false
      local tm = timer.after(0, function() ran = true end)
      assert.is_true(eventually(function() return ran end))
      tm:stop()
      tm:stop()
      assert.is_false(tm:active())
    end)

    it("raises for a value that is not a Timer", function()
      local tm <close> = timer.after(10, print)
      local stop = tm.stop
      assert.are.equal("bad argument #1 to 'stop' (tulua.timer expected, got table)",
        error_of(function() stop({}) end))
    end)
  end)

  describe("close", function()
    it("stops the timer, and a second close does nothing", function()
      local ran = false
      local tm = timer.after(0.01, function() ran = true end)
      tm:close()
      tm:close()
      assert.are.equal("Timer (closed)", tostring(tm))
      tulua.sleep(0.03)
      assert.is_false(ran)
    end)

    it("makes the other methods raise", function()
      local tm = timer.every(0.01, print)
      tm:close()
      assert.are.equal("attempt to use a closed timer", error_of(function() tm:stop() end))
      assert.are.equal("attempt to use a closed timer", error_of(function() tm:active() end))
    end)

    it("runs for a to-be-closed variable at the end of its scope", function()
      local ran = false
      local tm
      do
        local scoped <close> = timer.after(0.01, function() ran = true end)
        tm = scoped
        assert.is_true(scoped:active())
      end
      assert.are.equal("Timer (closed)", tostring(tm))
      tulua.sleep(0.03)
      assert.is_false(ran)
    end)

    it("lets the garbage collector take a timer closed by a to-be-closed variable", function()
      local weak = setmetatable({}, {__mode = "v"})
      do
        local scoped <close> = timer.after(10, print)
        weak[1] = scoped
      end
      tulua.sleep(0.001) -- the loop turns: the timer's memory is freed
      collectgarbage("collect")
      collectgarbage("collect")
      assert.is_nil(weak[1])
    end)
  end)

  describe("garbage collection", function()
    it("takes a stopped timer nobody refers to", function()
      local weak = setmetatable({}, {__mode = "v"})
      weak[1] = timer.after(10, print)
      weak[1]:stop()
      collectgarbage("collect")
      collectgarbage("collect")
      assert.is_nil(weak[1])
    end)

    it("takes a one-shot timer nobody refers to once it ran", function()
      local weak = setmetatable({}, {__mode = "v"})
      local ran = false
      weak[1] = timer.after(0, function() ran = true end)
      assert.is_true(eventually(function() return ran end))
      collectgarbage("collect")
      collectgarbage("collect")
      assert.is_nil(weak[1])
    end)

    it("keeps an active timer nobody refers to", function()
      local weak = setmetatable({}, {__mode = "v"})
      local n = 0
      weak[1] = timer.every(0.01, function() n = n + 1 end)
      collectgarbage("collect")
      collectgarbage("collect")
      assert.is_not_nil(weak[1])
      assert.is_true(eventually(function() return n >= 2 end))
      weak[1]:close()
    end)
  end)
end)
