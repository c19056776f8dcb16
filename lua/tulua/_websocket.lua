--- tulua._websocket: WebSocket (RFC 6455) over any connected tulua stream:
-- the client and server handshakes and the WebSocket object, on the framer
-- of bindings/websocket.c (tulua._wslay, libwslay). Internal: tulua.http's
-- http.websocket and req:websocket are the public doors; reference page
-- lua/tulua/websocket.md.
--
-- Only the stream's public methods are used (read, write, close), so
-- plain tcp, unix and TLS streams all serve. The handshakes' HTTP heads
-- are written and parsed by tulua._http (llhttp), as tulua.http's are.
-- One task at a time reads the stream (a "step": one read, fed to the
-- framer); other tasks that want to receive, or a close that waits for the
-- peer's close frame, park until that step ends and look again. One task
-- at a time writes (a "flush": every frame the framer holds), so frames
-- never interleave; a sender that finds a flush under way parks until it
-- ends, which also covers its frame: the backpressure of the stream's
-- write holds for all.
local tulua = require("tulua")
local timer = require("tulua.timer")
local wslay = require("tulua._wslay")
local C = require("tulua._http")
local args = require("tulua._args")

local type, error, pcall, tostring, setmetatable, utf8_len, math_type =
  type, error, pcall, tostring, setmetatable, utf8.len, math.type
local arg_error, type_error, check_self, check_options =
  args.arg_error, args.type_error, args.check_self, args.check_options

local M = {}

local KIND = "websocket"
local DEFAULT_MAX_MESSAGE = 16 * 1024 * 1024
local DEFAULT_CLOSE_TIMEOUT = 5
local MAX_RESPONSE_HEAD = 64 * 1024 -- as tulua.http's client

-- What receive says when this end failed the connection, by the code of
-- the close frame it sent.
local FAILED = {
  [1002] = "websocket: protocol error",
  [1007] = "websocket: invalid UTF-8 in a text message",
  [1009] = "websocket: message longer than max_message bytes",
}

local WebSocket = {_kind = KIND, __name = "websocket"}
WebSocket.__index = WebSocket

function WebSocket:__tostring()
  return self._done and "websocket (closed)" or "websocket (open)"
end

-- ---- parking: lists of tasks waiting for a step, a flush or the end ----

local function wait_on(list)
  local me = tulua.current()
  list[#list + 1] = me
  local ok, err = tulua.park()
  if not ok then
    for i = #list, 1, -1 do
      if list[i] == me then
        table.remove(list, i)
        break
      end
    end
    error(err, 0)
  end
end

local function wake_all(list)
  for i = #list, 1, -1 do
    local task = list[i]
    list[i] = nil
    tulua.unpark(task)
  end
end

-- ---- the connection's end, writing and reading ----

-- Ends the connection once (the first reason wins): what receive and send
-- answer from now on, the stream closed, every waiter woken.
local function finish(self, msg, code)
  if self._done then return end
  self._done = {msg, code}
  if self._close_timer then self._close_timer:close() end
  self._stream:close()
  wake_all(self._readers)
  wake_all(self._writers)
end

-- Writes every frame the framer holds. With wait, a task that finds
-- another's flush under way parks until it ends (its frames go with that
-- flush; if that flush was cancelled, it writes what is left itself);
-- without, it leaves them to it. Returns true or nil, message, code (the
-- connection is over then).
local function flush(self, wait)
  if self._writing then
    if not wait then return true end
    repeat wait_on(self._writers) until not self._writing
  end
  if not self._done then
    self._writing = true
    local framer, stream = self._framer, self._stream
    while not self._done do
      local out = framer:take()
      if out == "" then break end
      local ok, r, err, code = pcall(stream.write, stream, out)
      if not ok or not r then
        self._writing = false
        wake_all(self._writers)
        if not ok then error(r, 0) end -- cancelled: the write goes on without us
        finish(self, "websocket: " .. tostring(err), code)
        break
      end
    end
    self._writing = false
    wake_all(self._writers)
  end
  if self._done then return nil, self._done[1], self._done[2] end
  return true
end

-- Answers what the framer made of the bytes fed to it: pongs go out; a
-- close frame received, or a failure found (close 1002, 1007, 1009 queued),
-- ends the connection once that close frame is written.
local function process(self)
  local framer = self._framer
  local reading, got_close = framer:state()
  if reading and not got_close then
    flush(self, false)
    return
  end
  flush(self, true)
  local _, _, _, code_received, code_sent, reason = framer:state()
  if got_close then
    local msg = self._closing and "websocket closed" or "websocket closed by peer"
    finish(self, reason ~= "" and msg .. ": " .. reason or msg, code_received)
  elseif FAILED[code_sent] then
    finish(self, FAILED[code_sent], code_sent)
  else -- wslay closes without a code for some breaches (a long ping)
    finish(self, FAILED[1002], 1002)
  end
