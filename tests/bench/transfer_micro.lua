-- transfer_micro.lua: nanoseconds per tulua.transfer encode and decode of
-- the small messages a pool sends per job: a request (a function whose only
-- upvalue is _ENV, already encoded once, plus one integer) and replies (an
-- integer, a short string, nil), and a small table. Each figure is the best
-- of ROUNDS rounds of N calls. It includes the Lua call into the module
-- (the "empty call" row: a C function doing nothing much) and, for encode,
-- making the result string. The pools' C code skips both: it calls
-- tulua__transfer_encode (which returns a malloc'd block instead) and
-- tulua__transfer_decode directly, so its costs are lower by about the
-- empty call, and for encode by the string.
--   build/tulua tests/bench/transfer_micro.lua [N=200000] [ROUNDS=5]
local tulua = require "tulua"
local transfer = require "tulua.transfer"

local N = math.tointeger(tonumber(arg[1] or 200000))
local ROUNDS = math.tointeger(tonumber(arg[2] or 5))
local encode, decode, now = transfer.encode, transfer.decode, tulua.now

local function job(x) return math.floor(x) + 1 end

local cases = {
  {"request (fn, int)", {job, 42}},
  {"int reply", {42}},
  {"short string reply", {"done: ok"}},
  {"nil reply", {nil}, 1},
  {"small table", {{1, 2, 3, name = "x"}}},
}

-- Runs f(a) (or f(a, b) for two) N times and returns the nanoseconds per
-- call, best of ROUNDS; the loops are written out so that both arities
-- make exactly one call per iteration.
local function best(f, count, a, b)
  local t = math.huge
  for _ = 1, ROUNDS do
    collectgarbage()
    local t0 = now()
    if count == 2 then
      for _ = 1, N do f(a, b) end
    else
      for _ = 1, N do f(a) end
    end
    local dt = now() - t0
    if dt < t then t = dt end
  end
  return t / N * 1e9
end

print(string.format("%-20s %10s %10s", "", "encode ns", "decode ns"))
print(string.format("%-20s %10.1f", "empty call", best(rawlen, 1, "")))
for _, c in ipairs(cases) do
  local name, values = c[1], c[2]
  local count = c[3] or #values
  local s = encode(table.unpack(values, 1, count))
  assert(select("#", decode(s)) == count)
  local te = best(encode, count, values[1], values[2])
  local td = best(decode, 1, s)
  print(string.format("%-20s %10.1f %10.1f   (%d bytes)", name, te, td, #s))
end
