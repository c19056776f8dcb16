-- Q1 peer: tulua_asyncio.lua with an unbounded queue (MAXSIZE=0): the producer never waits.
-- Usage: tulua tulua_asyncio_unbounded.lua [ITEMS=1000000] [MAXSIZE=0]
local here = arg[0]:match("^(.*)/") or "."
assert(loadfile(here .. "/tulua_asyncio.lua"))(arg[1], arg[2] or "0")
