-- echo_server.lua: a TCP echo server on 127.0.0.1. Every connection gets a
-- task of its own that writes back each byte it reads, until the client
-- closes; many connections are served at once while each task just waits in
-- read(). It prints "listening on 127.0.0.1:PORT" and runs until killed
-- (Ctrl-C).
--
--   build/tulua scripts/demo/echo_server.lua [port]    -- default 7000, 0: any free port
--   build/tulua scripts/demo/echo_client.lua 7000      -- in another terminal
local net = require "tulua.net"

local port = math.tointeger(tonumber(arg[1] or 7000))
assert(port and port >= 0 and port <= 65535, "usage: echo_server.lua [port]")

local server = assert(net.serve("127.0.0.1", port, function(conn)
  -- The connection is closed for us when this function returns or fails.
  while true do
    local data = conn:read()           -- whatever has arrived, up to 64 KiB
    if not data then return end        -- the client closed its side (or an error)
    if not conn:write(data) then return end
  end
end))

print(("listening on %s:%d"):format(server:address()))
