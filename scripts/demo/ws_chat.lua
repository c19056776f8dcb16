-- ws_chat.lua: a WebSocket chat room on 127.0.0.1 with tulua.http. GET /
-- serves a one-page client for the browser; /chat is the WebSocket: every
-- text message a member sends goes to every member, prefixed with its
-- number ("3: hello"); joins and leaves are announced. Each member has its
-- own bounded outbox and a task that sends from it, so a slow member never
-- holds the others up (one whose outbox fills is dropped). It prints
-- "listening on http://127.0.0.1:PORT/" and runs until killed (Ctrl-C).
--
--   build/tulua scripts/demo/ws_chat.lua [port]      -- default 8081, 0: any free port
--   open http://127.0.0.1:8081/ in two browser tabs, or:
--   python3 -m websockets ws://127.0.0.1:8081/chat
local tulua = require "tulua"
local asyncio = require "asyncio"
local http = require "tulua.http"

local port = math.tointeger(tonumber(arg[1] or 8081))
assert(port and port >= 0 and port <= 65535, "usage: ws_chat.lua [port]")

local OUTBOX = 100                 -- messages waiting for one member, at most
local members, count = {}, 0       -- member -> true; members ever joined

local PAGE = [[<!doctype html>
<title>tulua chat</title>
<pre id="log" style="height:20em;overflow:auto;border:1px solid #ccc"></pre>
<form id="f"><input id="msg" autofocus size="60"> <button>send</button></form>
<script>
const log = document.getElementById("log"), msg = document.getElementById("msg");
const ws = new WebSocket("ws://" + location.host + "/chat");
ws.onmessage = (e) => { log.textContent += e.data + "\n"; log.scrollTop = log.scrollHeight; };
ws.onclose = () => { log.textContent += "(disconnected)\n"; };
document.getElementById("f").onsubmit = (e) => { e.preventDefault(); ws.send(msg.value); msg.value = ""; };
</script>
]]

-- Queues text for every member; drops members whose outbox is full.
local function broadcast(text)
  for m in pairs(members) do
    if m.outbox:full() then
      members[m] = nil
      m.ws:close(1008, "too slow")
    else
      m.outbox:put_nowait(text)
    end
  end
end

local function chat(ws)
  count = count + 1
  local me = {ws = ws, id = count, outbox = asyncio.Queue(OUTBOX)}
  local sender = tulua.spawn(function()
    while true do
      if not ws:send(me.outbox:get()) then return end
    end
  end)
  members[me] = true
  local here = 0
  for _ in pairs(members) do here = here + 1 end
  broadcast(("* %d joined (%d here)"):format(me.id, here))
  while true do
    local text, kind = ws:receive()
    if not text then break end
    if kind == "text" then broadcast(me.id .. ": " .. text) end
  end
  members[me] = nil
  sender:cancel()
  broadcast(("* %d left"):format(me.id))
end

local server = assert(http.serve("127.0.0.1", port, function(req)
  if req.path == "/chat" then
    local ws, err = req:websocket()
    if not ws then return 426, err .. "\n", {["content-type"] = "text/plain"} end
    return chat(ws)
  elseif req.path == "/" then
    return 200, PAGE, {["content-type"] = "text/html; charset=utf-8"}
  end
  return 404, "not found\n", {["content-type"] = "text/plain"}
end))
print(("listening on http://%s:%d/"):format(server:address()))
