-- Writes the seed corpus of fuzz_transfer: valid encodings of each kind of
-- value. Run from the repository root: tulua tests/fuzz/make_corpus.lua
local transfer = require("tulua.transfer")

local cyclic = {1, 2, name = "x"}
cyclic.self = cyclic
cyclic.shared = {true}
cyclic.again = cyclic.shared

local function counter()
  local n = 0
  return function()
    n = n + 1
    return n
  end
end

local seeds = {
  scalars = {n = 11, nil, false, true, 0, -1, math.maxinteger, 1.5, -0.0, 1 / 0, "", "a\0b"},
  table = {n = 1, {1, 2, 3, k = "v", [true] = 2.5, nested = {{}}}},
  cycle = {n = 1, cyclic},
  func = {n = 1, counter()},
  env = {n = 1, function(...) return print(...) end},
  names = {n = 3, string.format, string, _G},
  module = {n = 1, require("tulua.fs")},
  many = {n = 5, 1, nil, 3, nil, nil},
}
for name, values in pairs(seeds) do
  local f = assert(io.open("tests/fuzz/corpus/" .. name, "wb"))
  f:write(transfer.encode(table.unpack(values, 1, values.n)))
  f:close()
end
