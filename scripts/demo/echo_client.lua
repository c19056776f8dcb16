-- echo_client.lua: a client for echo_server.lua. It opens C connections at
-- once, each in its own task; each task sends M lines one after the other,
-- waits for each to come back and checks it. Then it prints how many round
-- trips it made and how long they took.
--
--   build/tulua scripts/demo/echo_server.lua 7000 &
--   build/tulua scripts/demo/echo_client.lua 7000 [C=10] [M=1000]
local tulua = require "tulua"
local net = require "tulua.net"

local port = math.tointeger(tonumber(arg[1] or 7000))
local conns = math.tointeger(tonumber(arg[2] or 10))
local msgs = math.tointeger(tonumber(arg[3] or 1000))
assert(port and conns and msgs, "usage: echo_client.lua PORT [connections] [messages]")

local function client(id)
  local conn <close> = assert(net.connect("127.0.0.1", port, {timeout = 5}))
  for i = 1, msgs do
    local line = ("client %d, message %d\n"):format(id, i)
    assert(conn:write(line))
    local back = assert(conn:read_line())
    assert(back .. "\n" == line, "the echo differs from what was sent")
  end
  return msgs
end

local t0 = tulua.now()
local tasks = {}
for id = 1, conns do tasks[id] = tulua.spawn(client, id) end
local total = 0
for _, task in ipairs(tasks) do total = total + task:join() end  -- raises a task's error
local secs = tulua.now() - t0
print(("%d round trips over %d connections in %.3f s (%.0f/s)"):format(total, conns, secs, total / secs))