end

-- One read of the stream, fed to the framer; wakes the tasks that waited
-- for it. The caller checked that no step is under way.
local function step(self)
  self._reading = true
  local stream = self._stream
  local ok, chunk, err, code = pcall(stream.read, stream)
  self._reading = false
  if not ok then
    wake_all(self._readers)
    error(chunk, 0)
  end
  if self._done then -- ended meanwhile: a close timeout, a failed write
    wake_all(self._readers)
    return
  end
  if chunk then
    self._framer:feed(chunk)
    ok, err = pcall(process, self)
    wake_all(self._readers)
    if not ok then error(err, 0) end
    return
  end
  if err then
    finish(self, "websocket: " .. tostring(err), code)
  else
    finish(self, "websocket: connection closed without a close frame", "EOF")
  end
end

-- Steps once, or waits for the step of another task; or ends the
-- connection that a close frame or a failure stopped reading (if the task
-- that found it was cancelled before it could).
local function progress(self)
  if self._reading then
    wait_on(self._readers)
  elseif not self._framer:state() then
    process(self)
  else
    step(self)
  end
end

local function new_websocket(stream, server, max_message, close_timeout, protocol)
  return setmetatable({
    _stream = stream,
    _framer = wslay.new(server, max_message),
    _close_timeout = close_timeout,
    _readers = {},
    _writers = {},
    protocol = protocol,
  }, WebSocket)
end

-- ---- the WebSocket object ----

--- ws:send(data [, kind]): sends data as one message, text (the default:
-- data must be UTF-8) or "binary"; returns true once the stream took it, or
-- nil, message, code when the connection is over or closing.
function WebSocket:send(data, kind)
  check_self(self, KIND, "send")
  if type(data) ~= "string" then type_error(2, "send", "string", data) end
  if kind ~= nil and kind ~= "text" and kind ~= "binary" then
    arg_error(3, "send", "'text' or 'binary' expected, got " .. tostring(kind))
  end
  if kind ~= "binary" and not utf8_len(data) then
    arg_error(2, "send", "text is not UTF-8 (send it as 'binary')")
  end
  if self._done then return nil, self._done[1], self._done[2] end
  if self._closing then return nil, "websocket closing", "ECANCELED" end
  self._framer:queue(data, kind == "binary")
  return flush(self, true)
end

--- ws:receive() -> data, "text"|"binary": the next message, whole; nil,
-- message, code once the connection is over (code the peer's close code,
-- the code this end failed it with, or a string when it ended without a
-- close handshake).
function WebSocket:receive()
  check_self(self, KIND, "receive")
  local framer = self._framer
  while true do
    local data, kind = framer:pop()
    if data then return data, kind end
    if self._done then return nil, self._done[1], self._done[2] end
    progress(self)
  end
end

--- ws:close([code [, reason]]): the close handshake: sends a close frame
-- (code 1000 by default), waits up to close_timeout seconds for the peer's,
-- then closes the stream. Returns true; a second close does nothing.
function WebSocket:close(code, reason)
  check_self(self, KIND, "close")
  if code ~= nil then
    if math_type(code) ~= "integer" then type_error(2, "close", "integer", code) end
    if not (code == 1000 or (code >= 1001 and code <= 1003) or (code >= 1007 and code <= 1014)
        or (code >= 3000 and code <= 4999)) then
      arg_error(2, "close", "invalid close code " .. code)
    end
  end
  if reason ~= nil then
    if type(reason) ~= "string" then type_error(3, "close", "string", reason) end
    if #reason > 123 then arg_error(3, "close", "reason longer than 123 bytes") end
    if not utf8_len(reason) then arg_error(3, "close", "reason is not UTF-8") end
    if code == nil then code = 1000 end
  end
  if self._done then return true end
  if not self._closing then
    self._closing = true
    self._framer:queue_close(code or 1000, reason or "")
    self._close_timer = timer.after(self._close_timeout, function()
      finish(self, "websocket: no close frame from the peer within " .. self._close_timeout .. " s",
        "ETIMEDOUT")
    end)
    flush(self, true)
  end
  while not self._done do progress(self) end
  return true
end

--- ws:is_closed() -> whether the connection is over.
function WebSocket:is_closed()
  check_self(self, KIND, "is_closed")
  return self._done ~= nil
end

-- ---- handshakes ----

