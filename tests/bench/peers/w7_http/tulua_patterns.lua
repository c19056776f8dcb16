-- W7 peer (ours): the Lua-pattern HTTP server that scripts/demo/http_server.lua was
-- before tulua.http, kept to measure the real server against it (issue 13: not
-- slower). Same code as then, but "Hello, World!" on every path (the ruler
-- fetches /hello); the port is the first argument.
local net = require "tulua.net"

local port = math.tointeger(tonumber(arg[1]))
assert(port and port >= 0 and port <= 65535, "usage: tulua_patterns.lua PORT")

local MAX_LINE = 8192              -- bytes in the request line or a header line
local MAX_HEADERS = 100
local MAX_BODY = 1024 * 1024
local LINE = {max = MAX_LINE}      -- read_line's options, made once
local REASON = {[200] = "OK", [400] = "Bad Request", [404] = "Not Found", [413] = "Content Too Large",
  [431] = "Request Header Fields Too Large", [501] = "Not Implemented"}

-- The Date header, formatted at most once a second.
local date, date_time = nil, nil
local function http_date()
  local now = os.time()
  if now ~= date_time then date, date_time = os.date("!%a, %d %b %Y %H:%M:%S GMT", now), now end
  return date
end

-- Writes a response. connection: the Connection header line to send ("" for
-- HTTP/1.1's keep-alive); nil or false: "close". Returns true, or nil when
-- the client is gone.
local function respond(conn, status, body, connection, head_only)
  return conn:write(("HTTP/1.1 %d %s\r\nDate: %s\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n%s\r\n%s")
    :format(status, REASON[status], http_date(), #body, connection or "Connection: close\r\n",
      head_only and "" or body))
end

-- Whether a comma-separated header value lists token (case-insensitive).
local function has_token(value, token)
  for item in value:gmatch("[^,]+") do
    if item:match("^%s*(.-)%s*$"):lower() == token then return true end
  end
  return false
end

-- Reads one request's header lines into a table (names in lower case);
-- returns it, or nil and the status to fail with.
local function read_headers(conn)
  local headers = {}
  for _ = 1, MAX_HEADERS + 1 do
    local line, _, code = conn:read_line(LINE)
    if not line then return nil, code == "ENOBUFS" and 431 or nil end
    if line == "" or line == "\r" then return headers end
    local name, value = line:match("^([^:%s]+):[ \t]*(.-)[ \t\r]*$")
    if not name then return nil, 400 end
    headers[name:lower()] = value
  end
  return nil, 431
end

-- Serves the requests of one connection until it should close.
local function serve(conn)
  while true do
    local line, _, code = conn:read_line(LINE)
    if line == "" or line == "\r" then       -- a stray CRLF between requests is allowed
      line, _, code = conn:read_line(LINE)
    end
    if not line then                         -- the client closed (or sent a monster line)
      if code == "ENOBUFS" then respond(conn, 431, "request line too long\n") end
      return
    end
    local method, _, minor = line:match("^(%u+) (%S+) HTTP/1%.(%d)\r?$")
    if not method then return respond(conn, 400, "bad request line\n") end
    local headers, status = read_headers(conn)
    if not headers then return status and respond(conn, status, REASON[status] .. "\n") end

    if headers["transfer-encoding"] then return respond(conn, 501, "chunked bodies are not supported\n") end
    local length = headers["content-length"]
    if length then
      length = math.tointeger(tonumber(length:match("^%d+$")))
      if not length then return respond(conn, 400, "bad Content-Length\n") end
      if length > MAX_BODY then return respond(conn, 413, "body too large\n") end
      if length > 0 and not conn:read_exactly(length) then return end  -- drop the body
    end

    -- HTTP/1.1 keeps the connection unless told to close; 1.0 the other way round.
    local connection = headers.connection
    local keep_alive
    if minor == "0" then
      keep_alive = connection and has_token(connection, "keep-alive") and "Connection: keep-alive\r\n"
    else
      keep_alive = not (connection and has_token(connection, "close")) and ""
    end
    local ok
    if method == "GET" or method == "HEAD" then  -- every path, as the ruler's W7 peers
      ok = respond(conn, 200, "Hello, World!", keep_alive, method == "HEAD")
    else
      ok = respond(conn, 404, "not found\n", keep_alive, method == "HEAD")
    end
    if not ok or not keep_alive then return end
  end
end

local server = assert(net.serve("127.0.0.1", port, serve))
print(("listening on http://%s:%d/"):format(server:address()))
