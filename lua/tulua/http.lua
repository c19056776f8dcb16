--- tulua.http: an HTTP/1.1 client (request, get, websocket) and server
-- (serve) over tulua.net. The parsing (llhttp) and the writing of heads are
-- C, in tulua._http; this file moves the bytes and keeps the per-request
-- Lua small, since it runs for every request a server answers. Reference:
-- lua/tulua/http.md.
local net = require "tulua.net"
local tulua = require "tulua"
local timer = require "tulua.timer"
local C = require "tulua._http"
local args = require "tulua._args"

local type, tostring, tonumber, pcall, xpcall, error, setmetatable, next =
  type, tostring, tonumber, pcall, xpcall, error, setmetatable, next
local math_type, concat, traceback, now, current = math.type, table.concat, debug.traceback, tulua.now,
  tulua.current
local arg_error, type_error, check_options = args.arg_error, args.type_error, args.check_options

local M = {}

local DEFAULT_MAX_HEADER = 16 * 1024
local DEFAULT_MAX_BODY = 8 * 1024 * 1024       -- the server's request bodies
local CLIENT_MAX_BODY = 64 * 1024 * 1024       -- a response body read whole
local POOL_MAX = 8                             -- idle connections kept per origin
local POOL_IDLE = 30                           -- seconds an idle connection is kept
local EXPECT_WAIT = 1                          -- seconds to wait for a 100 Continue
local TUNNEL_WAIT = 60                         -- for a CONNECT's answer: a TLS handshake's default

-- level: as _args counts it, 3 when a public function calls the check.
local function check_positive(v, what, argn, fname, level)
  if v ~= nil and (type(v) ~= "number" or v <= 0) then
    arg_error(argn, fname, "'" .. what .. "' must be a positive number", level or 3)
  end
end

local function check_integer(v, what, argn, fname, level)
  if v ~= nil and (math_type(v) ~= "integer" or v <= 0) then
    arg_error(argn, fname, "'" .. what .. "' must be a positive integer", level or 3)
  end
end

