-- require "luv" under tulua (bindings/luv.c): Debian's luv on tulua's own
-- loop, its callbacks run as tasks. luv code written for lua5.4 prints the
-- same under both; luv beside tasks (a luv server and a tulua.net client,
-- a callback that waits); uv.run, uv.stop, uv.walk; a callback's error;
-- luv in thread-pool and process-pool workers. Scripts run as processes of
-- their own (fixtures/luv_*.lua), bounded by timeout(1).

package.path = (debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or ".") .. "/?.lua;" .. package.path
local support = require("support")

-- Neither binary may find another luv, or another path, than Debian's; a
-- script that hangs is killed after 60 s (status 124).
local CLEAN_ENV = "env -u LUA_INIT -u LUA_INIT_5_4 -u LUA_PATH -u LUA_PATH_5_4 -u LUA_CPATH -u LUA_CPATH_5_4 timeout 60"

local function run(program, script)
  return support.run_fixture(script, {program = program, env = CLEAN_ENV})
end

describe("luv", function()
  it("is Debian's lua-luv, installed (scripts/deps.sh)", function()
    assert.is_truthy(package.searchpath("luv", "/usr/lib/x86_64-linux-gnu/lua/5.4/?.so"))
  end)

  it("runs luv code written for lua5.4 as lua5.4 does: timers, TCP echo, fs callbacks, uv.run", function()
    local ref_status, ref_out, ref_err = run("lua5.4", "luv_plain.lua")
    assert.are.equal(0, ref_status, ref_err)
    local status, out, err = run(support.TULUA, "luv_plain.lua")
    assert.are.equal("", err)
    assert.are.equal(0, status)
    assert.are.equal(ref_out, out)
    -- what it prints, so that two empty outputs cannot agree
    assert.are.equal(table.concat({
      "before run",
      "run returns\tfalse",
      "client got ECHO ME",
      "file removed",
      "ticker stopped after 3",
      "wrote 14 bytes",
      "loop alive\tfalse",
    }, "\n") .. "\n", out)
  end)

  it("shares tulua's loop: a luv server and a tulua client, callbacks as tasks, uv.run/stop/walk", function()
    local status, out, err = run(support.TULUA, "luv_tasks.lua")
    assert.are.equal("", err)
    assert.are.equal(0, status)
    assert.are.equal(table.concat({
      "tulua client got\tONE LINE",
      "run returns\tfalse",
      -- the task's 20 ms sleep ends first; the luv callback sleeps in its task
      "task, luv timer, luv timer after its sleep",
      "uv.run waited\ttrue",
      "stopped run returns\ttrue",
      "once\tfalse\tnowait\tfalse",
      "false\tuv.walk is not available in tulua: the loop is shared with tulua's own handles",
      "loop_close\t0",
      "second run\tfalse\tuv.run: another task is in uv.run already",
      "left\tfalse\ttrue",
    }, "\n") .. "\n", out)
  end)

  it("reports a callback's error as a task's, and the loop goes on (status 1)", function()
    local status, out, err = run(support.TULUA, "luv_error.lua")
    assert.are.equal(1, status)
    assert.are.equal("the next callback ran\n", out)
    assert.is_truthy(err:find("luv_error.lua:5: raised in a luv callback\nstack traceback:", 1, true), err)
  end)

  it("loads in thread-pool and process-pool workers, each on its worker's loop", function()
    local status, out, err = run(support.TULUA, "luv_workers.lua")
    assert.are.equal("", err)
    assert.are.equal(0, status)
    assert.are.equal("thread\t3\t3\nprocess\t3\t3\n", out)
  end)

  it("raises as require does when no luv is on package.cpath", function()
    local saved = package.cpath
    package.cpath = "/nonexistent/?.so"
    local ok, err = pcall(require, "luv")
    package.cpath = saved
    assert.is_false(ok)
    assert.is_truthy(err:find("module 'luv' not found:\n\tno file '/nonexistent/luv.so'", 1, true), err)
    assert.is_nil(package.loaded.luv)
  end)
end)
