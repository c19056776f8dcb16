-- game.lua: the example engine's game: 10,000 tasks move entities, others read assets, talk TCP, keep a pool busy
-- Run by engine.c: `engine game.lua [frames [port [workers]]]`; port is a
-- local TCP echo server's (none: the game starts its own).
local tulua = require "tulua"
local fs = require "tulua.fs"
local net = require "tulua.net"
local futures = require "concurrent.futures"
local engine = require "engine"

local port_arg, workers_arg = ...
local port, workers = tonumber(port_arg), tonumber(workers_arg) or 1

-- assets: a level file read without blocking the frame loop
local level = {}
local text = assert(fs.read_file(engine.dir .. "/assets/level.txt"))
for key, value in text:gmatch("\n?(%a+) ([%d.]+)") do
  level[key] = tonumber(value)
end
engine.count("assets")

-- entities: a task each, moving it every `period` seconds and bouncing
-- off the window's edges; tasks start at spread times so that each frame
-- moves about the same number
local W, H = 640, 480
for i = 1, level.entities do
  tulua.spawn(function()
    local x, y = (i * 7919) % W, (i * 104729) % H
    local angle = i * 2.399963
    local vx, vy = math.cos(angle) * level.speed, math.sin(angle) * level.speed
    local id = engine.entity(x, y)
    tulua.sleep(level.period * (i % 100) / 100)
    while true do
      tulua.sleep(level.period)
      x, y = x + vx * level.period, y + vy * level.period
      if x < 0 or x >= W then vx = -vx; x = math.max(0, math.min(W - 1, x)) end
      if y < 0 or y >= H then vy = -vy; y = math.max(0, math.min(H - 1, y)) end
      engine.move(id, x, y)
    end
  end)
end

-- CPU work: every worker of the pool always has a job (sums of squares,
-- a few milliseconds each), and the frame loop does not wait for them
local pool = futures.ThreadPoolExecutor(workers)
local function work(n)
  local s = 0
  for k = 1, n do s = s + k * k % 7 end
  return s
end
for _ = 1, workers do
  tulua.spawn(function()
    while true do
      local f = pool:submit(work, 200000)
      assert(f:result() > 0)
      engine.count("jobs")
    end
  end)
end

-- a local TCP server: a line sent and its echo read back, 20 times a second
if not port then
  local server = assert(net.serve("127.0.0.1", 0, function(conn)
    for line in conn:lines() do conn:write(line .. "\n") end
  end))
  port = select(2, server:address())
end
tulua.spawn(function()
  local conn = assert(net.connect("127.0.0.1", port))
  for n = 1, math.huge do
    assert(conn:write("ping " .. n .. "\n"))
    assert(conn:read_line() == "ping " .. n)
    engine.count("tcp")
    tulua.sleep(0.05)
  end
end)

-- the host's second thread: each of its messages starts this as a task
engine.on_message(function(message)
  assert(message:match("^tick %d+$"))
  engine.count("messages")
end)
