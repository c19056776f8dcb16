-- W3 peer for tulua's asyncio module, written as py_asyncio.py is: N tasks
-- (asyncio.create_task) each asyncio.sleep a MINSTD-chosen 0..100 ms and return 1;
-- asyncio.gather waits for them all. N=0 is the memory baseline.
-- Delays: MINSTD x <- x*48271 mod (2^31-1), seed 1, delay_ms = x mod 101.
-- Usage: tulua tulua_asyncio.lua [N=100000]
local asyncio = require "asyncio"

local N = tonumber(arg[1]) or 100000

local function delays(n)
  local out, x = {}, 1
  for i = 1, n do
    x = x * 48271 % 2147483647
    out[i] = x % 101
  end
  return out
end

local function sleeper(ms)
  asyncio.sleep(ms / 1000)
  return 1
end

local function main()
  local ds = delays(N)
  local loop = asyncio.get_running_loop()
  local t0 = loop:time()
  local tasks = {}
  for i = 1, N do tasks[i] = asyncio.create_task(sleeper, ds[i]) end
  local t1 = loop:time()
  local results = asyncio.gather(tasks)
  local t2 = loop:time()
  local done = 0
  for i = 1, results.n do done = done + results[i] end
  assert(done == N, done)
  print(string.format("RESULT tasks=%d seconds=%.4f spawn_seconds=%.4f", N, t2 - t0, t1 - t0))
end

asyncio.run(main)