local TOKEN = "^[%w!#$%%&'*+%-.^_`|~]+$"

-- (Called by common_options: the level blames the caller of the public
-- function.)
local function check_header_table(headers, argn, fname)
  for k, v in pairs(headers) do
    if type(k) ~= "string" or not k:find(TOKEN) then
      arg_error(argn, fname, "invalid header name " .. tostring(k), 4)
    end
    if type(v) ~= "string" or v:find("[\r\n%z]") then
      arg_error(argn, fname, "invalid value of header " .. k, 4)
    end
  end
end

-- The headers of a handshake: the script's (checked by common_options),
-- then the handshake's own.
local function head_headers(extra, own)
  local h = {}
  if extra then
    for k, v in pairs(extra) do h[k] = v end
  end
  for k, v in pairs(own) do h[k] = v end
  return h
end

-- Whether the comma-separated header value holds token (any case).
local function has_token(value, token)
  if type(value) ~= "string" then return false end
  for t in value:gmatch("[^,]+") do
    if t:match("^%s*(.-)%s*$"):lower() == token then return true end
  end
  return false
end

local function check_protocols(protocols, argn, fname)
  if type(protocols) ~= "table" then type_error(argn, fname, "table", protocols, 4) end
  for _, p in ipairs(protocols) do
    if type(p) ~= "string" or not p:find(TOKEN) then
      arg_error(argn, fname, "invalid protocol " .. tostring(p), 4)
    end
  end
end

-- Checks the options common to both ends; returns max_message and
-- close_timeout.
local function common_options(opts, fname)
  local max = opts.max_message
  if max == nil then
    max = DEFAULT_MAX_MESSAGE
  elseif math_type(max) ~= "integer" or max < 1 then
    arg_error(2, fname, "max_message must be a positive integer", 3)
  end
  local ct = opts.close_timeout
  if ct == nil then
    ct = DEFAULT_CLOSE_TIMEOUT
  elseif type(ct) ~= "number" or ct ~= ct or ct <= 0 or ct == math.huge then
    arg_error(2, fname, "close_timeout must be a positive number", 3)
  end
  if opts.headers ~= nil then
    if type(opts.headers) ~= "table" then type_error(2, fname, "table", opts.headers, 3) end
    check_header_table(opts.headers, 2, fname)
  end
  if opts.protocols ~= nil then check_protocols(opts.protocols, 2, fname) end
  return max, ct
end

local function check_stream(stream, fname)
  local t = type(stream)
  if t ~= "userdata" and t ~= "table" then type_error(1, fname, "stream", stream, 3) end
end

local CLIENT_OPTIONS = {host = true, target = true, headers = true, protocols = true,
  max_message = true, close_timeout = true}

-- The stream is closed: what it holds is a half-read answer.
local function handshake_fail(stream, msg, code)
  stream:close()
  return nil, "websocket handshake: " .. msg, code or "EPROTO"
end

--- _websocket.connect_stream(stream, opts) -> ws, or nil, message, code:
-- the client's handshake on a connected stream. opts: host (string, the
-- Host header), target ("/"), headers (table), protocols (list),
-- max_message (16 MiB), close_timeout (5 s). On failure the stream is
-- closed.
function M.connect_stream(stream, opts)
  check_stream(stream, "connect_stream")
  if type(opts) ~= "table" then type_error(2, "connect_stream", "table", opts) end
  check_options(opts, CLIENT_OPTIONS, 2, "connect_stream")
  local max, close_timeout = common_options(opts, "connect_stream")
  local host, target = opts.host, opts.target or "/"
  if type(host) ~= "string" or host == "" or host:find("[%s%z]") then
    arg_error(2, "connect_stream", "host must be a host name")
  end
  if type(target) ~= "string" or not target:find("^/[^%s%z]*$") then
    arg_error(2, "connect_stream", "target must be a path starting with /")
  end
  local key = wslay.new_key()
  local own = {Upgrade = "websocket", Connection = "Upgrade", ["Sec-WebSocket-Key"] = key,
    ["Sec-WebSocket-Version"] = "13"}
  local offered = {}
  if opts.protocols and #opts.protocols > 0 then
    own["Sec-WebSocket-Protocol"] = table.concat(opts.protocols, ", ")
    for _, p in ipairs(opts.protocols) do offered[p] = true end
  end
  local ok, err, code = stream:write((C.request("GET", target, head_headers(opts.headers, own), host)))
  if not ok then return handshake_fail(stream, tostring(err), code) end

  -- the response head; what came after it is the server's first frames
  -- (the parser takes every byte until the head ends: a read's bytes are
  -- all the parser has not seen)
  local p = C.parser("response", MAX_RESPONSE_HEAD)
  local buf, pos, head
  repeat
    local started = buf ~= nil
    buf, err, code = stream:read()
    if not buf then
      local why = started and "connection closed in the response head" or "connection closed before the response"
      return handshake_fail(stream, err or why, err and code or "EOF")
    end
    pos, head, err = p:execute(buf, 1)
    if not pos then
      return handshake_fail(stream, err == "431" and "response head too long" or head)
    end
  until head
  if head.status ~= 101 then
    return handshake_fail(stream, "server answered " .. head.status .. (head.reason ~= "" and " " .. head.reason or ""))
  end
  local headers = head.headers
  if not has_token(headers.upgrade, "websocket") then
    return handshake_fail(stream, "no 'Upgrade: websocket' in the response")
  end
  if not has_token(headers.connection, "upgrade") then
    return handshake_fail(stream, "no 'Connection: Upgrade' in the response")
  end
  if headers["sec-websocket-accept"] ~= wslay.accept_key(key) then
    return handshake_fail(stream, "wrong Sec-WebSocket-Accept")
  end
  if headers["sec-websocket-extensions"] then
    return handshake_fail(stream, "extension not asked for: " .. headers["sec-websocket-extensions"])
  end
  local protocol = headers["sec-websocket-protocol"]
  if protocol and not offered[protocol] then
    return handshake_fail(stream, "protocol not offered: " .. protocol)
  end
  local ws = new_websocket(stream, false, max, close_timeout, protocol)
  if pos <= #buf then
    ws._framer:feed(buf:sub(pos))
    process(ws)
  end
  return ws
