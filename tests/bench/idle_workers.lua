-- idle_workers.lua: resident memory per idle thread-pool worker. Measures
-- VmRSS (/proc/self/status) before the pool exists, then starts N workers
-- (N jobs that sleep a little, so that each runs on a thread of its own),
-- waits until they are all idle again, and measures again. Prints
-- RESULT workers=N rss0_kib= rssN_kib= kib_per_worker=
--   build/tulua tests/bench/idle_workers.lua [N=16]
local tulua = require "tulua"
local futures = require "concurrent.futures"

local N = math.tointeger(tonumber(arg[1] or 16))

local function rss_kib()
  local f = assert(io.open("/proc/self/status"))
  local s = f:read("a")
  f:close()
  return tonumber(s:match("VmRSS:%s*(%d+) kB"))
end

collectgarbage()
collectgarbage()
local rss0 = rss_kib()
local ex <close> = futures.ThreadPoolExecutor(N)
local fs = {}
for i = 1, N do fs[i] = ex:submit(function(s) require("tulua").sleep(s) return true end, 0.2) end
for i = 1, N do assert(fs[i]:result()) end
tulua.sleep(0.2) -- every worker is back in its wait
collectgarbage()
collectgarbage()
local tl = ex:timeline()
local seen = {}
for _, rec in ipairs(tl) do seen[rec.worker] = true end
local workers = 0
for _ in pairs(seen) do workers = workers + 1 end
assert(workers == N, "only " .. workers .. " workers ran jobs")
local rssn = rss_kib()
print(string.format("RESULT workers=%d rss0_kib=%d rssN_kib=%d kib_per_worker=%.0f",
  N, rss0, rssn, (rssn - rss0) / N))
