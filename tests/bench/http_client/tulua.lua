-- HTTP client peer (tulua): N sequential GETs of URL with tulua.http over
-- one kept-alive connection; checks every answer; prints one RESULT line.
local tulua = require "tulua"
local http = require "tulua.http"
local url, n = assert(arg[1], "usage: tulua.lua URL [N]"), math.tointeger(tonumber(arg[2] or 10000))
local status, body = assert(http.get(url))            -- warm-up: the connection is made here
assert(status == 200 and body == "Hello, World!", "unexpected answer")
local get = http.get
local t0 = tulua.now()
for _ = 1, n do
  status, body = get(url)
  if status ~= 200 or body ~= "Hello, World!" then error("bad answer: " .. tostring(status)) end
end
local secs = tulua.now() - t0
print(("RESULT requests=%d seconds=%.4f rps=%.1f"):format(n, secs, n / secs))
