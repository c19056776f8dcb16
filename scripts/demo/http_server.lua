-- http_server.lua: a small HTTP/1.1 server on 127.0.0.1 with tulua.http.
-- GET / (and HEAD /) answers "Hello, World!"; POST /echo answers its body
-- (Content-Length or chunked, up to 1 MiB); GET /events streams three
-- server-sent events; anything else is a 404. tulua.http does the rest:
-- keep-alive and pipelining in order, Date and Content-Length, HEAD without
-- a body, 400 for a malformed request, 431 for a head over 16 KiB, 413 for
-- a body over 1 MiB, clients that stall dropped after 10 s. It prints
-- "listening on http://127.0.0.1:PORT/" and runs until killed (Ctrl-C).
--
--   build/tulua scripts/demo/http_server.lua [port]    -- default 8080, 0: any free port
--   curl -i http://127.0.0.1:8080/
--   curl -N http://127.0.0.1:8080/events
--   wrk -t1 -c50 -d5s http://127.0.0.1:8080/
local tulua = require "tulua"
local http = require "tulua.http"

local port = math.tointeger(tonumber(arg[1] or 8080))
assert(port and port >= 0 and port <= 65535, "usage: http_server.lua [port]")

local TEXT = {["content-type"] = "text/plain"}

local function handle(req)
  local path = req.path
  if path == "/" and (req.method == "GET" or req.method == "HEAD") then
    return 200, "Hello, World!", TEXT
  elseif path == "/echo" and req.method == "POST" then
    local body, err = req:read_body()
    if not body then return 413, err .. "\n", TEXT end
    return 200, body, TEXT
  elseif path == "/events" and req.method == "GET" then
    local w = req:respond(200, {["content-type"] = "text/event-stream", ["cache-control"] = "no-cache"})
    for i = 1, 3 do
      if not w:write(("data: event %d\n\n"):format(i)) then return end
      tulua.sleep(0.1)
    end
    return
  end
  return 404, "not found\n", TEXT
end

local server = assert(http.serve("127.0.0.1", port, handle,
  {max_body = 1024 * 1024, header_timeout = 10, keepalive_timeout = 10}))
print(("listening on http://%s:%d/"):format(server:address()))
