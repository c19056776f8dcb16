-- The runtime's coroutine library: a wait inside a user coroutine suspends
-- the whole task and completes inside the coroutine; plain yields keep
-- Lua's meaning. Spec bodies run in the main task.
local tulua = require("tulua")

local HERE = debug.getinfo(1, "S").short_src

package.path = (debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or ".") .. "/?.lua;" .. package.path
local raised = require("support").raised

-- The line of the caller of this function.
local function line()
  return debug.getinfo(2, "l").currentline
end

describe("coroutine", function()
  describe("wrap", function()
    it("makes a generator that sleeps between yields and produces values in order", function()
      local gen = coroutine.wrap(function()
        for i = 1, 3 do
          tulua.sleep(0.01)
          coroutine.yield(i)
        end
        return "end"
      end)
      local t0 = tulua.now()
      assert.are.same({1, 2, 3, "end"}, {gen(), gen(), gen(), gen()})
      assert.is_true(tulua.now() - t0 >= 0.029)
    end)

    it("serves as a for-loop iterator that waits", function()
      local got = {}
      for v in coroutine.wrap(function()
        for i = 1, 3 do
          tulua.sleep(0.001)
          coroutine.yield(i * 10)
        end
      end) do
        got[#got + 1] = v
      end
      assert.are.same({10, 20, 30}, got)
    end)

    it("passes values both ways, and returns the function's results", function()
      local gen = coroutine.wrap(function(a)
        tulua.sleep(0)
        local b = coroutine.yield(a + 1)
        tulua.sleep(0)
        return b, nil, "last"
      end)
      assert.are.equal(2, gen(1))
      assert.are.same({n = 3, "back", nil, "last"}, table.pack(gen("back")))
    end)

    it("propagates an error raised after a wait, with the caller's position", function()
      local err_line
      local gen = coroutine.wrap(function()
        tulua.sleep(0.01)
        err_line = line() error("inner")
      end)
      local call_line
      local err = raised(function()
        call_line = line() gen()
      end)
      assert.are.equal(string.format("%s:%d: %s:%d: inner", HERE, call_line, HERE, err_line), err)
    end)

    it("propagates a table error raised after a wait as the same object", function()
      local e = {}
      local gen = coroutine.wrap(function()
        tulua.sleep(0)
        error(e)
      end)
      assert.are.equal(e, raised(gen))
    end)

    it("raises when called again after it finished", function()
      local gen = coroutine.wrap(function() tulua.sleep(0) end)
      gen()
      assert.are.equal("cannot resume dead coroutine", raised(gen))
    end)
  end)

  describe("create and resume", function()
    it("return true and the values when the coroutine waits inside", function()
      local co = coroutine.create(function(a, b)
        tulua.sleep(0.01)
        local c = coroutine.yield(a + b)
        tulua.sleep(0.01)
        return c * 2, "end"
      end)
      assert.are.same({true, 3}, {coroutine.resume(co, 1, 2)})
      assert.are.equal("suspended", coroutine.status(co))
      assert.are.same({true, 20, "end"}, {coroutine.resume(co, 10)})
      assert.are.equal("dead", coroutine.status(co))
      assert.are.same({false, "cannot resume dead coroutine"}, {coroutine.resume(co)})
    end)

    it("keep plain yields standard: values pass both ways", function()
      local co = coroutine.create(function(...)
        local got = {...}
        local more = {coroutine.yield(#got, "first")}
        return table.unpack(more)
      end)
      assert.are.same({true, 2, "first"}, {coroutine.resume(co, "a", "b")})
      assert.are.same({true, "x", "y", "z"}, {coroutine.resume(co, "x", "y", "z")})
    end)

    it("return false and the error raised after a wait", function()
      local err_line
      local co = coroutine.create(function()
        tulua.sleep(0)
        err_line = line() error("oops")
      end)
      local ok, err = coroutine.resume(co)
      assert.are.same({false, string.format("%s:%d: oops", HERE, err_line)}, {ok, err})
      assert.are.equal("dead", coroutine.status(co))
    end)

    it("show the coroutine as running to itself, also after a wait", function()
      local co
      co = coroutine.create(function()
        tulua.sleep(0)
        return coroutine.status(co), coroutine.running()
      end)
      assert.are.same({true, "running", co, false}, {coroutine.resume(co)})
    end)

    it("refuse to resume a task's thread", function()
      local main = coroutine.running()
      assert.are.same({false, "cannot resume a task (join it instead)"}, {coroutine.resume(main)})
    end)

    it("let other tasks run while the coroutine waits", function()
      local log = {}
      local other = tulua.spawn(function()
        log[#log + 1] = "other"
      end)
      local co = coroutine.create(function()
        log[#log + 1] = "before wait"
        tulua.sleep(0.01)
        log[#log + 1] = "after wait"
      end)
      assert.is_true(coroutine.resume(co))
      other:join()
      assert.are.same({"before wait", "other", "after wait"}, log)
    end)

    it("let a coroutine that yielded in one task wait when resumed in another", function()
      local co = coroutine.create(function()
        local x = coroutine.yield("paused")
        tulua.sleep(0.01)
        return x .. " done"
      end)
      assert.are.same({true, "paused"}, {coroutine.resume(co)})
      local t = tulua.spawn(function() return coroutine.resume(co, "resumed") end)
      assert.are.same({true, "resumed done"}, {t:join()})
    end)
  end)

  describe("yield", function()
    it("raises at a task's top level", function()
      assert.are.equal("attempt to yield from outside a coroutine", raised(coroutine.yield, 1))
    end)

    it("raises at the top level of a spawned task", function()
      local t = tulua.spawn(function()
        return raised(coroutine.yield)
      end)
      assert.are.equal("attempt to yield from outside a coroutine", t:join())
    end)
  end)

  describe("isyieldable", function()
    it("is false at a task's top level", function()
      assert.is_false(coroutine.isyieldable())
      local t = tulua.spawn(coroutine.isyieldable)
      assert.is_false(t:join())
    end)

    it("is true inside a coroutine, also after a wait", function()
      local co = coroutine.wrap(function()
        local before = coroutine.isyieldable()
        tulua.sleep(0)
        return before, coroutine.isyieldable()
      end)
      assert.are.same({true, true}, {co()})
    end)
  end)

  describe("running", function()
    it("returns a thread and true at a task's top level", function()
      local th, ismain = coroutine.running()
      assert.are.equal("thread", type(th))
      assert.is_true(ismain)
    end)

    it("returns a different thread for every task", function()
      local t = tulua.spawn(function() return coroutine.running() end)
      local th, ismain = t:join()
      assert.are.equal("thread", type(th))
      assert.is_true(ismain)
      assert.are_not.equal(coroutine.running(), th)
    end)
  end)

  describe("status", function()
    it("is 'normal' for a coroutine waiting in another task, which cannot resume or close it", function()
      local co = coroutine.create(function()
        tulua.sleep(0.05)
        return "finished"
      end)
      local owner = tulua.spawn(function() return coroutine.resume(co) end)
      tulua.sleep(0.01)
      assert.are.equal("waiting", owner:status())
      assert.are.equal("normal", coroutine.status(co))
      assert.are.same({false, "cannot resume non-suspended coroutine"}, {coroutine.resume(co)})
      assert.are.equal("cannot close a normal coroutine", raised(coroutine.close, co))
      assert.are.same({true, "finished"}, {owner:join()})
      assert.are.equal("dead", coroutine.status(co))
    end)

    it("is 'normal' for a task's thread seen from another task", function()
      local t = tulua.spawn(function()
        local th = coroutine.running()
        tulua.sleep(0.01)
        return th
      end)
      tulua.sleep(0)
      local th = coroutine.running()
      local other = tulua.spawn(function() return coroutine.status(th) end)
      assert.are.equal("normal", other:join())
      t:join()
    end)
  end)

  describe("close", function()
    it("closes a suspended coroutine and its to-be-closed variables", function()
      local closed = false
      local co = coroutine.create(function()
        local guard <close> = setmetatable({}, { -- luacheck: no unused
          __close = function() closed = true end,
        })
        tulua.sleep(0)
        coroutine.yield("paused")
      end)
      assert.are.same({true, "paused"}, {coroutine.resume(co)})
      assert.is_true(coroutine.close(co))
      assert.is_true(closed)
      assert.are.equal("dead", coroutine.status(co))
    end)

    it("returns false and the error of a __close that raises", function()
      local err_line
      local co = coroutine.create(function()
        local guard <close> = setmetatable({}, { -- luacheck: no unused
          __close = function() err_line = line() error("in close") end,
        })
        coroutine.yield()
      end)
      coroutine.resume(co)
      local result = {coroutine.close(co)}
      assert.are.same({false, string.format("%s:%d: in close", HERE, err_line)}, result)
    end)

    it("raises Lua's message for the running task's own thread", function()
      assert.are.equal("cannot close a running coroutine", raised(coroutine.close, coroutine.running()))
    end)

    it("raises Lua's message for a task that resumed the caller (normal)", function()
      local task = coroutine.running()
      local co = coroutine.wrap(function() return raised(coroutine.close, task) end)
      assert.are.equal("cannot close a normal coroutine", co())
    end)

    it("raises Lua's message for a coroutine that resumed the caller (normal)", function()
      local outer
      outer = coroutine.create(function()
        return coroutine.wrap(function() return raised(coroutine.close, outer) end)()
      end)
      assert.are.same({true, "cannot close a normal coroutine"}, {coroutine.resume(outer)})
    end)

    it("raises tulua's message for a suspended task closed from outside", function()
      local t = tulua.spawn(function() tulua.sleep(0.01) end)
      tulua.sleep(0)
      assert.are.equal("cannot close a task (cancel it instead)", raised(coroutine.close, t))
      t:join()
    end)
  end)

  describe("nested coroutines", function()
    it("may all wait, each at its own level", function()
      local outer = coroutine.wrap(function()
        local inner = coroutine.wrap(function()
          tulua.sleep(0.01)
          coroutine.yield("inner 1")
          tulua.sleep(0.01)
          return "inner 2"
        end)
        tulua.sleep(0.01)
        coroutine.yield(inner())
        tulua.sleep(0.01)
        coroutine.yield(inner())
        return "outer"
      end)
      assert.are.same({"inner 1", "inner 2", "outer"}, {outer(), outer(), outer()})
    end)

    it("propagate an error raised in the inner one after its wait through both", function()
      local err_line, inner_line
      local outer = coroutine.create(function()
        local inner = coroutine.wrap(function()
          tulua.sleep(0.01)
          err_line = line() error("deep")
        end)
        tulua.sleep(0)
        inner_line = line() inner()
      end)
      local ok, err = coroutine.resume(outer)
      assert.are.same({false, string.format("%s:%d: %s:%d: deep", HERE, inner_line, HERE, err_line)}, {ok, err})
    end)
  end)

  describe("a task cancelled while a coroutine of it waits", function()
    it("makes resume return false and the cancellation error, and the task goes on", function()
      local co = coroutine.create(function() tulua.sleep(10) end)
      local t = tulua.spawn(function()
        local ok, err = coroutine.resume(co)
        tulua.sleep(0.01) -- the task itself may wait again
        return ok, err.code, coroutine.status(co)
      end)
      tulua.sleep(0)
      assert.is_true(t:cancel())
      assert.are.same({false, "ECANCELED", "dead"}, {t:join()})
      assert.are.equal("done", t:status())
    end)

    it("closes the to-be-closed variables of the coroutine", function()
      local closed_with
      local t = tulua.spawn(function()
        local gen = coroutine.wrap(function()
          local guard <close> = setmetatable({}, { -- luacheck: no unused
            __close = function(_, err) closed_with = err end,
          })
          tulua.sleep(10)
        end)
        gen()
      end)
      tulua.sleep(0)
      t:cancel()
      local err = raised(t.join, t)
      assert.are.equal("ECANCELED", err.code)
      assert.are.equal(err, closed_with)
      assert.are.equal("cancelled", t:status())
    end)

    it("cancels the task through a wrapped coroutine nested two deep", function()
      local t = tulua.spawn(function()
        local outer = coroutine.wrap(function()
          local inner = coroutine.wrap(function() tulua.sleep(10) end)
          inner()
        end)
        outer()
      end)
      tulua.sleep(0)
      t:cancel()
      assert.are.equal("ECANCELED", raised(t.join, t).code)
      assert.is_true(t:cancelled())
    end)
  end)

  describe("a Task's thread", function()
    it("is the Task itself, a thread that prints as any thread", function()
      local t = tulua.spawn(function() end)
      assert.are.equal("thread", type(t))
      assert.is_truthy(tostring(t):match("^thread: 0x%x+$"))
      t:join()
    end)

    it("is 'normal' while the task waits and 'dead' once it finished", function()
      local t = tulua.spawn(tulua.sleep, 0.01)
      tulua.sleep(0)
      assert.are.equal("normal", coroutine.status(t))
      t:join()
      assert.are.equal("dead", coroutine.status(t))
      assert.are.same({false, "cannot resume a task (join it instead)"}, {coroutine.resume(t)})
    end)

    it("has no methods when it is not a task: indexing raises as in Lua", function()
      local co = coroutine.create(function() end)
      local ok, err = pcall(function() return co.join end)
      assert.is_false(ok)
      assert.are.equal(HERE .. ":", err:sub(1, #HERE + 1))
      assert.is_truthy(err:match(": attempt to index a thread value$"), err)
    end)

    it("keeps lua5.4's message for a thread raised as an error", function()
      local co = coroutine.create(function() end)
      assert.are.equal(co, select(2, pcall(error, co)))
      assert.is_nil(getmetatable(co).__tostring)
    end)
  end)
end)
