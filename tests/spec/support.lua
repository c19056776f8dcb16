-- Helpers shared by the specs (not a spec itself): running tulua on a
-- fixture, reading files, and checking the position in error messages.
-- TULUA names the binary under test (default build/tulua).
local M = {}

local SPEC_DIR = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "."

--- Quotes s for sh.
function M.shell_quote(s)
  return "'" .. s:gsub("'", "'\\''") .. "'"
end

--- Returns the whole content of the file at path (raises if unreadable).
function M.read_file(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("a")
  f:close()
  return s
end

--- Writes text to the file at path, replacing it.
function M.write_file(path, text)
  local f = assert(io.open(path, "wb"))
  f:write(text)
  f:close()
end

--- Returns path made absolute against the working directory.
function M.absolute(path)
  if path:sub(1, 1) == "/" then return path end
  local p = assert(io.popen("pwd"))
  local dir = p:read("l")
  p:close()
  return dir .. "/" .. path
end

M.TULUA = M.absolute(os.getenv("TULUA") or "build/tulua")
M.FIXTURES = SPEC_DIR .. "/fixtures"

--- Runs `tulua name` in the fixtures directory; returns the exit status,
-- stdout and stderr. opts (optional): program (another binary, such as
-- lua5.4, instead of tulua), env ("env ..." words put before it).
function M.run_fixture(name, opts)
  opts = opts or {}
  local out, err = os.tmpname(), os.tmpname()
  local _, _, status = os.execute(string.format("cd %s && %s %s %s > %s 2> %s",
    M.shell_quote(M.FIXTURES), opts.env or "", M.shell_quote(opts.program or M.TULUA),
    M.shell_quote(name), M.shell_quote(out), M.shell_quote(err)))
  local stdout, stderr = M.read_file(out), M.read_file(err)
  os.remove(out)
  os.remove(err)
  return status, stdout, stderr
end

--- Returns the output of the shell command cmd, without its last newline.
function M.capture(cmd)
  local p = assert(io.popen(cmd))
  local s = p:read("a")
  p:close()
  return (s:gsub("\n$", ""))
end

--- Returns a function error_of(fn): fn must raise a string that starts
-- with a position in the file here (luaL_error's "file:line: "); error_of
-- returns the rest of the message.
function M.error_in(here)
  local assert = require("luassert") -- busted's, not the global one
  return function(fn)
    local ok, err = pcall(fn)
    assert.is_false(ok)
    assert.are.equal("string", type(err))
    assert.are.equal(here .. ":", err:sub(1, #here + 1))
    local line, rest = err:sub(#here + 2):match("^(%d+): (.*)$")
    assert.is_truthy(line, err)
    return rest
  end
end

--- Waits until cond() is true, polling every 10 ms for at most 5 s;
-- returns whether it became true. For effects that complete after the call
-- that caused them returned (a close started by __gc, a peer's reaction).
function M.eventually(cond)
  local sleep = require("tulua").sleep
  for _ = 1, 500 do
    if cond() then return true end
    sleep(0.01)
  end
  return cond()
end

--- Removes a file or a directory tree (fs.lstat, scandir, unlink, rmdir).
function M.remove_tree(path)
  local fs = require("tulua.fs")
  local st = fs.lstat(path)
  if not st then return end
  if st.type == "directory" then
    for name in assert(fs.scandir(path)) do
      M.remove_tree(path .. "/" .. name)
    end
    assert(fs.rmdir(path))
  else
    assert(fs.unlink(path))
  end
end

--- Returns the number of open descriptors of this process.
function M.fd_count()
  return #assert(require("tulua.fs").readdir("/proc/self/fd"))
end

--- Calls fn(...), which must raise; returns the error value as it is.
function M.raised(fn, ...)
  local ok, err = pcall(fn, ...)
  require("luassert").is_false(ok, "expected an error")
  return err
end

--- Wraps a spec body: it runs in a task of its own, cancelled after secs
-- (default 10), so that something that never answers fails that spec
-- instead of hanging the whole run.
function M.bounded(fn, secs)
  secs = secs or 10
  return function()
    local task = require("tulua").spawn(fn)
    local watchdog = require("tulua.timer").after(secs, function()
      task:cancel("spec timed out after " .. secs .. " s")
    end)
    local ok, err = pcall(task.join, task)
    watchdog:close()
    if not ok then error(err, 0) end
  end
end

--- Returns a path in the temporary directory that does not exist yet,
-- ending in "-tag".
function M.temp_path(tag)
  local p = os.tmpname()
  os.remove(p)
  return p .. "-" .. tag
end

--- Returns the state letter of process pid ("S", "R", "Z" for a zombie),
-- or nil once it is gone (reaped).
function M.proc_state(pid)
  local f = io.open("/proc/" .. pid .. "/stat")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s:match("^%d+ %b() (%a)")
end

return M
