-- Helpers for the REPL specs (not a spec itself): runs a program in a real
-- pseudo-terminal inside a private tmux server, types keys into it and reads
-- the rendered screen back.
--
--   local term <close> = terminal.open({args = {"-i"}, home = dir})
--   term:type("1+1")           -- literal text
--   term:press("Enter")        -- tmux key names: Enter, Tab, Up, C-c, C-d
--   local lines, ok = term:poll(function(lines) ... end)
--
-- The screen comes from `tmux capture-pane -p`: one string a row, trailing
-- spaces cut (an empty prompt "> " reads ">"), trailing empty rows dropped.
-- Every wait polls the screen every 20 ms for at most TIMEOUT seconds; none
-- sleeps "to settle". Each terminal has its own tmux server, on a socket in
-- a directory of its own (-S); close() (also `<close>`) kills the server and
-- removes the directory (tmux leaves its socket behind).
--
-- The program runs under `sh -c 'trap : INT; program; printf "[exit status %d]" $?'`,
-- followed by `cat`, which keeps the pane, and with it the screen, alive
-- after the program ends: the exit status is then read from the screen.
-- The trap keeps the shell alive across Ctrl-C (it waits for the program,
-- whose SIGINT is back to the default at exec).
local tulua = require("tulua")
local support = require("support")

local shell_quote = support.shell_quote

local M = {}

M.TIMEOUT = 15    -- seconds any wait may take: a cut-off for a hang, so generous for a loaded machine
M.WIDTH, M.HEIGHT = 100, 30
M.EXIT_MARK = "%[exit status (%d+)%]"

local function capture(cmd)
  local p = assert(io.popen(cmd))
  local s = p:read("a")
  p:close()
  return s
end

--- Returns the path of a new empty directory.
function M.temp_dir()
  return (capture("mktemp -d /tmp/tulua-repl.XXXXXX"):gsub("\n$", ""))
end

--- Removes a directory made by temp_dir, with its content.
function M.remove_dir(path)
  assert(path:match("^/tmp/tulua%-repl%."), path)
  os.execute("rm -rf " .. shell_quote(path))
end

local Terminal = {}
Terminal.__index = Terminal

-- Runs `tmux -S <socket> <args>`; returns its stdout and stderr.
function Terminal:tmux(args)
  return capture(string.format("tmux -S %s %s 2>&1", shell_quote(self.socket), args))
end

-- Variables that would change what the program does.
local CLEAN_ENV = "env -u LUA_INIT -u LUA_INIT_5_4 -u LUA_PATH -u LUA_PATH_5_4 -u LUA_CPATH -u LUA_CPATH_5_4"
  .. " -u EDITRC -u INPUTRC -u TULUA_DEBUG"

--- Starts `program args...` in a new terminal of WIDTH x HEIGHT.
-- opts.program: the program (default support.TULUA); opts.args: its
-- arguments; opts.home: HOME for it (default: a fresh directory, removed
-- by close); opts.cwd: its directory (default: HOME).
function M.open(opts)
  opts = opts or {}
  local self = setmetatable({}, Terminal)
  if opts.home then
    self.home = opts.home
  else
    self.home = M.temp_dir()
    self.own_home = true
  end
  self.socket_dir = M.temp_dir()
  self.socket = self.socket_dir .. "/tmux"
  local words = {shell_quote(opts.program or support.TULUA)}
  for _, a in ipairs(opts.args or {}) do
    words[#words + 1] = shell_quote(a)
  end
  local script = string.format(
    "trap : INT; cd %s && %s HOME=%s %s; printf '\\n[exit status %%d]\\n' $?; exec cat > /dev/null",
    shell_quote(opts.cwd or self.home), CLEAN_ENV, shell_quote(self.home), table.concat(words, " "))
  local out = self:tmux(string.format("-f /dev/null new-session -d -s repl -x %d -y %d %s",
    M.WIDTH, M.HEIGHT, shell_quote("sh -c " .. shell_quote(script))))
  if out ~= "" then
    self:close()
    error("tmux new-session failed: " .. out, 2)
  end
  return self
end

--- Types text literally (no key names).
function Terminal:type(text)
  self:tmux("send-keys -t repl -l -- " .. shell_quote(text))
end

--- Presses keys by their tmux names (Enter, Tab, Up, C-c, C-d...).
function Terminal:press(...)
  local keys = {}
  for i, k in ipairs({...}) do
    keys[i] = shell_quote(k)
  end
  self:tmux("send-keys -t repl " .. table.concat(keys, " "))
end

--- Returns the screen: a list of rows without trailing spaces, trailing
-- empty rows dropped.
function Terminal:screen()
  local lines = {}
  for line in self:tmux("capture-pane -p -t repl"):gmatch("([^\n]*)\n") do
    lines[#lines + 1] = (line:gsub("%s+$", ""))
  end
  while #lines > 0 and lines[#lines] == "" do
    lines[#lines] = nil
  end
  return lines
end

--- Returns the cursor's column and row, from 0.
function Terminal:cursor()
  local x, y = self:tmux("display-message -p -t repl '#{cursor_x} #{cursor_y}'"):match("(%d+) (%d+)")
  return tonumber(x), tonumber(y)
end

--- Polls the screen until check(lines) is true or TIMEOUT seconds have
-- passed; returns the last screen and whether check passed.
function Terminal:poll(check, timeout)
  local deadline = tulua.now() + (timeout or M.TIMEOUT)
  while true do
    local lines = self:screen()
    if check(lines) then return lines, true end
    if tulua.now() > deadline then return lines, false end
    tulua.sleep(0.02)
  end
end

--- Returns the last n rows of lines (fewer if there are fewer).
function M.tail(lines, n)
  local t = {}
  for i = math.max(1, #lines - n + 1), #lines do
    t[#t + 1] = lines[i]
  end
  return t
end

--- Returns the index of the first row equal to line (after row from), or nil.
function M.find_line(lines, line, from)
  for i = (from or 0) + 1, #lines do
    if lines[i] == line then return i end
  end
end

--- Returns the index of the first row containing text (plain), or nil.
function M.find_text(lines, text, from)
  for i = (from or 0) + 1, #lines do
    if lines[i]:find(text, 1, true) then return i end
  end
end

--- Polls until the last rows of the screen are expected (a list of rows);
-- returns the screen and whether they were.
function Terminal:wait_tail(expected, timeout)
  return self:poll(function(lines)
    local t = M.tail(lines, #expected)
    if #t ~= #expected then return false end
    for i = 1, #t do
      if t[i] ~= expected[i] then return false end
    end
    return true
  end, timeout)
end

--- Polls until some row contains text (plain); returns the screen and the
-- row's index (nil if it never came).
function Terminal:wait_text(text, timeout)
  local lines, ok = self:poll(function(lines) return M.find_text(lines, text) ~= nil end, timeout)
  return lines, ok and M.find_text(lines, text) or nil
end

--- Polls until the program has ended; returns its exit status (nil if it
-- is still running after the timeout) and the screen.
function Terminal:wait_exit(timeout)
  local status
  local lines = self:poll(function(lines)
    for i = #lines, 1, -1 do
      status = lines[i]:match(M.EXIT_MARK)
      if status then return true end
    end
  end, timeout)
  return tonumber(status), lines
end

--- Kills the tmux server (and the program) and removes its socket, and
-- HOME if open made it.
function Terminal:close()
  if self.closed then return end
  self.closed = true
  self:tmux("kill-server")
  M.remove_dir(self.socket_dir)
  if self.own_home then M.remove_dir(self.home) end
end

Terminal.__close = Terminal.close

return M
