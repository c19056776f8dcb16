-- tulua.transfer: the serializer of values between Lua states. encode(...)
-- returns a string, decode(s) the values; both within this one state here,
-- which is what the thread and process pools do across states.
local transfer = require("tulua.transfer")

local function round_trip(...)
  return transfer.decode(transfer.encode(...))
end

-- The error message of fn(...), without a position (transfer raises none).
local function error_of(fn, ...)
  local ok, err = pcall(fn, ...)
  assert.is_false(ok)
  return err
end

-- A valid encoding of the integer 1 (header: magic, version 3, flags 0;
-- count 1, T_INT, 8 bytes).
local ONE = "\27TLX\3\0\1\3\1\0\0\0\0\0\0\0"
local HEADER = "\27TLX\3\0"

-- The decoder's cache of loaded functions: a userdata in the registry
-- whose length is how many it holds.
local function loaded_cache()
  local registry = debug.getregistry()
  local mt = registry["tulua.transfer_loaded"]
  for _, v in pairs(registry) do
    if type(v) == "userdata" and getmetatable(v) == mt then return v end
  end
end

-- The encoding of a function without upvalues of its own, split around
-- its fingerprint: bytes 9 to 16 (header, count, T_FUNC before them).
local function split_function(f)
  local s = transfer.encode(f)
  assert(s:byte(8) == 7, "T_FUNC")
  return s:sub(1, 8), s:sub(9, 16), s:sub(17)
end

