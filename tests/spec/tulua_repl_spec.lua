-- The module 'tulua.repl': show() and show_all(), which turn the REPL's
-- results into text, and complete(), which lists the completions of the
-- word at the cursor. Spec bodies run in the main task, so they wait
-- directly.
local repl = require("tulua.repl")
local tulua = require("tulua")
local asyncio = require("asyncio")

local show, show_all, complete = repl.show, repl.show_all, repl.complete
local HERE = debug.getinfo(1, "S").short_src -- as function positions show it

package.path = (debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or ".") .. "/?.lua;" .. package.path
local raised = require("support").raised

-- A metatable whose every metamethod but __tostring raises: a proxy.
local function hostile_mt()
  local function boom() error("metamethod called") end
  return {__index = boom, __newindex = boom, __pairs = boom, __len = boom, __eq = boom, __lt = boom,
    __le = boom, __concat = boom, __call = boom, __close = boom}
end

-- Spawns a task named name that sleeps until cancelled.
local function sleeper(name)
  local t = tulua.spawn(function() tulua.sleep(3600) end)
  t:set_name(name)
  return t
end

-- Cancels task t and waits for its end.
local function stop(t)
  t:cancel()
  pcall(t.join, t)
end

describe("tulua.repl", function()
  describe("show", function()
    describe("for nil, booleans and numbers", function()
      it("shows them as tostring does", function()
        assert.are.same({"nil", "true", "false", "3", "-7", "1.0", "-0.0", "0.1", "1e+100", "inf", "-inf",
          "-9223372036854775808", "9.007199254741e+15"},
          {show(nil), show(true), show(false), show(3), show(-7), show(1.0), show(-0.0), show(0.1), show(1e100),
            show(1 / 0), show(-1 / 0), show(math.mininteger), show(2.0 ^ 53)})
      end)

      it("shows NaN as tostring does", function()
        local nan = 0 / 0
        assert.are.equal(tostring(nan), show(nan))
      end)
    end)

    describe("for strings", function()
      it("quotes a string in double quotes", function()
        assert.are.equal('"hello, world"', show("hello, world"))
      end)

      it("escapes double quotes and backslashes", function()
        assert.are.equal([["say \"hi\" \\ bye"]], show([[say "hi" \ bye]]))
      end)

      it("escapes control characters the way Lua reads them back", function()
        local s = "a\nb\tc\0d\0012\127\r"
        assert.are.equal([["a\nb\tc\0d\0012\127\r"]], show(s))
        assert.are.equal(s, load("return " .. show(s))())
      end)

      it("leaves UTF-8 text as it is", function()
        assert.are.equal('"héllo wörld"', show("héllo wörld"))
      end)

      it("escapes the bytes above 127 of a string that is not UTF-8", function()
        assert.are.equal([["caf\233 \255\0001"]], show("caf\233 \255\0001"))
      end)

      it("shows a string of max_string bytes whole", function()
        local s = string.rep("a", 200)
        assert.are.equal('"' .. s .. '"', show(s))
      end)

      it("cuts a longer string after 200 bytes and notes its length", function()
        local s = string.rep("a", 200) .. "bcd"
        assert.are.equal('"' .. string.rep("a", 200) .. '"... (203 bytes)', show(s))
      end)

      it("cuts after opts.max_string bytes", function()
        assert.are.equal('"abc"... (6 bytes)', show("abcdef", {max_string = 3}))
        assert.are.equal('""... (6 bytes)', show("abcdef", {max_string = 0}))
      end)

      it("does not cut inside a UTF-8 sequence", function()
        assert.are.equal('"a"... (5 bytes)', show("aéé", {max_string = 2}))
        assert.are.equal('"aé"... (5 bytes)', show("aéé", {max_string = 4}))
      end)
    end)

    describe("for tables", function()
      it("shows an empty table as {}", function()
        assert.are.equal("{}", show({}))
      end)

      it("shows a sequence as a list of values", function()
        assert.are.equal('{1, 2, 3, "four", true}', show({1, 2, 3, "four", true}))
      end)

      it("shows names as bare keys and other keys in brackets", function()
        assert.are.equal('{a = 1, ["key with space"] = 2, [true] = 3}',
          show({a = 1, ["key with space"] = 2, [true] = 3}))
      end)

      it("puts keywords and names starting with a digit in brackets", function()
        assert.are.equal('{["1x"] = 4, _x = 5, ["end"] = 1, ["for"] = 2, x1 = 3}',
          show({["end"] = 1, ["for"] = 2, x1 = 3, ["1x"] = 4, _x = 5}))
      end)

      it("shows the sequence part first, then the other keys", function()
        assert.are.equal('{1, 2, 3, [10] = 10, x = "y"}', show({1, 2, 3, x = "y", [10] = 10}))
      end)

      it("shows the values after a hole with their keys", function()
        assert.are.equal("{1, [3] = 3, [4] = 4}", show({1, nil, 3, 4}))
      end)

      it("sorts numbers ascending, then strings, then the other keys by type name", function()
        local t = {b = 2, a = 1, [3.5] = "f", [-1] = "n", [2] = "i", [true] = "t", [false] = "f", [print] = "p",
          [{}] = "table"}
        assert.are.equal('{[-1] = "n", [2] = "i", [3.5] = "f", a = 1, b = 2, [false] = "f", [true] = "t", ' ..
          '[function: builtin] = "p", [{}] = "table"}', show(t, {width = 200}))
      end)

      it("sorts keys of one type without calling their metamethods", function()
        local k1, k2 = setmetatable({}, hostile_mt()), setmetatable({}, hostile_mt())
        local first, second = k1, k2
        if string.format("%p", k2) < string.format("%p", k1) then first, second = k2, k1 end
        local t = {[k1] = 1, [k2] = 2}
        assert.are.equal(string.format("{[{}] = %d, [{}] = %d}", t[first], t[second]), show(t))
      end)

      it("shows nested tables on one line when it fits", function()
        assert.are.equal("{a = {1, 2}, b = {c = true, d = {}}}", show({a = {1, 2}, b = {c = true, d = {}}}))
      end)

      it("spreads a table over lines, two spaces a level, when its line would pass width", function()
        local t = {name = "tulua", list = {1, 2, 3}, nested = {alpha = "aaaaaaaaaa", beta = "bbbbbbbbbb"}}
        assert.are.equal([[
{
  list = {1, 2, 3},
  name = "tulua",
  nested = {
    alpha = "aaaaaaaaaa",
    beta = "bbbbbbbbbb"
  }
}]], show(t, {width = 30}))
      end)

      it("keeps a table on one line up to 80 columns by default", function()
        local fits = string.rep("x", 76) -- with {" and "}: 80 columns
        assert.are.equal('{"' .. fits .. '"}', show({fits}))
        local too_long = string.rep("x", 77)
        assert.are.equal('{\n  "' .. too_long .. '"\n}', show({too_long}))
      end)

      it("counts the columns before a nested table", function()
        local inner = {string.rep("y", 12)}
        assert.are.equal('{k = {"yyyyyyyyyyyy"}}', show({k = inner}, {width = 22}))
        assert.are.equal('{\n  k = {"yyyyyyyyyyyy"},\n  z = 1\n}', show({k = inner, z = 1}, {width = 22}))
        assert.are.equal('{\n  k = {\n    "yyyyyyyyyyyy"\n  },\n  z = 1\n}', show({k = inner, z = 1}, {width = 21}))
      end)

      it("packs short sequence items on shared lines when spread", function()
        local t = {}
        for i = 1, 12 do t[i] = i end
        t.key = "v"
        assert.are.equal('{\n  1, 2, 3, 4, 5, 6,\n  7, 8, 9, 10, 11,\n  12,\n  key = "v"\n}', show(t, {width = 20}))
      end)

      it("puts each sequence item on its own line when one of them is long", function()
        assert.are.equal('{\n  1,\n  "a string of 20 cols"\n}', show({1, "a string of 20 cols"}, {width = 20}))
      end)

      it("shows tables deeper than 4 levels as {...}", function()
        assert.are.equal("{1, {2, {3, {4, {...}}}}}", show({1, {2, {3, {4, {5}}}}}))
      end)

      it("shows tables deeper than opts.depth as {...}, and empty ones as {}", function()
        assert.are.equal("{1, {...}, {}}", show({1, {2}, {}}, {depth = 1}))
        assert.are.equal("{...}", show({1}, {depth = 0}))
      end)

      it("shows 100 entries, then how many more there are", function()
        local t, shown = {}, {}
        for i = 1, 150 do t[i] = i end
        for i = 1, 100 do shown[i] = i end
        assert.are.equal("{" .. table.concat(shown, ", ") .. ", ... (50 more)}", show(t, {width = 1000}))
      end)

      it("counts the keyed entries in opts.max_items", function()
        assert.are.equal("{1, 2, 3, ... (2 more)}", show({1, 2, 3, 4, 5}, {max_items = 3}))
        assert.are.equal("{1, 2, a = 1, ... (1 more)}", show({1, 2, a = 1, b = 2}, {max_items = 3}))
        assert.are.equal("{... (2 more)}", show({a = 1, b = 2}, {max_items = 0}))
      end)

      it("labels a table inside itself and shows the inner reference as a cycle", function()
        local c = {name = "c"}
        c.self = c
        assert.are.equal('<1>{name = "c", self = <cycle 1>}', show(c))
      end)

      it("labels a table reached twice and shows the second time as a reference", function()
        local x = {1}
        assert.are.equal("{<1>{1}, <ref 1>}", show({x, x}))
        assert.are.equal("{a = <1>{1}, b = {<ref 1>}}", show({a = x, b = {x}}))
      end)

      it("numbers the labels in the order the tables appear", function()
        local a, b = {}, {}
        a.b, b.a = b, a
        assert.are.equal("{<1>{b = <2>{a = <cycle 1>}}, <ref 2>}", show({a, b}))
      end)

      it("finds a cycle through a key", function()
        local k = {}
        k[k] = true
        assert.are.equal("<1>{[<cycle 1>] = true}", show(k))
      end)

      it("shows a table reached again as a reference even below depth", function()
        local x = {1}
        assert.are.equal("{<1>{1}, {<ref 1>}}", show({x, {x}}, {depth = 2}))
        assert.are.equal("{{1}, {{...}}}", show({x, {{x}}}, {depth = 2})) -- the second x is never reached
      end)

      it("shows a table with a __tostring as its tostring", function()
        local p = setmetatable({x = 1, y = 2}, {
          __tostring = function(self) return ("point(%d, %d)"):format(self.x, self.y) end,
        })
        assert.are.equal("point(1, 2)", show(p))
        assert.are.equal("{point(1, 2), at = point(1, 2)}", show({p, at = p}))
      end)

      it("shows a __tostring that raises instead of raising", function()
        local t = setmetatable({}, {__tostring = function() error("boom", 0) end})
        assert.are.equal(string.format("<table: %p: __tostring failed: boom>", t), show(t))
        local named = setmetatable({}, {__name = "Point", __tostring = function() error({}) end})
        assert.are.equal(string.format("<Point: %p: __tostring failed: (error object is a table value)>", named),
          show(named))
      end)

      it("shows a __tostring that returns no string instead of raising", function()
        local t = setmetatable({}, {__tostring = function() return true end})
        assert.are.equal(string.format("<table: %p: __tostring failed: '__tostring' must return a string>", t), show(t))
      end)

      it("prefixes a table with a string __name with that name", function()
        local mt = {__name = "Point"}
        assert.are.equal("<Point: {x = 1}>", show(setmetatable({x = 1}, mt)))
        assert.are.equal("{<Point: {...}>}", show({setmetatable({x = 1}, mt)}, {depth = 1}))
        assert.are.equal("{x = 1}", show(setmetatable({x = 1}, {__name = 42})))
      end)

      it("shows a proxy's raw content without calling its metamethods", function()
        local proxy = setmetatable({}, hostile_mt())
        assert.are.equal("{}", show(proxy))
        local stuffed = setmetatable({1, 2, a = 3}, hostile_mt())
        assert.are.equal("{1, 2, a = 3, p = {}}", show(rawset(stuffed, "p", proxy)))
      end)

      it("sees through a protected metatable", function()
        local t = setmetatable({x = 1}, {__name = "Locked", __metatable = "no access"})
        assert.are.equal("<Locked: {x = 1}>", show(t))
      end)

      it("shows the error instead of raising when the nesting is too deep for the stack", function()
        local deep = {}
        for _ = 1, 200000 do deep = {deep} end
        local s = show(deep, {depth = 1000000})
        local prefix = string.format("<table: %p: show failed: ", deep)
        assert.are.equal(prefix, s:sub(1, #prefix))
        assert.are.equal("stack overflow>", s:sub(-#"stack overflow>"))
      end)
    end)

    describe("for functions", function()
      it("shows a C function as builtin", function()
        assert.are.equal("function: builtin", show(print))
      end)

      it("shows a Lua function with the file and line where it is defined", function()
        local function f() end
        assert.are.equal(string.format("function: %s:%d", HERE, debug.getinfo(1, "l").currentline - 1), show(f))
        assert.are.equal("function: stdin:2", show(load("\nreturn function() end", "=stdin")()))
      end)

      it("shows a main chunk as such", function()
        assert.are.equal("function: stdin (main chunk)", show(load("return 1", "=stdin")))
      end)
    end)

    describe("for threads", function()
      it("shows a task with its name and status", function()
        local t = sleeper("sleeper")
        finally(function() stop(t) end)
        assert.are.equal("<Task 'sleeper' ready>", show(t))
        tulua.sleep(0)
        assert.are.equal("<Task 'sleeper' waiting>", show(t))
        stop(t)
        assert.are.equal("<Task 'sleeper' cancelled>", show(t))
      end)

      it("shows a finished task as done or failed", function()
        local ok = tulua.spawn(function() return 1 end)
        ok:set_name("ok")
        ok:join()
        local bad = tulua.spawn(function() error("oops", 0) end)
        bad:set_name("bad")
        assert.are.equal("oops", (raised(bad.join, bad):match("^[^\n]*")))
        assert.are.equal("{<Task 'ok' done>, <Task 'bad' failed>}", show({ok, bad}))
      end)

      it("shows a task's default name and the running task", function()
        local t = tulua.spawn(function() end)
        local expected = "<Task '" .. t:get_name() .. "' ready>"
        assert.are.equal(expected, show(t))
        t:join()
        assert.are.equal("<Task '" .. tulua.current():get_name() .. "' running>", show(tulua.current()))
      end)

      it("shows another thread with its address and coroutine status", function()
        local co
        co = coroutine.create(function()
          coroutine.yield(show(co))
        end)
        assert.are.equal(string.format("thread: %p (suspended)", co), show(co))
        assert.are.same({true, string.format("thread: %p (running)", co)}, {coroutine.resume(co)})
        coroutine.resume(co)
        assert.are.equal(string.format("thread: %p (dead)", co), show(co))
      end)
    end)

    describe("for asyncio Futures", function()
      it("shows a Future with its status", function()
        local pending, done, failed, cancelled = asyncio.Future(), asyncio.Future(), asyncio.Future(), asyncio.Future()
        done:set_result(1)
        failed:set_exception("e")
        cancelled:cancel()
        assert.are.same({"<Future pending>", "<Future done>", "<Future failed>", "<Future cancelled>"},
          {show(pending), show(done), show(failed), show(cancelled)})
        assert.are.equal("{f = <Future pending>}", show({f = pending}))
      end)
    end)

    describe("for userdata", function()
      it("shows a userdata as tostring does", function()
        assert.are.equal(tostring(io.stdout), show(io.stdout))
        local f = assert(io.tmpfile())
        f:close()
        assert.are.equal("file (closed)", show(f))
      end)
    end)

    describe("options", function()
      it("raises for an opts that is not a table", function()
        assert.has_error(function() show(1, "wide") end, "bad argument #2 to 'show' (table expected, got string)")
      end)

      it("raises for a limit that is not a non-negative integer", function()
        assert.has_error(function() show(1, {depth = -1}) end,
          "bad argument #2 to 'show' (field 'depth' must be a non-negative integer)")
        assert.has_error(function() show(1, {width = 1.5}) end,
          "bad argument #2 to 'show' (field 'width' must be a non-negative integer)")
      end)
    end)
  end)

  describe("show_all", function()
    it("joins the shown values with tabs", function()
      assert.are.equal('1\t"a"\t{2}', show_all(1, "a", {2}))
    end)

    it("shows every nil, trailing ones included", function()
      assert.are.equal("nil\t1\tnil\tnil", show_all(nil, 1, nil, nil))
    end)

    it("returns an empty string for no values", function()
      assert.are.equal("", show_all())
    end)
  end)

  describe("complete", function()
    it("completes a global name in _G by default", function()
      assert.are.same({"rawequal", "rawget", "rawlen", "rawset"}, complete("raw"))
      assert.are.same({"coroutine.running"}, complete("coroutine.run"))
    end)

    it("completes a field of a library table", function()
      assert.are.same({"string.format"}, complete("string.fo"))
    end)

    it("offers the keywords for a word without a dot", function()
      assert.are.same({"false", "foo", "for", "fun", "function"}, complete("f", {fun = 1, foo = 2}))
    end)

    it("offers no keyword after a dot and no key that is a keyword", function()
      assert.are.same({"t.fox"}, complete("t.f", {t = {["for"] = 1, fox = 2, ["f x"] = 3}}))
    end)

    it("completes in nested tables", function()
      local env = {a = {b = {count = 1, color = 2, other = 3}}}
      assert.are.same({"a.b.color", "a.b.count"}, complete("a.b.c", env))
    end)

    it("lists every key after a dot with nothing after it", function()
      assert.are.same({"a.x", "a.y"}, complete("a.", {a = {x = 1, y = 2, [1] = 3, [true] = 4}}))
    end)

    it("offers only the functions after a colon, own keys and the metatable's __index", function()
      local Class = {move = function() end, mass = 10}
      Class.__index = Class
      local env = {obj = setmetatable({mark = 1, make = function() end}, Class)}
      assert.are.same({"obj:make", "obj:move"}, complete("obj:m", env))
      assert.are.same({"obj.make", "obj.mark", "obj.mass", "obj.move"}, complete("obj.m", env))
    end)

    it("lets an own key hide the method of the same name", function()
      local Class = {move = function() end}
      Class.__index = Class
      assert.are.same({}, complete("obj:mo", {obj = setmetatable({move = 1}, Class)}))
    end)

    it("offers the keys starting with two underscores only after an underscore", function()
      local Class = {run = function() end}
      Class.__index = Class
      local env = {obj = setmetatable({}, Class)}
      assert.are.same({"obj.run"}, complete("obj.", env))
      assert.are.same({"obj.__index"}, complete("obj._", env))
    end)

    it("follows a chain of __index tables", function()
      local Base = {base_fn = function() end, sub = {deep = 1}}
      Base.__index = Base
      local Derived = setmetatable({derived_fn = function() end}, Base)
      Derived.__index = Derived
      local env = {obj = setmetatable({}, Derived)}
      assert.are.same({"obj:base_fn", "obj:derived_fn"}, complete("obj:", env))
      assert.are.same({"obj.sub.deep"}, complete("obj.sub.d", env))
    end)

    it("follows at most 10 __index tables", function()
      local t = {f12 = true}
      for i = 11, 1, -1 do
        t = setmetatable({["f" .. i] = true}, {__index = t})
      end
      assert.are.same({"t.f1", "t.f10", "t.f11", "t.f2", "t.f3", "t.f4", "t.f5", "t.f6", "t.f7", "t.f8", "t.f9"},
        complete("t.f", {t = t}))
      assert.are.same({}, complete("t.f12.", {t = t}))
    end)

    it("does not loop on a cycle of __index tables", function()
      local a, b = {x = 1}, {y = 2}
      setmetatable(a, {__index = b})
      setmetatable(b, {__index = a})
      assert.are.same({"a.x", "a.y"}, complete("a.", {a = a}))
      assert.are.same({}, complete("a.z.", {a = a}))
    end)

    it("never calls an __index function nor any other metamethod", function()
      local env = {p = setmetatable({own = {}}, hostile_mt())}
      assert.are.same({"p.own"}, complete("p.", env))
      assert.are.same({}, complete("p.missing.", env))
      assert.are.same({}, complete("x", setmetatable({}, hostile_mt())))
    end)

    it("completes the globals of an environment through its __index table", function()
      assert.are.same({"print"}, complete("pr", setmetatable({}, {__index = {print = print}})))
    end)

    it("offers the Task methods on a task", function()
      local t = tulua.spawn(function() end)
      finally(function() t:join() end)
      local env = {t = t}
      assert.are.same({"t:join"}, complete("t:jo", env))
      assert.are.same({"t:cancel", "t:cancelled", "t:cancelling"}, complete("t:canc", env))
    end)

    it("offers nothing on a thread that is not a task", function()
      assert.are.same({}, complete("co:", {co = coroutine.create(print)}))
    end)

    it("offers the string methods on a string", function()
      assert.are.same({"s:upper"}, complete("s:up", {s = "text"}))
    end)

    it("offers the methods of a userdata's __index table", function()
      assert.are.same({"f:write"}, complete("f:wr", {f = io.stdout}))
      assert.are.same({"io.stdout:seek", "io.stdout:setvbuf"}, complete("io.stdout:se"))
    end)

    it("returns an empty list for a prefix that does not resolve", function()
      assert.are.same({}, complete("nope.x", {}))
      assert.are.same({}, complete("a.b.c", {a = 1}))
      assert.are.same({}, complete("zzz", {}))
    end)

    it("returns an empty list for a text that is no path", function()
      for _, text in ipairs({"f(x).y", "a:b.c", "a:b:c", "1.x", "t.1", ".x", "a..b", "end.x", "t[1].x", "\"s\":up"}) do
        assert.are.same({}, complete(text, {a = {b = {c = 1}}, t = {[1] = 1}, f = {y = 1}}), text)
      end
    end)

    it("completes the path at the end of a longer text, keeping what comes before", function()
      assert.are.same({"x+string.format"}, complete("x+string.fo"))
      assert.are.same({"a,foo", "a,for"}, complete("a,fo", {foo = 1}))
    end)

    it("returns at most 200 sorted completions", function()
      local env = {}
      for i = 1, 300 do env[string.format("k%03d", i)] = i end
      local words = complete("k", env)
      assert.are.same({200, "k001", "k200"}, {#words, words[1], words[200]})
    end)

    it("raises for a text that is not a string or an env that is not a table", function()
      assert.has_error(function() complete(nil) end, "bad argument #1 to 'complete' (string expected, got nil)")
      assert.has_error(function() complete("x", 1) end, "bad argument #2 to 'complete' (table expected, got number)")
    end)
  end)
end)
