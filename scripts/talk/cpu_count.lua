-- Slide "注意点" (a caveat): a process pool runs in parallel only as many
-- tasks as there are cores, so count them first. The Python on the slide:
--
--   # how many cores are there?
--   import os
--   os.cpu_count()
--
-- In tulua the count comes with the pools, as futures.cpu_count(). The
-- script prints it, as Python's REPL would: 2 on a 2-core machine.
--
-- Run it with: tulua scripts/talk/cpu_count.lua
local futures = require "concurrent.futures"

print(futures.cpu_count())
