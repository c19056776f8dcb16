-- Q1 peer for tulua's asyncio module, written as py_asyncio.py is: ITEMS integers
-- through an asyncio.Queue(MAXSIZE) from a producer task to a consumer task.
-- The producer puts 1..ITEMS (queue:put), the consumer gets ITEMS items
-- (queue:get) and sums them; asyncio.gather waits for both. With the default
-- MAXSIZE=100 the producer really waits whenever the queue is full; MAXSIZE=0
-- is an unbounded queue (the producer never waits).
-- Usage: tulua tulua_asyncio.lua [ITEMS=1000000] [MAXSIZE=100]
-- (tulua_asyncio_unbounded.lua calls this chunk with its own arguments.)
local asyncio = require "asyncio"

local a1, a2 = ...
local ITEMS = math.tointeger(tonumber(a1)) or 1000000
local MAXSIZE = math.tointeger(tonumber(a2)) or 100

local function producer(queue, n)
  for i = 1, n do queue:put(i) end
end

local function consumer(queue, n)
  local total = 0
  for _ = 1, n do total = total + queue:get() end
  return total
end

local function main()
  local queue = asyncio.Queue(MAXSIZE)
  local loop = asyncio.get_running_loop()
  local t0 = loop:time()
  local prod = asyncio.create_task(producer, queue, ITEMS)
  local cons = asyncio.create_task(consumer, queue, ITEMS)
  local results = asyncio.gather(prod, cons)
  local dt = loop:time() - t0
  local total = results[2]
  assert(total == ITEMS * (ITEMS + 1) // 2, total)
  assert(queue:empty())
  print(string.format("RESULT items=%d maxsize=%d seconds=%.4f items_per_s=%.0f", ITEMS, MAXSIZE, dt, ITEMS / dt))
end

asyncio.run(main)
