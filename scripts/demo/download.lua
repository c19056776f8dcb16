-- download.lua: fetches many URLs over plain HTTP/1.1 (no TLS), at most K at
-- a time. K worker tasks take URLs from one shared list; each one keeps its
-- connection open from one request to the next (keep-alive) while the host
-- stays the same, so K is also the number of connections. Bodies (sized by
-- Content-Length, chunked, or up to the close) are streamed to a file, or
-- only counted. One line per URL, then a summary; the exit status is 1 if
-- any fetch failed.
--
--   build/tulua scripts/demo/http_server.lua 8080 &
--   build/tulua scripts/demo/download.lua -k 8 -n 1000 -q http://127.0.0.1:8080/
--   python3 -m http.server -b 127.0.0.1 8000 &          # serves the current directory
--   build/tulua scripts/demo/download.lua -o /tmp/dl http://127.0.0.1:8000/README.md http://127.0.0.1:8000/
--
-- Options: -k K connections (default 4); -n N fetch the list N times (default
-- 1); -o DIR save each body as DIR/<number>-<name>; -t S give up a request
-- after S seconds (default 30); -q print only the summary.
local tulua = require "tulua"
local asyncio = require "asyncio"
local fs = require "tulua.fs"
local net = require "tulua.net"

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

local LINE = {max = 16 * 1024}     -- read_line's options: the longest header line

-- Returns v, or raises err (a read's message) or "connection closed early".
local function need(v, err)
  if v == nil then error(err or "connection closed early", 0) end
  return v
end

-- Reads the status line and the headers (names in lower case). Returns nil
-- when the server closed without answering.
local function read_head(conn)
  local line = conn:read_line(LINE)
  if not line then return nil end
  local minor, status = line:match("^HTTP/1%.(%d) (%d%d%d)")
  if not status then error("not an HTTP/1.x response: " .. line, 0) end
  local headers = {}
  while true do
    line = need(conn:read_line(LINE))
    if line == "" or line == "\r" then return tonumber(status), headers, minor end
    local name, value = line:match("^([^:]+):%s*(.-)%s*$")
    if name then headers[name:lower()] = value end
  end
end

-- Passes the next n bytes of conn to sink.
local function copy(conn, n, sink)
  while n > 0 do
    local chunk = need(conn:read(math.min(n, 64 * 1024)))
    sink(chunk)
    n = n - #chunk
  end
end

-- Streams a response's body to sink; returns whether the body's end is
-- known (else the server ends it by closing the connection).
local function read_body(conn, status, headers, sink)
  if status < 200 or status == 204 or status == 304 then return true end
  if (headers["transfer-encoding"] or ""):lower():find("chunked", 1, true) then
    while true do
      local size = tonumber(need(conn:read_line(LINE)):match("^%x+") or "", 16)
      if not size then error("bad chunk size", 0) end
      if size == 0 then break end
      copy(conn, size, sink)
      need(conn:read_line(LINE))                   -- the CRLF after the chunk
    end
    repeat local line = need(conn:read_line(LINE)) until line == "" or line == "\r"  -- trailers
    return true
  elseif headers["content-length"] then
    copy(conn, need(math.tointeger(tonumber(headers["content-length"])), "bad Content-Length"), sink)
    return true
  end
  while true do                    -- no size given: the body ends with the connection
    local chunk, err = conn:read()
    if not chunk then
      if err then error(err, 0) end
      return false
    end
    sink(chunk)
  end
end

-- Fetches url (the index-th) on the worker's connection w.conn, opening
-- one if needed; returns the status and the body's size.
local function fetch(w, index, url)
  local host, port, path = url:match("^http://([%w%.%-]+):?(%d*)(/?[^#]*)")
  if not host then error("not an http:// URL", 0) end
  local key = host .. ":" .. (port ~= "" and port or "80")
  if path == "" then path = "/" end
  local bytes, file = 0, nil
  local sink                       -- where the body's chunks go
  if opts.o then
    local name = path:gsub("%?.*", ""):match("[^/]*$")
    file = need(fs.open(("%s/%04d-%s"):format(opts.o, index, name ~= "" and name or "index.html"), "w"))
    sink = function(chunk) bytes = bytes + #chunk; need(file:write(chunk)) end
  else
    sink = function(chunk) bytes = bytes + #chunk end
  end
  local _ <close> = file
  for _ = 1, 2 do                  -- a kept connection the server has dropped gets one more try
    local fresh = w.conn == nil or w.key ~= key
    if fresh then
      if w.conn then w.conn:close() end
      w.conn, w.key = need(net.connect(host, tonumber(key:match("%d+$")), {timeout = TIMEOUT})), key
    end
    local conn = w.conn
    need(conn:write(("GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: tulua-download\r\n\r\n"):format(path, key)))
    local status, headers, minor = read_head(conn)
    if status then
      local connection = (headers.connection or ""):lower()
      local sized = read_body(conn, status, headers, sink)
      if not sized or connection:find("close", 1, true)
        or (minor == "0" and not connection:find("keep-alive", 1, true)) then
        conn:close()
        w.conn = nil
      end
      return status, bytes
    end
    conn:close()
    w.conn = nil
    if fresh then error("connection closed without an answer", 0) end
  end
end

local jobs, results = {next = 1}, {}
for _ = 1, N do
  for _, url in ipairs(urls) do jobs[#jobs + 1] = url end
end

-- A worker: fetches the next URL of the list until none is left.
local function worker()
  local w = {}                     -- its connection (conn) and that connection's host:port (key)
  while jobs.next <= #jobs do
    local index = jobs.next
    jobs.next = index + 1
    local t0 = tulua.now()
    local ok, status, bytes = pcall(asyncio.wait_for, fetch, TIMEOUT, w, index, jobs[index])
    if not ok then
      if asyncio.is_cancelled(status) then error(status, 0) end   -- this worker is cancelled: stop
      if w.conn then w.conn:close() end                            -- in the middle of something
      w.conn = nil
      status, bytes = nil, tostring(status)
    end
    results[index] = {status = status, bytes = bytes}
    if not opts.q then
      print(status and ("%d %9d B %7.3f s  %s"):format(status, bytes, tulua.now() - t0, jobs[index])
        or ("ERR %s  %s"):format(bytes, jobs[index]))
    end
  end
  if w.conn then w.conn:close() end
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
