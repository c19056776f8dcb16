-- download.lua: fetches many http:// and https:// URLs with tulua.http, at
-- most K at a time. K worker tasks take URLs from one shared list; tulua.http
-- keeps their connections alive and reuses them per host, so K is also the
-- number of connections to one host. Bodies (sized by Content-Length,
-- chunked, or up to the close) are streamed to a file, or only counted; a
-- body over 1 MiB shows its progress on stderr (unless -q). One line per
-- URL, then a summary; the exit status is 1 if any fetch failed.
--
--   build/tulua scripts/demo/http_server.lua 8080 &
--   build/tulua scripts/demo/download.lua -k 8 -n 1000 -q http://127.0.0.1:8080/
--   build/tulua scripts/demo/download.lua -o /tmp/dl https://deb.debian.org/debian/README
--
-- Options: -k K connections (default 4); -n N fetch the list N times (default
-- 1); -o DIR save each body as DIR/<number>-<name>; -t S give up a request
-- after S seconds (default 30); -q print only the summary.
local tulua = require "tulua"
local asyncio = require "asyncio"
local fs = require "tulua.fs"
local http = require "tulua.http"

local opts, urls = {k = "4", n = "1", t = "30"}, {}
local i = 1
while arg[i] do
  local flag = arg[i]:match("^%-(%a)$")
  if flag == "q" then opts.q = true
  elseif flag then opts[flag], i = arg[i + 1], i + 1
  else urls[#urls + 1] = arg[i] end
  i = i + 1
end
local K, N, TIMEOUT = math.tointeger(tonumber(opts.k)), math.tointeger(tonumber(opts.n)), tonumber(opts.t)
assert(K and K > 0 and N and TIMEOUT and #urls > 0,
  "usage: download.lua [-k connections] [-n times] [-o dir] [-t seconds] [-q] URL...")

local PROGRESS_FROM = 1024 * 1024  -- bodies longer than this show their progress

-- Returns v, or raises err.
local function need(v, err)
  if v == nil then error(err or "failed", 0) end
  return v
end

-- Shows "url: got of total" on stderr, at most every 0.2 s.
local function progress(url, got, total, done)
  io.stderr:write(("\r%s: %d%s bytes%s"):format(url, got, total and (" of " .. total) or "",
    done and "\n" or ""))
end

-- Fetches url (the index-th) into its sink; returns the status and the
-- body's size. cur.res holds the response, for the caller to close when a
-- timeout cuts the fetch.
local function fetch(index, url, cur)
  local res = need(http.request("GET", url, {stream = true, headers = {["user-agent"] = "tulua-download"}}))
  cur.res = res
  local bytes, file = 0, nil
  if opts.o then
    local name = url:gsub("^%a+://[^/]*", ""):gsub("[?#].*", ""):match("[^/]*$")
    file = need(fs.open(("%s/%04d-%s"):format(opts.o, index, name ~= "" and name or "index.html"), "w"))
  end
  local _ <close> = file
  local total = tonumber(res.headers["content-length"])
  local shown, last = false, 0
  while true do
    local piece, err = res:read()
    if not piece then
      if err then error(err, 0) end
      break
    end
    bytes = bytes + #piece
    if file then need(file:write(piece)) end
    if not opts.q and bytes > PROGRESS_FROM and tulua.now() - last > 0.2 then
      progress(url, bytes, total)
      shown, last = true, tulua.now()
    end
  end
  if shown then progress(url, bytes, total, true) end
  res:close()
  return res.status, bytes
end

local jobs, results = {next = 1}, {}
for _ = 1, N do
  for _, url in ipairs(urls) do jobs[#jobs + 1] = url end
end

-- A worker: fetches the next URL of the list until none is left.
local function worker()
  while jobs.next <= #jobs do
    local index = jobs.next
    jobs.next = index + 1
    local t0 = tulua.now()
    local cur = {}
    local ok, status, bytes = pcall(asyncio.wait_for, fetch, TIMEOUT, index, jobs[index], cur)
    if not ok then
      if asyncio.is_cancelled(status) then error(status, 0) end   -- this worker is cancelled: stop
      if cur.res then cur.res:close() end                        -- in the middle of a body
      status, bytes = nil, asyncio.is_timeout(status) and "timed out" or tostring(status)
    end
    results[index] = {status = status, bytes = bytes}
    if not opts.q then
      print(status and ("%d %9d B %7.3f s  %s"):format(status, bytes, tulua.now() - t0, jobs[index])
        or ("ERR %s  %s"):format(bytes, jobs[index]))
    end
  end
end

if opts.o then assert(fs.mkdir(opts.o, {parents = true})) end
local t0 = tulua.now()
do
  local tg <close> = asyncio.TaskGroup()
  for _ = 1, math.min(K, #jobs) do tg:create_task(worker) end
end                                -- waits here for every worker
local ok, failed, total = 0, 0, 0
for _, r in ipairs(results) do
  if r.status and r.status < 400 then ok, total = ok + 1, total + r.bytes else failed = failed + 1 end
end
local secs = tulua.now() - t0
print(("%d fetched (%d bytes), %d failed, in %.3f s, %d connections at a time (%.0f/s)")
  :format(ok, total, failed, secs, math.min(K, #jobs), #jobs / secs))
if failed > 0 then os.exit(1) end
