-- Modules from LuaRocks and package paths: a rock built offline from
-- fixtures/rock/ (one Lua module, one C module) with Debian's luarocks
-- loads in a tulua script and in thread-pool and process-pool workers once
-- `luarocks path` is in the environment; thread-pool workers follow the
-- package.path and package.cpath the script has when it submits.

package.path = (debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or ".") .. "/?.lua;" .. package.path
local support = require("support")
local futures = require("concurrent.futures")
local shell_quote, read_file, write_file = support.shell_quote, support.read_file, support.write_file
local capture = support.capture

local function bounded(fn) return support.bounded(fn, 60) end

describe("a LuaRocks tree", function()
  local dir, tree

  setup(function()
    dir = capture("mktemp -d")
    tree = dir .. "/tree"
    -- luarocks builds in the rockspec's folder: a copy, not the fixture
    assert(os.execute("cp -r " .. shell_quote(support.FIXTURES .. "/rock") .. " " .. shell_quote(dir .. "/src")))
    local log = dir .. "/make.log"
    local ok = os.execute(string.format(
      "cd %s && luarocks --lua-version 5.4 make --deps-mode none --tree %s tuluarock-1.0-1.rockspec > %s 2>&1",
      shell_quote(dir .. "/src"), shell_quote(tree), shell_quote(log)))
    assert(ok, read_file(log))
  end)

  teardown(function()
    os.execute("rm -rf " .. shell_quote(dir))
  end)

  it("has the rock's Lua module and its C module", function()
    assert.is_truthy(io.open(tree .. "/share/lua/5.4/tuluarock/greet.lua")):close()
    assert.is_truthy(io.open(tree .. "/lib/lua/5.4/tuluarock/native.so")):close()
  end)

  it("loads in the script, a thread-pool worker and a process-pool worker with `luarocks path` set", function()
    local out, err = dir .. "/out", dir .. "/err"
    local _, _, status = os.execute(string.format(
      'env -u LUA_PATH_5_4 -u LUA_CPATH_5_4 sh -c \'eval "$(luarocks --lua-version 5.4 path --tree %s)"; '
        .. 'cd %s && exec timeout 60 %s rock_user.lua\' > %s 2> %s',
      shell_quote(tree), shell_quote(support.FIXTURES), shell_quote(support.TULUA),
      shell_quote(out), shell_quote(err)))
    assert.are.equal("", read_file(err))
    assert.are.equal(0, status)
    assert.are.equal("hello, script (42)\nhello, thread (42)\nhello, process (42)\n", read_file(out))
  end)

  it("is not found without those paths (the test above did not pass by chance)", function()
    local _, _, status = os.execute(string.format(
      "cd %s && env -u LUA_PATH -u LUA_CPATH -u LUA_PATH_5_4 -u LUA_CPATH_5_4 "
        .. "timeout 60 %s rock_user.lua > /dev/null 2>&1",
      shell_quote(support.FIXTURES), shell_quote(support.TULUA)))
    assert.are.equal(1, status)
  end)

  describe("added to package.path and package.cpath by the script", function()
    local saved_path, saved_cpath

    before_each(function()
      saved_path, saved_cpath = package.path, package.cpath
    end)

    after_each(function()
      package.path, package.cpath = saved_path, saved_cpath
      package.loaded["tuluarock.greet"], package.loaded["tuluarock.native"] = nil, nil
    end)

    local function greet(who) return require("tuluarock.greet").greet(who) end

    it("after the thread pool has started its workers", bounded(function()
      local ex <close> = futures.ThreadPoolExecutor(1)
      -- the worker started with paths that do not find the rock
      local ok, err = ex:submit(function() return pcall(require, "tuluarock.greet") end):result()
      assert.is_false(ok)
      assert.is_truthy(err:find("module 'tuluarock.greet' not found", 1, true))
      package.path = tree .. "/share/lua/5.4/?.lua;" .. package.path
      package.cpath = tree .. "/lib/lua/5.4/?.so;" .. package.cpath
      assert.are.equal("hello, worker (42)", ex:submit(greet, "worker"):result())
    end))

    it("before the pools start: each of their workers sees them", bounded(function()
      package.path = tree .. "/share/lua/5.4/?.lua;" .. package.path
      package.cpath = tree .. "/lib/lua/5.4/?.so;" .. package.cpath
      for _, kind in ipairs({"ThreadPoolExecutor", "ProcessPoolExecutor"}) do
        local ex <close> = futures[kind](2)
        local fs = {}
        for i = 1, 8 do fs[i] = ex:submit(greet, kind .. i) end
        for i = 1, 8 do assert.are.equal("hello, " .. kind .. i .. " (42)", fs[i]:result()) end
      end
    end))

    it("changed again between two submits: the next job sees the new paths", bounded(function()
      local mods = dir .. "/mods"
      os.execute("mkdir -p " .. shell_quote(mods .. "/a") .. " " .. shell_quote(mods .. "/b"))
      write_file(mods .. "/a/which_dir.lua", 'return "a"')
      write_file(mods .. "/b/which_dir.lua", 'return "b"')
      local ex <close> = futures.ThreadPoolExecutor(1)
      local function which()
        package.loaded.which_dir = nil -- the worker keeps its modules
        return require("which_dir"), package.path
      end
      package.path = mods .. "/a/?.lua"
      assert.are.same({"a", mods .. "/a/?.lua"}, {ex:submit(which):result()})
      assert.are.same({"a", mods .. "/a/?.lua"}, {ex:submit(which):result()})
      package.path = mods .. "/b/?.lua"
      assert.are.same({"b", mods .. "/b/?.lua"}, {ex:submit(which):result()})
      package.path = saved_path
      assert.are.equal(saved_path, ex:submit(function() return package.path end):result())
    end))
  end)
end)