-- Percent-decoding for query strings ("+" is a space there).
local function unescape(s)
  s = s:gsub("+", " ")
  return (s:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end

--- Returns the table of a query string: a=1&b=x%20y -> {a = "1", b = "x y"};
-- a name given twice keeps the last value.
function M.parse_query(q)
  if type(q) ~= "string" then type_error(1, "parse_query", "string", q) end
  local t = {}
  for pair in q:gmatch("[^&]+") do
    local k, v = pair:match("^([^=]*)=?(.*)$")
    t[unescape(k)] = unescape(v)
  end
  return t
end

------------------------------------------------------------------------
-- Server
------------------------------------------------------------------------

local Request = {}
local REQ_MT = {
  __name = "http request",
  _kind = "http request",
  __index = function(req, k)
    local m = Request[k]
    if m ~= nil then return m end
    if k == "path" or k == "query" then
      local target = req.target
      local q = target:find("?", 1, true)
      local path = q and target:sub(1, q - 1) or target
      req.path = path
      req.query = M.parse_query(q and target:sub(q + 1) or "")
      return req[k]
    end
    return nil
  end,
}

-- Reads the next bytes of the request body on st's connection within the
-- server's body_timeout: the sweep cancels a read that has waited longer,
-- and that cancel, withdrawn here, becomes an ETIMEDOUT failure (the
-- stream stays usable for the 408). Other cancels go on.
local function read_body_bytes(st)
  local task = current()                 -- the handler's, or a task it reads in
  st.reader = task
  local before = task:cancelling()
  st.deadline = now() + st.cfg.body_timeout
  st.body_wait = true
  local ok, data, err, code = pcall(st.conn.read, st.conn)
  st.deadline, st.body_wait = nil, false
  if ok then return data, err, code end
  if st.timed_out and type(data) == "table" and data.code == "ECANCELED" and task:uncancel() <= before then
    st.timed_out = false
    st.body_timed_out = true
    return nil, "http: no request body bytes for " .. st.cfg.body_timeout .. " s", "ETIMEDOUT"
  end
  error(data, 0)
end

-- The next piece of the request body of connection state st: a string, nil
-- at its end, or nil, message, code. The first piece may have come with the
-- head.
local function next_body(st)
  local c = st.chunk
  if c then
    st.chunk = false
    return c
  end
  if st.complete then return nil end
  if st.expect then
    st.expect = false
    local ok, err, code = st.conn:write("HTTP/1.1 100 Continue\r\n\r\n")
    if not ok then st.broken = true; return nil, err, code end
  end
  while true do
    if st.pos > #st.buf then
      local data, err, code = read_body_bytes(st)
      if not data then
        st.broken = true
        return nil, err or "http: the client closed before the end of the body", code or "EOF"
      end
      st.buf, st.pos = data, 1
    end
    local pos, _, body, complete = st.p:execute(st.buf, st.pos)
    if not pos then st.broken = true; return nil, _, body end
    st.pos = pos
    if complete then st.complete = true end
    if body then
      st.body_bytes = st.body_bytes + #body
      if st.body_bytes > st.max_body then
        st.broken = true
        return nil, "http: request body larger than " .. st.max_body .. " bytes", "E2BIG"
      end
      return body
    end
    if complete then return nil end
  end
end

--- req:read_body([max]): the whole request body as a string ("" for none);
-- nil, message, code when it is larger than max (default: the server's
-- max_body) or the client went away.
function Request.read_body(req, max)
  args.check_self(req, "http request", "read_body")
  if max ~= nil then args.check_count(max, math.maxinteger, 2, "read_body", "max") end
  local st = req._st
  local parts, n, size = {}, 0, 0
  while true do
    local c, err, code = next_body(st)
    if not c then
      if err then return nil, err, code end
      return concat(parts, "", 1, n)
    end
    size = size + #c
    if max and size > max then
      st.broken = true
      return nil, "http: request body larger than " .. max .. " bytes", "E2BIG"
    end
    n = n + 1
    parts[n] = c
  end
end

--- req:body_chunks(): an iterator of the body's pieces; it raises the
-- message when the client goes away or the body is too large.
function Request.body_chunks(req)
  args.check_self(req, "http request", "body_chunks")
  local st = req._st
  return function()
    local c, err = next_body(st)
    if not c and err then error(err, 2) end
    return c
  end
end

local LAST_CHUNK = C.chunk("")

-- Sends the pieces fn returns (strings, nil at the end) as a chunked body,
-- then its last chunk: true, or nil, message, code when the peer is gone.
-- A piece that is no string closes conn (the body is broken) and raises.
local function send_chunks(conn, fn)
  while true do
    local piece = fn()
    if piece == nil then return conn:write(LAST_CHUNK) end
    if type(piece) ~= "string" then
      conn:close()
      error("http: the body function must return strings, got " .. type(piece), 0)
    end
    if piece ~= "" then
      local ok, err, code = conn:write(C.chunk(piece))
      if not ok then return nil, err, code end
    end
  end
end

local Writer = {}
Writer.__index = Writer
Writer.__name = "http response writer"
Writer._kind = "http response writer"

--- w:write(data): sends data as one chunk (at once, with backpressure);
-- true, or nil, message, code when the client is gone.
function Writer.write(w, data)
  args.check_self(w, "http response writer", "write")
  if type(data) ~= "string" then type_error(2, "write", "string", data) end
  if w.closed then error("attempt to use a closed http response writer", 2) end
  if data == "" or w.head_only then return true end
  local ok, err, code = w.conn:write(C.chunk(data))
  if not ok then w.st.broken = true end
  return ok, err, code
end

--- w:close(): ends the response (the last chunk); a second close does
-- nothing.
function Writer.close(w)
  args.check_self(w, "http response writer", "close")
  if w.closed then return true end
  w.closed = true
  if w.head_only then return true end
  local ok, err, code = w.conn:write(LAST_CHUNK)
  if not ok then w.st.broken = true end
  return ok, err, code
end

--- req:respond(status, headers): sends the head of a chunked response now
-- and returns a writer for its body (long responses, server-sent events).
-- The handler's own return values are then ignored.
function Request.respond(req, status, headers)
  args.check_self(req, "http request", "respond")
  if math_type(status) ~= "integer" then type_error(2, "respond", "integer", status) end
  if headers ~= nil and type(headers) ~= "table" then type_error(3, "respond", "table", headers) end
  local st = req._st
  if st.writer or st.upgraded then error("http: this request was answered already", 2) end
  local head, close = C.response(status, headers, nil, st.keep, req.method == "HEAD")
  local w = setmetatable({conn = st.conn, st = st, head_only = req.method == "HEAD"}, Writer)
  st.writer = w
  if close then st.broken = true end
  local ok, err, code = st.conn:write(head)
  if not ok then
    st.broken = true
    w.closed = true
    return nil, err, code
  end
  return w
end

local websocket_module
local function ws_module()
  if websocket_module == nil then
    local ok, m = pcall(require, "tulua._websocket")
    websocket_module = ok and m or false
  end
  return websocket_module or error("tulua.http: WebSocket support is not built in", 3)
end

--- req:websocket([opts]): accepts a WebSocket upgrade and returns the ws
-- object; the connection leaves HTTP. nil, message when the request is no
-- upgrade (the handler answers it as usual).
function Request.websocket(req, opts)
  args.check_self(req, "http request", "websocket")
  if opts ~= nil and type(opts) ~= "table" then type_error(2, "websocket", "table", opts) end
  local ws = ws_module()
  local st = req._st
  if st.writer or st.upgraded then error("http: this request was answered already", 2) end
  if not req.upgrade then return nil, "http: the request is no WebSocket upgrade" end
  local r, err, code = ws.accept_stream(st.conn, req.headers, opts or {}, st.buf:sub(st.pos))
  if r then st.upgraded = true end
  return r, err, code
end

-- Writes the whole answer to a request whose handler failed or cannot be
-- run: a short text body, and the connection closes.
local function answer_error(conn, status, text)
  conn:write(C.response(status, {["content-type"] = "text/plain"}, text .. "\n", false, false))
end

-- Runs the handler and turns its results into what to send: the whole
-- response string, or (for a function body) the head and the function.
local function run_handler(handler, req, keep, head_only)
  local status, body, headers = handler(req)
  local st = req._st
  if st.writer or st.upgraded then return nil end
  if math_type(status) ~= "integer" then
    error("http: the handler must return an integer status, got " .. type(status), 0)
  end
  if headers ~= nil and type(headers) ~= "table" then
    error("http: the handler's headers must be a table, got " .. type(headers), 0)
  end
  local tb = type(body)
  if tb == "function" then
    return (C.response(status, headers, nil, keep, head_only)), body
  elseif body ~= nil and tb ~= "string" then
    error("http: the handler's body must be a string or a function, got " .. tb, 0)
  end
  local out, close = C.response(status, headers, body or "", keep, head_only)
  if close then st.broken = true end
  return out
end

-- Connections of a server that wait for a head or a body, swept for the
-- timeouts: one waiting for a head is closed, one waiting for a body has
-- its read cancelled (read_body_bytes), so that it can still answer 408.
local function sweep(cfg)
  local t = now()
  for st in next, cfg.live do
    local d = st.deadline
    if d and t > d then
      st.deadline = nil
      st.timed_out = true
      if st.body_wait then st.reader:cancel() else st.conn:close() end
    end
  end
end

local function enter(cfg, st)
  cfg.live[st] = true
  cfg.count = cfg.count + 1
  if cfg.count == 1 then cfg.sweeper = timer.every(cfg.sweep_every, sweep, cfg) end
end

local function leave(cfg, st)
  cfg.live[st] = nil
  cfg.count = cfg.count - 1
  if cfg.count == 0 and cfg.sweeper then
    cfg.sweeper:close()
    cfg.sweeper = nil
  end
end

-- Serves one request whose head has come; returns whether the connection
-- may carry another.
local function serve_request(st, req, body, complete, handler)
  local conn = st.conn
  local headers = req.headers
  local length = headers["content-length"]
  if length and tonumber(length) > st.max_body then
    answer_error(conn, 413, "request body too large")
    return false
  end
  st.chunk, st.complete, st.body_bytes = body or false, complete, body and #body or 0
  st.writer, st.upgraded, st.broken, st.body_timed_out = false, false, false, false
  local expect = headers.expect
  st.expect = expect ~= nil and not complete and expect:lower() == "100-continue"
  req._st = st
  local head_only = req.method == "HEAD"
  local keep = req.keep_alive and not req.upgrade
  if keep and req.minor == 0 then keep = "keep-alive" end   -- HTTP/1.0 closes unless told
  st.keep = keep
  local ok, out, fn = xpcall(run_handler, traceback, handler, req, keep, head_only)
  if st.upgraded then return false end
  if not ok then
    if type(out) == "table" and out.code == "ECANCELED" then error(out, 0) end
    -- a handler that gave up on a body that stopped coming (assert on
    -- read_body): the client's fault, answered 408 and not reported
    if st.body_timed_out then
      if not st.writer then answer_error(conn, 408, "request body timed out") end
      return false
    end
    if not st.writer then answer_error(conn, 500, "internal server error") end
    error(out, 0)                    -- reported as the task's uncaught error
  end
  local w = st.writer
  if w then
    w:close()
  elseif fn then
    if not conn:write(out) then return false end
    if not head_only and not send_chunks(conn, fn) then return false end
  elseif not conn:write(out) then
    return false
  end
  -- a body the client holds back for a 100 Continue nobody asked for: it
  -- is not wanted, and the connection ends (RFC 9110, 10.1.1)
  if not keep or st.broken or st.expect then return false end
  -- what the handler left of the body is read and dropped, up to max_body
  while not st.complete do
    local c = next_body(st)
    if not c then return st.complete and not st.broken end
  end
  return true
end

-- One connection: requests one after another, in order (pipelined ones
-- wait in st.buf).
local function serve_connection(conn, handler, cfg)
  local st = {conn = conn, p = C.parser("request", cfg.max_header, REQ_MT), buf = "", pos = 1,
    max_body = cfg.max_body, cfg = cfg}
  enter(cfg, st)
  local ok, err = pcall(function()
    local wait = cfg.header_timeout
    while true do
      if cfg.closed then return end
      st.deadline = now() + wait
      local started = false
      local pos, req, body, complete
      st.idle = st.pos > #st.buf           -- between requests: Server:close ends it
      repeat
        if st.pos > #st.buf then
          local data = conn:read()
          if not data then return end        -- closed, reset or timed out
          st.buf, st.pos = data, 1
          st.idle = false
        end
        pos, req, body, complete = st.p:execute(st.buf, st.pos)
        if not pos then
          answer_error(conn, tonumber(body), req)
          return
        end
        st.pos = pos
        if not req and not started then
          started = true                   -- a head under way: header_timeout bounds the rest
          st.deadline = now() + cfg.header_timeout
        end
      until req
      st.deadline = nil
      if not serve_request(st, req, body, complete, handler) then return end
      wait = cfg.keepalive_timeout
    end
  end)
  leave(cfg, st)
  if not ok then error(err, 0) end
end

-- The Server http.serve returns: net.serve's, whose methods it forwards,
-- with a close that also ends the connections idle between requests
-- (keep-alive), so that a closed server does not linger for them.
local Server = {__name = "http server"}
local server_methods = {}

function Server.__index(s, k)
  local m = server_methods[k]
  if m then return m end
  local v = s._srv[k]
  if type(v) ~= "function" then return v end
  m = function(self, ...) return v(self._srv, ...) end
  server_methods[k] = m
  return m
end

function Server.__tostring(s) return tostring(s._srv):gsub("^%a+", "http server", 1) end

--- server:close(): stops accepting, and closes the connections that wait
-- for a next request; requests under way are answered, then their
-- connections close.
function server_methods.close(s)
  s._srv:close()
  s._cfg.closed = true
  for st in next, s._cfg.live do
    if st.idle then st.conn:close() end
  end
end

local SERVE_OPTIONS = {tls = true, max_header_bytes = true, max_body = true, header_timeout = true,
  keepalive_timeout = true, body_timeout = true, backlog = true}

--- http.serve(host, port, handler [, opts]): serves HTTP/1.1; handler(req)
-- returns status, body [, headers]. Returns the Server of net.serve, or
-- nil, message, code.
function M.serve(host, port, handler, opts)
  if type(host) ~= "string" then type_error(1, "serve", "string", host) end
  if math_type(port) ~= "integer" then type_error(2, "serve", "integer", port) end
  if type(handler) ~= "function" then type_error(3, "serve", "function", handler) end
  if opts ~= nil and type(opts) ~= "table" then type_error(4, "serve", "table", opts) end
  opts = opts or {}
  check_options(opts, SERVE_OPTIONS, 4, "serve")
  check_integer(opts.max_header_bytes, "max_header_bytes", 4, "serve")
  check_integer(opts.max_body, "max_body", 4, "serve")
  check_positive(opts.header_timeout, "header_timeout", 4, "serve")
  check_positive(opts.keepalive_timeout, "keepalive_timeout", 4, "serve")
  check_positive(opts.body_timeout, "body_timeout", 4, "serve")
  local cfg = {
    max_header = opts.max_header_bytes or DEFAULT_MAX_HEADER,
    max_body = opts.max_body or DEFAULT_MAX_BODY,
    header_timeout = opts.header_timeout or 30,
    keepalive_timeout = opts.keepalive_timeout or 60,
    body_timeout = opts.body_timeout or 60,      -- nginx's client_body_timeout
    live = {}, count = 0,
  }
  cfg.sweep_every = math.max(0.05, math.min(1, cfg.header_timeout / 4, cfg.keepalive_timeout / 4,
    cfg.body_timeout / 4))
  local net_opts = {backlog = opts.backlog, tls = opts.tls}
  local srv, err, code = net.serve(host, port, function(conn) serve_connection(conn, handler, cfg) end, net_opts)
  if not srv then return nil, err, code end
  return setmetatable({_srv = srv, _cfg = cfg}, Server)
end

------------------------------------------------------------------------
-- Client
------------------------------------------------------------------------

local DEFAULT_PORT = {http = 80, https = 443, ws = 80, wss = 443}

-- Splits an absolute URL: scheme, host (without brackets), port, target,
-- and the authority for the Host header. nil, message for a bad one.
local function parse_url(url)
  local scheme, rest = url:match("^(%a[%w+.-]*)://(.*)$")
  if not scheme then return nil, "not an absolute URL: " .. url end
  scheme = scheme:lower()
  if not DEFAULT_PORT[scheme] then return nil, "unsupported URL scheme '" .. scheme .. "'" end
  local authority, target = rest:match("^([^/?#]*)(.*)$")
  target = target:gsub("#.*$", "")
  if target == "" then target = "/" elseif target:sub(1, 1) == "?" then target = "/" .. target end
  authority = authority:gsub("^.*@", "")            -- userinfo is not sent
  local host, port = authority:match("^%[([^%]]+)%]:?(%d*)$")
  if not host then host, port = authority:match("^([^:]+):?(%d*)$") end
  if not host or host == "" then return nil, "no host in URL: " .. url end
  port = port ~= "" and tonumber(port) or DEFAULT_PORT[scheme]
  if port < 1 or port > 65535 then return nil, "bad port in URL: " .. url end
  local hostport = host:find(":", 1, true) and "[" .. host .. "]" or host
  if port ~= DEFAULT_PORT[scheme] then hostport = hostport .. ":" .. port end
  return {scheme = scheme, host = host, port = port, target = target, hostport = hostport,
    tls = scheme == "https" or scheme == "wss"}
end
M._parse_url = parse_url

-- The URL a Location header points at, from the URL u it answered.
local function resolve(u, location)
  if location:match("^%a[%w+.-]*://") then return location end
  local base = (u.tls and "https" or "http") .. "://" .. u.hostport
  if location:sub(1, 2) == "//" then return (u.tls and "https:" or "http:") .. location end
  if location:sub(1, 1) == "/" then return base .. location end
  local dir = u.target:gsub("[?#].*$", ""):match("^(.*/)") or "/"
  return base .. dir .. location
end

local function getenv(name)
  return os.getenv(name) or os.getenv(name:lower())
end

-- The proxy URL for u: opts.proxy (false: none), else HTTP_PROXY or
-- HTTPS_PROXY unless NO_PROXY names the host.
local function proxy_for(u, opt)
  if opt == false then return nil end
  if opt then return opt end
  local p = getenv(u.tls and "HTTPS_PROXY" or "HTTP_PROXY")
  if not p or p == "" then return nil end
  local no = getenv("NO_PROXY")
  if no then
    for item in no:gmatch("[^,%s]+") do
      if item == "*" then return nil end
      item = item:gsub("^%.", "")
      if u.host == item or u.host:sub(-#item - 1) == "." .. item then return nil end
    end
  end
  return p
end

-- Idle connections by origin: a list of {conn, p, expires} per key.
local pool = {}

local function checkin(c)
  if not c.key then c.conn:close(); return end
  local list = pool[c.key]
  if not list then list = {}; pool[c.key] = list end
  if #list >= POOL_MAX then c.conn:close(); return end
  c.expires = now() + POOL_IDLE
  list[#list + 1] = c
end

local function checkout(key)
  local list = pool[key]
  if not list then return nil end
  local t = now()
  while #list > 0 do
    local c = list[#list]
    list[#list] = nil
    if c.expires > t and not c.conn:is_closed() then return c end
    c.conn:close()
  end
  return nil
end

--- Closes every idle connection of the client's pool.
function M.close_idle()
  for key, list in next, pool do
    for i = 1, #list do list[i].conn:close() end
    pool[key] = nil
  end
end

-- The pool's key of a connection to u: the origin, the proxy, and for
-- https the tls options table itself, so that a connection made with
-- other certificate checks is never reused.
local function pool_key(u, proxy, opts)
  local key = u.scheme .. "://" .. u.hostport
  if proxy then key = "proxy " .. proxy .. " " .. key end
  if u.tls and type(opts.tls) == "table" then key = key .. " " .. tostring(opts.tls) end
  return key
end

-- The proxy for u (or nil) and the pool's key of a connection to u.
local function route(u, opts)
  local proxy = proxy_for(u, opts.proxy)
  return proxy, pool_key(u, proxy, opts)
end

-- A new connection for u (through proxy, if any), pooled under key: the
-- client state c. Plain http goes to a proxy as absolute URLs; https, and
-- any u when tunnel is set (WebSocket), through a CONNECT tunnel.
-- state.conn is the connection as soon as there is one (for a timeout
-- that cuts the setup to close).
local function connect(u, opts, proxy, key, tunnel, state)
  local tls = u.tls and (opts.tls or true) or nil
  local copts = {}
  local c = {buf = "", pos = 1, p = C.parser("response", DEFAULT_MAX_HEADER * 4)}
  if not proxy then
    copts.tls = tls
    local conn, err, code = net.connect(u.host, u.port, copts)
    if not conn then return nil, err, code end
    c.conn = conn
    state.conn = conn
    c.key = key
    return c
  end
  local pu, perr = parse_url(proxy)
  if not pu then return nil, "bad proxy: " .. perr, "EINVAL" end
  local conn, err, code = net.connect(pu.host, pu.port, copts)
  if not conn then return nil, err, code end
  c.conn = conn
  state.conn = conn
  if not u.tls and not tunnel then
    c.absolute = true                        -- the target is the whole URL
    c.key = key
    return c
  end
  -- through the proxy: a CONNECT tunnel, then TLS inside it for https
  local authority = (u.host:find(":", 1, true) and "[" .. u.host .. "]" or u.host) .. ":" .. u.port
  local ok
  ok, err, code = conn:write(C.request("CONNECT", authority, nil, authority))
  if ok then
    -- bounded as the TLS handshake that follows is: a proxy that never
    -- answers is no better than a server that never answers the hello
    -- (tls.handshake_timeout when it is a number: start_tls checks it)
    local hs = type(tls) == "table" and tls.handshake_timeout
    local wait = type(hs) == "number" and hs > 0 and hs or TUNNEL_WAIT
    local head
    if wait > 1e9 then                       -- as the handshake's: no bound
      head, err, code = M._read_head(c, true)
    else
      local asyncio = require "asyncio"
      local done
      done, head, err, code = pcall(asyncio.wait_for, M._read_head, wait, c, true)
      if not done then
        if not asyncio.is_timeout(head) then error(head, 0) end
        head, err, code = nil, ("proxy: no answer to CONNECT within %g s"):format(wait), "ETIMEDOUT"
      end
    end
    if head and (head.status < 200 or head.status > 299) then
      head, err, code = nil, "proxy: CONNECT answered " .. head.status, "EPROTO"
    end
    ok = head ~= nil
  end
  if ok and c.pos <= #c.buf then ok, err, code = nil, "proxy: bytes after the CONNECT answer", "EPROTO" end
  if ok and u.tls and not conn.start_tls then
    ok, err, code = nil, "https through a proxy needs TLS streams", "ENOSYS"
  end
  if ok and u.tls then
    local topts = type(tls) == "table" and tls or {}
    if not topts.server_name then
      local t = {}
      for k, v in next, topts do t[k] = v end
      t.server_name = u.host
      topts = t
    end
    ok, err, code = conn:start_tls(topts)
  end
  if not ok then conn:close(); return nil, err, code end
  c.p = C.parser("response", DEFAULT_MAX_HEADER * 4)
  c.key = key
  return c
end

-- Reads the head of the next response on c (1xx interim answers skipped
-- unless want_interim). Returns head, first body bytes or false, complete;
-- or nil, message, code.
function M._read_head(c, no_body, want_interim)
  while true do
    if c.pos > #c.buf then
      local data, err, code = c.conn:read()
      if not data then
        if err then return nil, err, code end
        return nil, "http: the server closed the connection before answering", "EOF"
      end
      c.buf, c.pos, c.got = data, 1, true
    end
    local pos, head, body, complete = c.p:execute(c.buf, c.pos, no_body)
    if not pos then return nil, head, "EPROTO" end
    c.pos = pos
    if head then
      local s = head.status
      if s >= 200 or s == 101 or want_interim then return head, body, complete end
    end
  end
end

-- The next piece of a response body: a string, nil at its end, or nil,
-- message, code.
local function next_response_body(r)
  local c = r.c
  if r.chunk then
    local piece = r.chunk
    r.chunk = false
    return piece
  end
  if r.complete then return nil end
  while true do
    if c.pos > #c.buf then
      local data, err, code = c.conn:read()
      if not data then
        if err then return nil, err, code end
        local done, ferr = c.p:finish()       -- a body that ends with the connection
        c.reusable = false
        if done then r.complete = true; return nil end
        return nil, ferr or "http: the server closed the connection before the end of the body", "EOF"
      end
      c.buf, c.pos = data, 1
    end
    local pos, _, body, complete = c.p:execute(c.buf, c.pos, r.no_body)
    if not pos then return nil, _, "EPROTO" end
    c.pos = pos
    if complete then r.complete = true end
    if body then return body end
    if complete then return nil end
  end
end

local Response = {}
Response.__index = Response
Response.__name = "http response"
Response._kind = "http response"

-- Done with the connection of r: back to the pool when the response ended
-- cleanly and both sides keep it alive.
local function release(r)
  local c = r.c
  if not c then return end
  r.c = nil
  if r.complete and r.keep_alive and c.reusable ~= false and c.pos > #c.buf then
    checkin(c)
  else
    c.conn:close()
  end
end

--- res:read(): the next piece of the body (decoded when decompress was
-- asked), nil at its end, or nil, message, code.
function Response.read(r)
  args.check_self(r, "http response", "read")
  if not r.c then return nil end
  while true do
    local piece, err, code = next_response_body(r)
    if not piece then
      if err then release(r); return nil, err, code end
      if r.inflater then
        r.inflater = nil
      end
      release(r)
      return nil
    end
    r.received = r.received + #piece
    if r.received > r.max_body then
      r.complete = false
      release(r)
      return nil, "http: response body larger than " .. r.max_body .. " bytes", "E2BIG"
    end
    if r.inflater then
      local out, ierr = r.inflater:inflate(piece, r.max_body)
      if not out then r.complete = false; release(r); return nil, ierr, "EPROTO" end
      if out ~= "" then return out end
    else
      return piece
    end
  end
end

--- res:close(): drops the rest of the body; the connection is closed, or
-- kept for reuse when the body had been read to its end.
function Response.close(r)
  args.check_self(r, "http response", "close")
  release(r)
end

Response.__close = Response.close

local EXTRA = {["user-agent"] = "tulua"}
local EXTRA_GZIP = {["user-agent"] = "tulua", ["accept-encoding"] = "gzip, deflate"}

-- One exchange of a request and its response's head on a pooled or new
-- connection: a Response, or nil, message, code. state.conn is the
-- connection in use, for M.request to close when its timeout cuts the
-- exchange.
local function exchange(method, u, opts, body, state)
  local proxy, key = route(u, opts)
  local length = nil
  if type(body) == "string" then length = #body elseif body then length = -1 end
  if length == nil and (method == "POST" or method == "PUT" or method == "PATCH") then length = 0 end
  for _ = 1, 2 do
    local c = checkout(key)
    local reused = c ~= nil
    if not c then
      local err, code
      c, err, code = connect(u, opts, proxy, key, false, state)
      if not c then return nil, err, code end
    end
    state.conn = c.conn
    c.got = false
    local target = c.absolute and (u.scheme .. "://" .. u.hostport .. u.target) or u.target
    local head, _, expect = C.request(method, target, opts.headers, u.hostport, length,
      opts.decompress and EXTRA_GZIP or EXTRA)
    local ok, err, code
    local no_body = method == "HEAD"
    local rhead, first, complete
    if expect and length and length ~= 0 then
      ok, err, code = c.conn:write(head)
      if ok then
        -- the interim 100, a final answer, or after a second the body
        -- anyway (a server that ignores Expect), as curl does
        local asyncio = require "asyncio"
        local done, h, f, cmp = pcall(asyncio.wait_for, M._read_head, EXPECT_WAIT, c, no_body, true)
        if done then
          rhead, first, complete = h, f, cmp
          if not rhead then ok, err, code = nil, first, complete end
        elseif not asyncio.is_timeout(h) then
          error(h, 0)
        end
      end
      if ok and rhead and rhead.status == 100 then
        rhead = nil
      elseif ok and rhead then
        c.reusable = false                 -- answered without the body it announced
      end
    else
      ok, err, code = c.conn:write(type(body) == "string" and head .. body or head)
    end
    if ok and not rhead and length and length ~= 0 and (expect or type(body) ~= "string") then
      if type(body) == "string" then
        ok, err, code = c.conn:write(body)
      else
        ok, err, code = send_chunks(c.conn, body)
      end
    end
    if ok and not rhead then
      rhead, first, complete = M._read_head(c, no_body)
      if not rhead then ok, err, code = nil, first, complete end
    end
    if ok then
      local r = setmetatable({c = c, status = rhead.status, reason = rhead.reason, headers = rhead.headers,
        chunk = first, complete = complete, keep_alive = rhead.keep_alive, no_body = no_body,
        received = 0, max_body = opts.max_body or CLIENT_MAX_BODY}, Response)
      local enc = rhead.headers["content-encoding"]
      if opts.decompress and enc and (enc == "gzip" or enc == "deflate" or enc == "x-gzip") then
        r.inflater = C.inflater()
        rhead.headers["content-encoding"] = nil
        rhead.headers["content-length"] = nil
      end
      return r
    end
    c.conn:close()
    -- a kept connection the server had closed meanwhile: once more on a new
    -- one, unless part of an answer came or the body cannot be sent again
    if not (reused and not c.got and type(body) ~= "function") then return nil, err, code end
  end
  return nil, "http: no connection", "ECONNRESET"
end

local REQUEST_OPTIONS = {headers = true, body = true, timeout = true, max_body = true, follow = true,
  tls = true, stream = true, proxy = true, decompress = true}

local function check_request_options(opts, argn, fname)
  if opts == nil then return {} end
  if type(opts) ~= "table" then type_error(argn, fname, "table", opts, 3) end
  check_options(opts, REQUEST_OPTIONS, argn, fname, 3)
  if opts.headers ~= nil and type(opts.headers) ~= "table" then
    arg_error(argn, fname, "'headers' must be a table", 3)
  end
  local b = opts.body
  if b ~= nil and type(b) ~= "string" and type(b) ~= "function" then
    arg_error(argn, fname, "'body' must be a string or a function", 3)
  end
  check_positive(opts.timeout, "timeout", argn, fname, 4)
  check_integer(opts.max_body, "max_body", argn, fname, 4)
  if opts.follow ~= nil and (math_type(opts.follow) ~= "integer" or opts.follow < 0) then
    arg_error(argn, fname, "'follow' must be an integer >= 0", 3)
  end
  if opts.proxy ~= nil and opts.proxy ~= false and type(opts.proxy) ~= "string" then
    arg_error(argn, fname, "'proxy' must be a URL or false", 3)
  end
  return opts
end

-- Runs fn(...) within timeout seconds (no bound when nil): its results;
-- nil, "http: <what>: timed out after <timeout> s", "ETIMEDOUT" when the
-- time ran out. Cut short, by the timeout or an error, the connection fn
-- was using (state.conn, which fn keeps up to date) is closed: its state
-- is unknown.
local function within(timeout, what, state, fn, ...)
  if not timeout then return fn(...) end
  local asyncio = require "asyncio"
  local r = table.pack(pcall(asyncio.wait_for, fn, timeout, ...))
  if r[1] then return table.unpack(r, 2, r.n) end
  if state.conn then state.conn:close() end
  local e = r[2]
  if type(e) == "table" and e.code == "ETIMEDOUT" then
    return nil, ("http: %s: timed out after %g s"):format(what, timeout), "ETIMEDOUT"
  end
  error(e, 0)
end

local function do_request(method, url, opts, state)
  local body = opts.body
  local follow = opts.follow or 5
  local redirects = 0
  while true do
    local u, err = parse_url(url)
    if not u then return nil, err, "EINVAL" end
    if u.scheme ~= "http" and u.scheme ~= "https" then
      return nil, "not an http:// or https:// URL: " .. url, "EINVAL"
    end
    local r, rerr, code = exchange(method, u, opts, body, state)
    if not r then return nil, rerr, code end
    local s, location = r.status, r.headers.location
    if location and redirects < follow and (s == 301 or s == 302 or s == 303 or s == 307 or s == 308)
      and not (type(body) == "function" and (s == 307 or s == 308)) then
      r:close()
      redirects = redirects + 1
      url = resolve(u, location)
      if s == 303 or ((s == 301 or s == 302) and method == "POST") then
        if method ~= "HEAD" then method = "GET" end
        body = nil
      end
    else
      if opts.stream then return r end
      local parts, n = {}, 0
      while true do
        local piece, perr, pcode = r:read()
        if not piece then
          if perr then return nil, perr, pcode end
          break
        end
        n = n + 1
        parts[n] = piece
      end
      return r.status, concat(parts, "", 1, n), r.headers
    end
  end
end

--- http.request(method, url [, opts]): status, body, headers for any
-- answer (a response object instead with stream = true); nil, message,
-- code when none came.
function M.request(method, url, opts)
  if type(method) ~= "string" then type_error(1, "request", "string", method) end
  if type(url) ~= "string" then type_error(2, "request", "string", url) end
  opts = check_request_options(opts, 3, "request")
  method = method:upper()
  local state = {}
  return within(opts.timeout, method .. " " .. url, state, do_request, method, url, opts, state)
end

--- http.get(url [, opts]): http.request("GET", url, opts).
function M.get(url, opts)
  if type(url) ~= "string" then type_error(1, "get", "string", url) end
  opts = check_request_options(opts, 2, "get")
  return M.request("GET", url, opts)
end

local WS_OPTIONS = {headers = true, protocols = true, max_message = true, tls = true, timeout = true,
  proxy = true}

-- The opening of http.websocket: the connection (through a proxy's tunnel
-- if any), then the handshake. state.conn is the connection, for the
-- timeout to close.
local function open_websocket(ws, u, opts, state)
  local proxy, key = route(u, opts)
  local c, err, code = connect(u, opts, proxy, key, true, state)
  if not c then return nil, err, code end
  local r, werr, wcode = ws.connect_stream(c.conn, {host = u.hostport, target = u.target,
    headers = opts.headers, protocols = opts.protocols, max_message = opts.max_message})
  if not r then c.conn:close() end
  return r, werr, wcode
end

--- http.websocket(url [, opts]): connects to a ws:// or wss:// URL (through
-- a proxy's CONNECT tunnel if opts.proxy or the environment names one) and
-- performs the WebSocket handshake, all within opts.timeout; the ws object,
-- or nil, message, code.
function M.websocket(url, opts)
  if type(url) ~= "string" then type_error(1, "websocket", "string", url) end
  if opts ~= nil and type(opts) ~= "table" then type_error(2, "websocket", "table", opts) end
  opts = opts or {}
  check_options(opts, WS_OPTIONS, 2, "websocket")
  check_positive(opts.timeout, "timeout", 2, "websocket")
  if opts.proxy ~= nil and opts.proxy ~= false and type(opts.proxy) ~= "string" then
    arg_error(2, "websocket", "'proxy' must be a URL or false")
  end
  local ws = ws_module()
  local u, err = parse_url(url)
  if not u or (u.scheme ~= "ws" and u.scheme ~= "wss") then
    return nil, err or ("not a ws:// or wss:// URL: " .. url), "EINVAL"
  end
  local state = {}
  return within(opts.timeout, "websocket " .. url, state, open_websocket, ws, u, opts, state)
end

return M