describe("tulua.transfer", function()
  describe("encode and decode", function()
    it("round-trip nil, booleans, integers, floats and strings", function()
      assert.are.same({n = 10, nil, false, true, 0, math.mininteger, math.maxinteger, -1.5, 1 / 0, "", "a\0b\255"},
        table.pack(round_trip(nil, false, true, 0, math.mininteger, math.maxinteger, -1.5, 1 / 0, "", "a\0b\255")))
    end)

    it("keeps the subtypes and exact bits of numbers", function()
      local i, f, z, nan = round_trip(3, 3.0, -0.0, 0 / 0)
      assert.are.equal("integer", math.type(i))
      assert.are.equal("float", math.type(f))
      assert.are.equal(-math.huge, 1 / z)
      assert.is_true(nan ~= nan)
      assert.are.equal(string.pack("d", 0.1), string.pack("d", (round_trip(0.1))))
    end)

    it("returns no values for no values", function()
      assert.are.equal(0, select("#", round_trip()))
    end)

    it("keeps many values and nil holes by count", function()
      local many = {}
      for i = 1, 5000 do many[i] = i % 3 == 0 and nil or i end
      local back = table.pack(round_trip(table.unpack(many, 1, 5000)))
      assert.are.equal(5000, back.n)
      assert.are.same(many, {table.unpack(back, 1, 5000)})
      assert.are.same({n = 3}, table.pack(round_trip(nil, nil, nil)))
    end)

    it("copies nested tables with every kind of key", function()
      local t = {1, 2, {3, {4}}, name = "x", [true] = false, [2.5] = "f", [-7] = {deep = {deeper = {}}}}
      local back = round_trip(t)
      assert.are.same(t, back)
      assert.are_not.equal(t, back)
    end)

    it("preserves shared tables and cycles", function()
      local shared = {1}
      local t = {a = shared, b = shared}
      t.self = t
      local back = round_trip(t)
      assert.are.equal(back.a, back.b)
      assert.are.equal(back, back.self)
      assert.are_not.equal(shared, back.a)
      local x, y = round_trip(shared, shared)
      assert.are.equal(x, y)
    end)

    it("transfers a closure with its upvalues", function()
      local function make_counter(start)
        local n = start
        return function()
          n = n + 1
          return n
        end
      end
      local counter = round_trip(make_counter(10))
      assert.are.equal(11, counter())
      assert.are.equal(12, counter())
      local make = round_trip(make_counter)
      local c = make(0)
      assert.are.equal(1, c())
    end)

    it("transfers upvalues that are tables and functions, nested", function()
      local config = {step = 2, log = {}}
      local function add(a, b) return a + b end
      local function step(x)
        config.log[#config.log + 1] = x
        return add(x, config.step)
      end
      local function run(x) return step(step(x)) end
      local back = round_trip(run)
      assert.are.equal(5, back(1))
      assert.are.same({}, config.log) -- a copy ran, not the original
    end)

    it("transfers a recursive local function", function()
      local function fact(n) return n <= 1 and 1 or n * fact(n - 1) end
      assert.are.equal(120, round_trip(fact)(5))
    end)

    it("makes _ENV the globals and keeps line info", function()
      -- busted runs this file in an environment of its own: it too becomes _G
      local f = round_trip(function() return rawget(_ENV, "tostring"), _G end)
      local ts, g = f()
      assert.are.equal(tostring, ts)
      assert.are.equal(_G, g)
      local err = round_trip(function() error("boom") end)
      assert.matches("transfer_spec%.lua:%d+: boom$", error_of(err))
    end)

    it("sends C functions and modules by name", function()
      local format, str, fs = round_trip(string.format, string, require("tulua.fs"))
      assert.are.equal(string.format, format)
      assert.are.equal(string, str)
      assert.are.equal(require("tulua.fs"), fs)
      assert.are.equal("7", round_trip(function() return string.format("%d", 7) end)())
    end)

    it("sends named values nested as keys and values", function()
      local t = round_trip({[string.format] = string.rep, {{math}}, _G})
      assert.are.equal(string.rep, t[string.format])
      assert.are.equal(math, t[1][1][1])
      assert.are.equal(_G, t[2])
    end)
  end)

  describe("encode", function()
    it("refuses a userdata with its path", function()
      assert.are.equal("argument #2.config.log: cannot transfer a userdata",
        error_of(transfer.encode, 1, {config = {log = io.stdout}}))
    end)

    it("refuses a coroutine in a list", function()
      assert.are.equal("argument #1[3]: cannot transfer a thread",
        error_of(transfer.encode, {1, 2, coroutine.create(print)}))
    end)

    it("refuses a function's upvalue", function()
      local file = io.stdout
      local function f() return file end
      assert.are.equal("argument #1.upvalue 'file': cannot transfer a userdata", error_of(transfer.encode, f))
      assert.are.equal("argument #3.f.upvalue 'file': cannot transfer a userdata",
        error_of(transfer.encode, nil, nil, {f = f}))
    end)

    it("names other keys by type", function()
      assert.are.equal("argument #1[string]: cannot transfer a userdata",
        error_of(transfer.encode, {["a b"] = io.stdout}))
      assert.are.equal("argument #1[boolean]: cannot transfer a userdata",
        error_of(transfer.encode, {[true] = io.stdout}))
    end)

    it("refuses a C function that no module holds", function()
      local cf = coroutine.wrap(function() end)
      assert.are.equal("argument #1: cannot transfer a C function", error_of(transfer.encode, cf))
    end)

    it("refuses tables nested deeper than 200", function()
      local ok = {}
      for _ = 1, 199 do ok = {ok} end
      assert.are.equal(1, select("#", round_trip(ok)))
      local t = {ok}
      assert.are.equal("argument #1" .. string.rep("[1]", 200) .. ": cannot transfer (nesting deeper than 200)",
        error_of(transfer.encode, t))
    end)
  end)

  describe("decode", function()
    it("accepts a hand-made encoding", function()
      assert.are.equal(1, transfer.decode(ONE))
    end)

    it("rejects garbage and truncated input with exact messages", function()
      assert.are.equal("malformed transfer data (bad header)", error_of(transfer.decode, ""))
      assert.are.equal("malformed transfer data (bad header)", error_of(transfer.decode, "hello world"))
      assert.are.equal("malformed transfer data (unsupported version 1)", error_of(transfer.decode, "\27TLX\1\0"))
      assert.are.equal("malformed transfer data (truncated)", error_of(transfer.decode, ONE:sub(1, -2)))
      assert.are.equal("malformed transfer data (trailing bytes)", error_of(transfer.decode, ONE .. "\0"))
      assert.are.equal("malformed transfer data (unknown tag 99)", error_of(transfer.decode, "\27TLX\3\0\1\99"))
      assert.are.equal("malformed transfer data (bad reference)", error_of(transfer.decode, "\27TLX\3\0\1\8\1"))
      assert.are.equal("malformed transfer data (bad table key)", error_of(transfer.decode, "\27TLX\3\0\1\6\0\1\0\0"))
      assert.are.equal("malformed transfer data (truncated)",
        error_of(transfer.decode, "\27TLX\3\0\1\5\255\255\255\255\255\255\255\255\255\1"))
      assert.are.equal("malformed transfer data (bad integer)",
        error_of(transfer.decode, "\27TLX\3\0\1\5\255\255\255\255\255\255\255\255\255\2"))
    end)

    it("rejects every truncation of a valid encoding", function()
      local s = transfer.encode({1, "two", {3}, f = function() return 4 end}, string.format)
      for i = 0, #s - 1 do
        local ok, err = pcall(transfer.decode, s:sub(1, i))
        assert.is_false(ok)
        assert.matches("^malformed transfer data %(", err)
      end
    end)

    it("rejects bad bytecode", function()
      assert.matches("^malformed transfer data %(bad bytecode: ",
        error_of(transfer.decode, "\27TLX\3\0\1\7" .. ("\0"):rep(8) .. "\3abc\0"))
    end)

    it("rejects nesting deeper than 200", function()
      local s = "\27TLX\3\0\1" .. string.rep("\6\0\1\3\1\0\0\0\0\0\0\0", 201) .. "\0"
      assert.are.equal("malformed transfer data (nesting deeper than 200)", error_of(transfer.decode, s))
    end)

    it("fails for a module it cannot find", function()
      assert.are.equal("cannot find 'no.such.module'",
        error_of(transfer.decode, "\27TLX\3\0\1\10\14no.such.module"))
      assert.are.equal("cannot find 'string.nope'", error_of(transfer.decode, "\27TLX\3\0\1\11\6string\4nope"))
    end)

    it("raises for a non-string argument", function()
      assert.are.equal("bad argument #1 to 'tulua.transfer.decode' (string expected, got no value)",
        error_of(transfer.decode))
    end)

    it("rejects unknown flags, and a reference in a message without them", function()
      assert.are.equal("malformed transfer data (unsupported flags 2)", error_of(transfer.decode, "\27TLX\3\2\0"))
      assert.are.equal("malformed transfer data (truncated)", error_of(transfer.decode, "\27TLX\3"))
      assert.are.equal("malformed transfer data (bad reference)", error_of(transfer.decode, HEADER .. "\2\6\0\0\8\1"))
      local t, u = transfer.decode("\27TLX\3\1\2\6\0\0\8\1")
      assert.are.equal(t, u)
    end)
  end)

  describe("flags", function()
    it("are set only for messages with references", function()
      local t = {}
      assert.are.equal(0, transfer.encode(t, {t = {}}, 1):byte(6))
      assert.are.equal(1, transfer.encode(t, t):byte(6))
      assert.are.equal(1, transfer.encode({1, {}, self = false, t = t, again = t}):byte(6))
      local function f() return t end
      assert.are.equal(1, transfer.encode(f, f):byte(6))
    end)
  end)

  describe("plain values", function()
    it("encode to the exact bytes of the format", function()
      assert.are.equal(ONE, transfer.encode(1))
      assert.are.equal(HEADER .. "\0", transfer.encode())
      assert.are.equal(HEADER .. "\5\0\1\2\5\2ab\4" .. string.pack("<d", 0.5),
        transfer.encode(nil, false, true, "ab", 0.5))
    end)

    it("round-trip every kind alone and together", function()
      local values = {n = 14, nil, false, true, 0, -1, math.mininteger, math.maxinteger, 0.5, -0.0, 1 / 0, -1 / 0,
        "", "a\0b\255", string.rep("x", 5000)}
      for i = 1, values.n do
        local back = table.pack(round_trip(values[i]))
        assert.are.equal(1, back.n)
        assert.are.equal(values[i], back[1])
        assert.are.equal(math.type(values[i]), math.type(back[1]))
      end
      assert.are.same(values, table.pack(round_trip(table.unpack(values, 1, values.n))))
      local nan = round_trip(0 / 0)
      assert.is_true(nan ~= nan)
      assert.are.equal(-math.huge, 1 / round_trip(-0.0))
      assert.are.equal(_G, round_trip(_G))
    end)

    it("come before and after values that need more", function()
      local t = {1}
      local back = table.pack(round_trip(1, nil, "s", 2.5, t, false, _G, t))
      assert.are.same({n = 8, 1, nil, "s", 2.5, {1}, false, _G, {1}}, back)
      assert.are.equal(back[5], back[8])
      local function f() return 7 end
      local s = transfer.encode(f, 1, "x")
      local g, one, x = transfer.decode(s) -- f is loaded, then cached
      local g2, one2, x2 = transfer.decode(s)
      assert.are.same({7, 1, "x", 1, "x"}, {g(), one, x, one2, x2})
      assert.are.equal(g, g2)
    end)

    it("give the same errors when malformed", function()
      local int = "\3\1\0\0\0\0\0\0\0"
      assert.are.equal("malformed transfer data (truncated)", error_of(transfer.decode, HEADER .. "\2\0"))
      assert.are.equal("malformed transfer data (truncated)", error_of(transfer.decode, HEADER .. "\2\0\3\1\0"))
      assert.are.equal("malformed transfer data (truncated)",
        error_of(transfer.decode, HEADER .. "\2" .. int .. "\4\0\0"))
      assert.are.equal("malformed transfer data (unknown tag 99)",
        error_of(transfer.decode, HEADER .. "\3" .. int .. "\0\99"))
      assert.are.equal("malformed transfer data (trailing bytes)", error_of(transfer.decode, HEADER .. "\2\0\1\2"))
      assert.are.equal("malformed transfer data (trailing bytes)", error_of(transfer.decode, HEADER .. "\0\0"))
      assert.are.equal("malformed transfer data (truncated)",
        error_of(transfer.decode, HEADER .. "\1\7" .. ("\0"):rep(7)))
      assert.are.equal("malformed transfer data (bad integer)",
        error_of(transfer.decode, HEADER .. "\2\0\5" .. ("\255"):rep(9) .. "\2"))
      local values = transfer.encode(nil, true, 1, 2.5, _G)
      for i = 0, #values - 1 do
        assert.matches("^malformed transfer data %(", error_of(transfer.decode, values:sub(1, i)))
      end
    end)
  end)

  describe("tables", function()
    it("keep pair counts that need more than one byte", function()
      for _, n in ipairs({127, 128, 300, 16384}) do
        local t = {}
        for i = 1, n do t[i] = i end
        local back = round_trip({t, {t}, x = t, y = {n = n}})
        assert.are.same(t, back[1])
        assert.are.equal(back[1], back[2][1])
        assert.are.equal(back[1], back.x)
        assert.are.equal(n, back.y.n)
      end
    end)

    it("send the array up to its first nil as values alone, the rest as pairs", function()
      -- T_TABLE, array length 2, 1 pair; 7, 8; then the key 4 and "x"
      local int = function(i) return "\3" .. string.pack("<i8", i) end
      assert.are.equal(HEADER .. "\1\6\2\1" .. int(7) .. int(8) .. int(4) .. "\5\1x",
        transfer.encode({7, 8, nil, "x"}))
      assert.are.equal(HEADER .. "\1\6\0\0", transfer.encode({}))
      local t = {1, 2, 3, nil, 5, [0] = 0, [-1] = -1, [2 ^ 53] = "big", x = {4, 5}, [1.5] = "half"}
      t[7] = 7
      local back = round_trip(t)
      assert.are.same(t, back)
      assert.are.equal(7, back[7])
      assert.is_nil(back[4])
      assert.are.equal("integer", math.type(back[2]))
    end)

    it("reject a nil in the array, and an array longer than the input", function()
      assert.are.equal("malformed transfer data (nil in an array)",
        error_of(transfer.decode, HEADER .. "\1\6\1\0\0"))
      assert.are.equal("malformed transfer data (truncated)",
        error_of(transfer.decode, HEADER .. "\1\6\9\0\0"))
      assert.are.equal("malformed transfer data (truncated)",
        error_of(transfer.decode, HEADER .. "\1\6\1\4\0\0"))
    end)

    it("keep the sharing of many tables", function()
      local list = {}
      for i = 1, 5000 do list[i] = {i} end
      local pairs_of = {}
      for i = 1, 5000 do pairs_of[i] = {list[i], list[5001 - i]} end
      local back = round_trip(pairs_of)
      for i = 1, 5000 do
        assert.are.equal(i, back[i][1][1])
        assert.are.equal(back[i][1], back[5001 - i][2])
      end
      local t = {}
      local x, y = round_trip(t, t) -- after the large one
      assert.are.equal(x, y)
    end)
  end)

  describe("caches", function()
    it("load a function without upvalues once, and copy closures every time", function()
      local function plain(x) return x + 1 end
      local s = transfer.encode(plain)
      local a, b = transfer.decode(s), transfer.decode(s)
      assert.are.equal(a, b)
      assert.are.equal(3, a(2))
      local k = 1
      local function closure() k = k + 1; return k end
      local s2 = transfer.encode(closure)
      local c, d = transfer.decode(s2), transfer.decode(s2)
      assert.are_not.equal(c, d)
      assert.are.same({2, 3, 2}, {c(), c(), d()})
    end)

    it("keep at most 256 loaded functions", function()
      for i = 1, 300 do
        local f = load("return function() return " .. i .. " end")()
        assert.are.equal(i, transfer.decode(transfer.encode(f))())
      end
      local n = #loaded_cache()
      assert.is_true(n >= 1 and n <= 256, n)
    end)

    it("write a function the same way every time", function()
      local function plain(x) return tostring(x) end
      assert.are.equal(transfer.encode(plain), transfer.encode(plain))
      local k = 1
      local function closure() k = k + 1; return k end
      local s = transfer.encode(closure)
      assert.are.equal(s, transfer.encode(closure))
      k = 10
      assert.are_not.equal(s, transfer.encode(closure)) -- the upvalue is not cached
      assert.are.equal(11, round_trip(closure)())
    end)

    it("compare bytecode, never trusting a fingerprint", function()
      local f = load("return function() return 'f' end")()
      local g = load("return function() return 'g' end")()
      local fhead, ffp, frest = split_function(f)
      local ghead, gfp, grest = split_function(g)
      assert.are_not.equal(ffp, gfp)
      local f1 = transfer.decode(fhead .. ffp .. frest)
      local g1 = transfer.decode(ghead .. ffp .. grest) -- g's bytes, f's fingerprint
      assert.are.same({"f", "g"}, {f1(), g1()})
      assert.are.equal(g1, transfer.decode(ghead .. ffp .. grest))
      assert.are.equal(f1, transfer.decode(fhead .. ffp .. frest))
      assert.are.equal("f", transfer.decode(fhead .. gfp .. frest)()) -- f's bytes, g's fingerprint
      assert.are.equal("g", transfer.decode(ghead .. gfp .. grest)())
      assert.are.equal("f", transfer.decode(fhead .. ("\0"):rep(8) .. frest)())
      assert.are.equal("g", transfer.decode(ghead .. ("\0"):rep(8) .. grest)())
    end)

    it("check the upvalue count of a function found", function()
      local h = load("return function() return tostring end")()
      local s = transfer.encode(h)
      assert.are.equal("\1\9", s:sub(-2)) -- one upvalue, _ENV
      assert.are.equal(tostring, transfer.decode(s)()) -- now cached
      assert.are.equal("malformed transfer data (upvalue count mismatch)",
        error_of(transfer.decode, s:sub(1, -3) .. "\0"))
      assert.are.equal(transfer.decode(s), transfer.decode(s))
    end)

    it("see modules and C functions that appeared after an earlier encode", function()
      assert.is_truthy(transfer.encode({}, string.rep)) -- the map of names is built
      local cf = require("tulua._thread_pool").cpu_count
      local mod = {count = cf}
      package.loaded["transfer_spec_mod"] = mod
      local ok, err = pcall(function()
        local got_mod, got_cf = transfer.decode(transfer.encode(mod, cf))
        assert.are.equal(mod, got_mod)
        assert.are.equal(cf, got_cf)
      end)
      package.loaded["transfer_spec_mod"] = nil
      assert(ok, err)
    end)
  end)
end)