end

local SERVER_OPTIONS = {headers = true, protocols = true, max_message = true,
  close_timeout = true}

local function upgrade_fail(msg)
  return nil, "websocket upgrade: " .. msg, "EPROTO"
end

-- A header of the parsed request: a string, or a list of the values of a
-- repeated header.
local function request_header(req_headers, name)
  local v = req_headers[name]
  if type(v) == "table" then return table.concat(v, ", ") end
  return v
end

--- _websocket.accept_stream(stream, req_headers, opts, pending) -> ws, or
-- nil, message, code: the server's side of the handshake, for a request
-- already read (req_headers keyed by lower-case name; pending the bytes
-- read past its head). Writes the 101 response; on failure writes nothing
-- (the HTTP layer answers 400). opts: headers, protocols (those the
-- server speaks, by preference), max_message, close_timeout.
function M.accept_stream(stream, req_headers, opts, pending)
  check_stream(stream, "accept_stream")
  if type(req_headers) ~= "table" then type_error(2, "accept_stream", "table", req_headers) end
  if opts == nil then opts = {} end
  if type(opts) ~= "table" then type_error(3, "accept_stream", "table", opts) end
  check_options(opts, SERVER_OPTIONS, 3, "accept_stream")
  if pending ~= nil and type(pending) ~= "string" then
    type_error(4, "accept_stream", "string", pending)
  end
  local max, close_timeout = common_options(opts, "accept_stream")
  if not has_token(request_header(req_headers, "upgrade"), "websocket") then
    return upgrade_fail("no 'Upgrade: websocket'")
  end
  if not has_token(request_header(req_headers, "connection"), "upgrade") then
    return upgrade_fail("no 'Connection: Upgrade'")
  end
  if request_header(req_headers, "sec-websocket-version") ~= "13" then
    return upgrade_fail("Sec-WebSocket-Version is not 13")
  end
  local key = request_header(req_headers, "sec-websocket-key")
  if type(key) ~= "string" or not key:find("^[%w+/]+==$") or #key ~= 24 then
    return upgrade_fail("missing or malformed Sec-WebSocket-Key")
  end
  local protocol
  local asked = request_header(req_headers, "sec-websocket-protocol")
  if asked and opts.protocols then
    for _, p in ipairs(opts.protocols) do
      if has_token(asked, p:lower()) then
        protocol = p
        break
      end
    end
  end
  local res = C.response(101, head_headers(opts.headers, {Upgrade = "websocket",
    Connection = "Upgrade", ["Sec-WebSocket-Accept"] = wslay.accept_key(key),
    ["Sec-WebSocket-Protocol"] = protocol}), nil, true, false)
  local ok, err, code = stream:write(res)
  if not ok then return nil, "websocket upgrade: " .. tostring(err), code end
  local ws = new_websocket(stream, true, max, close_timeout, protocol)
  if pending and pending ~= "" then
    ws._framer:feed(pending)
    process(ws)
  end
  return ws
end

return M
