-- The terminal REPL (tulua with no script, or tulua -i, on a terminal),
-- driven through a real pseudo-terminal: each test starts tulua in its own
-- tmux server (tests/spec/terminal.lua), with HOME set to a fresh directory
-- so that the history is the test's own, types keys, and checks the rendered
-- screen. A screen row is what the terminal shows, trailing spaces cut: an
-- empty prompt "> " reads ">". TULUA names the binary under test (default
-- build/tulua). Piped sessions (stdin not a terminal) are in cli_spec.lua.

package.path = (debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or ".") .. "/?.lua;" .. package.path
local support = require("support")
local terminal = require("terminal")
local tulua = require("tulua")

local BANNER = "Lua 5.4.4  Copyright (C) 1994-2022 Lua.org, PUC-Rio"
local HISTORY = ".tulua_history"

local function show(lines)
  return "screen:\n" .. table.concat(lines, "\n")
end

-- Waits until the screen ends with the rows of expected; asserts it does.
local function expect_tail(term, expected, timeout)
  local lines = term:wait_tail(expected, timeout)
  assert.are.same(expected, terminal.tail(lines, #expected), show(lines))
  return lines
end

-- Waits until the last row matches pattern; asserts it does. Returns the
-- screen and the captures.
local function expect_last(term, pattern, timeout)
  local lines, ok = term:poll(function(lines)
    return lines[#lines] ~= nil and lines[#lines]:match(pattern) ~= nil
  end, timeout)
  assert.is_true(ok, "last row should match '" .. pattern .. "'; " .. show(lines))
  return lines, lines[#lines]:match(pattern)
end

-- Waits until some row contains text; asserts it does; returns the screen
-- and the row's index.
local function expect_text(term, text, timeout)
  local lines, i = term:wait_text(text, timeout)
  assert.is_truthy(i, "a row should contain '" .. text .. "'; " .. show(lines))
  return lines, i
end

-- Waits until some row after row from is line; asserts it is; returns the
-- screen and the row's index.
local function expect_line(term, line, from)
  local lines, ok = term:poll(function(lines) return terminal.find_line(lines, line, from) ~= nil end)
  assert.is_true(ok, "a row should be '" .. line .. "'; " .. show(lines))
  return lines, terminal.find_line(lines, line, from)
end

-- Starts tulua (opts as terminal.open) and waits for its first prompt.
local function open_repl(opts)
  local term = terminal.open(opts)
  local lines, ok = term:poll(function(lines) return lines[#lines] == ">" end)
  if not ok then term:close() end
  assert.is_true(ok, "no first prompt; " .. show(lines))
  return term
end

-- Types line, presses Enter, and expects the line on its prompt, then the
-- output rows, then a fresh prompt.
local function enter(term, line, output)
  term:type(line)
  term:press("Enter")
  local expected = {"> " .. line}
  table.move(output or {}, 1, #(output or {}), 2, expected)
  expected[#expected + 1] = ">"
  return expect_tail(term, expected)
end

-- Returns the entries of a history file: its lines but a "_HiStOrY_V2_"
-- header (libedit's), and the header.
local function history_entries(path)
  local entries, header = {}, nil
  for line in io.lines(path) do
    if not header and #entries == 0 and line:match("^_HiStOrY_") then
      header = line
    else
      entries[#entries + 1] = line
    end
  end
  return entries, header
end

local function file_exists(path)
  local f = io.open(path, "rb")
  if f then f:close() end
  return f ~= nil
end

describe("tulua's terminal REPL", function()
  describe("prompt", function()
    it("shows Lua's banner, then the prompt '> ' with the cursor after it", function()
      local term <close> = terminal.open()
      local lines = term:wait_tail({BANNER, ">"})
      assert.are.same({BANNER, ">"}, lines)
      assert.are.same({2, 1}, {term:cursor()})
    end)

    it("uses _PROMPT and _PROMPT2 when they are set", function()
      local term <close> = open_repl()
      term:type('_PROMPT = "lua% "')
      term:press("Enter")
      expect_tail(term, {'> _PROMPT = "lua% "', "lua%"})
      term:type('_PROMPT2 = "...> "')
      term:press("Enter")
      expect_tail(term, {'lua% _PROMPT2 = "...> "', "lua%"})
      term:type("for i = 1, 2 do")
      term:press("Enter")
      expect_tail(term, {"lua% for i = 1, 2 do", "...>"})
      term:type("print(i * 10)")
      term:press("Enter")
      term:type("end")
      term:press("Enter")
      expect_tail(term, {"lua% for i = 1, 2 do", "...> print(i * 10)", "...> end", "10", "20", "lua%"})
    end)
  end)

  describe("results", function()
    it("prints the value of an expression, with or without a leading '='", function()
      local term <close> = open_repl()
      enter(term, "1+1", {"2"})
      enter(term, "=1+1", {"2"})
    end)

    it("separates several results with tabs", function()
      local term <close> = open_repl()
      enter(term, "1, 2, 3", {"1       2       3"})
    end)

    it("prints tables readably", function()
      local term <close> = open_repl()
      enter(term, "{1, 2, 3}", {"{1, 2, 3}"})
      enter(term, "{a = 1}", {"{a = 1}"})
    end)

    it("prints a Task with its name and state", function()
      local term <close> = open_repl()
      enter(term, "sleeper = tulua.spawn(tulua.sleep, 30)")
      enter(term, 'sleeper:set_name("sleeper")')
      enter(term, "sleeper", {"<Task 'sleeper' waiting>"})
    end)

    it("keeps the first result of the last line in _", function()
      local term <close> = open_repl()
      enter(term, "6*7", {"42"})
      enter(term, "_ + 1", {"43"})
    end)

    it("prints an error's message without the program name and goes on with the next line", function()
      local term <close> = open_repl()
      term:type('error("boom")')
      term:press("Enter")
      local lines = term:poll(function(lines)
        local line = terminal.find_line(lines, '> error("boom")')
        return line and terminal.find_text(lines, "boom", line) and lines[#lines] == ">"
      end)
      local line = terminal.find_line(lines, '> error("boom")')
      assert.is_truthy(line, show(lines))
      local message = lines[line + 1] or ""
      assert.is_truthy(message:find("boom", 1, true), show(lines)) -- right below the line
      assert.is_nil(message:match("^tulua:"), show(lines))
      assert.are.equal(">", lines[#lines], show(lines))
      enter(term, "1+1", {"2"})
    end)
  end)

  describe("incomplete input", function()
    it("continues on the '>> ' prompt until the statement is complete", function()
      local term <close> = open_repl()
      term:type("for i = 1, 3 do")
      term:press("Enter")
      expect_tail(term, {"> for i = 1, 3 do", ">>"})
      term:type("print(i)")
      term:press("Enter")
      expect_tail(term, {"> for i = 1, 3 do", ">> print(i)", ">>"})
      term:type("end")
      term:press("Enter")
      expect_tail(term, {"> for i = 1, 3 do", ">> print(i)", ">> end", "1", "2", "3", ">"})
    end)
  end)

  describe("pasted text", function()
    it("runs every line of a paste, in order", function()
      local term <close> = open_repl()
      term:type("x = 1\ny = 2\nz = x + y\n")
      expect_tail(term, {"> x = 1", "> y = 2", "> z = x + y", ">"})
      enter(term, "print(x, y, z)", {"1       2       3"})
    end)

    it("runs a pasted loop that continues over several lines", function()
      local term <close> = open_repl()
      term:type("for i=1,1 do\nprint(i)\nend\n")
      expect_tail(term, {"> for i=1,1 do", ">> print(i)", ">> end", "1", ">"})
    end)

    it("keeps what is pasted while a line runs for the lines after it", function()
      local term <close> = open_repl()
      term:type("tulua.sleep(0.3)\n")
      expect_tail(term, {"> tulua.sleep(0.3)"})
      term:type("a = 10\nb = a * 2\n") -- while the sleep runs: the terminal echoes it
      expect_tail(term, {"> a = 10", "> b = a * 2", ">"})
      enter(term, "print(a, b)", {"10      20"})
    end)
  end)

  describe("line editing", function()
    it("moves and deletes with the emacs keys Ctrl-A, Ctrl-E, Ctrl-K, Ctrl-W and the arrows", function()
      local term <close> = open_repl()
      term:type("1+2")
      term:press("C-a")
      term:type("10*")
      term:press("C-e")
      term:type("+0")
      expect_tail(term, {"> 10*1+2+0"})
      term:press("Enter")
      expect_tail(term, {"> 10*1+2+0", "12", ">"})
      term:type("5+5xyz")
      term:press("Left", "Left", "Left", "C-k")
      expect_tail(term, {"> 5+5"})
      term:press("Enter")
      expect_tail(term, {"> 5+5", "10", ">"})
      term:type("3*3 foo")
      term:press("C-w")
      expect_tail(term, {"> 3*3"})
      term:press("Enter")
      expect_tail(term, {"> 3*3", "9", ">"})
    end)

    it("finds an earlier line with Ctrl-R and runs it with Enter", function()
      local term <close> = open_repl()
      enter(term, "7*6", {"42"})
      local lines = enter(term, "1+1", {"2"})
      local before = #lines - 1 -- the row "2"
      term:press("C-r")
      term:type("7*")
      expect_line(term, "> 7*6", before) -- found, on the prompt's row
      term:press("Enter")
      lines = term:poll(function(l) return #l > before + 1 and l[#l] == ">" end)
      local n = 0
      for _, line in ipairs(lines) do
        if line == "42" then n = n + 1 end
      end
      assert.are.equal(2, n, show(lines))
      assert.are.equal("42", lines[#lines - 1], show(lines))
    end)
  end)

  describe("tasks", function()
    it("runs a timer while the prompt waits: its output goes above the prompt and the half-typed line stays", function()
      local term <close> = open_repl()
      local line = 'tm = tulua.timer.after(0.5, function() print("tick") end)'
      enter(term, line)
      term:type("12")
      expect_tail(term, {"> " .. line, "> 12"}, 0.4) -- before the tick
      local lines = expect_tail(term, {"> " .. line, "tick", "> 12"})
      assert.are.same({4, #lines - 1}, {term:cursor()}) -- still after "12"
      term:type("3")
      term:press("Enter")
      expect_tail(term, {"> " .. line, "tick", "> 123", "123", ">"})
    end)

    it("lists only the background tasks in tulua.all_tasks(), not the line's own", function()
      local term <close> = open_repl()
      enter(term, "tulua.all_tasks()", {"{}"})
      enter(term, "bg = tulua.spawn(tulua.sleep, 60)")
      enter(term, "#tulua.all_tasks(), tulua.all_tasks()[1] == bg", {"1       true"})
    end)

    it("waits only the line that calls tulua.sleep, then prompts again", function()
      local term <close> = open_repl()
      local line = 'print("before") tulua.sleep(0.3) print("after")'
      term:type(line)
      local t0 = tulua.now()
      term:press("Enter")
      expect_tail(term, {"> " .. line, "before", "after", ">"})
      assert.is_true(tulua.now() - t0 >= 0.29)
      enter(term, "1+1", {"2"})
    end)
  end)

  describe("Ctrl-C", function()
    it("cancels a line that sleeps, prints the interruption and prompts again at once", function()
      local term <close> = open_repl()
      local line = 'print("sleeping") tulua.sleep(10) print("not reached")'
      term:type(line)
      term:press("Enter")
      local _, start = expect_line(term, "sleeping")
      term:press("C-c")
      local lines = expect_last(term, "^>$")
      assert.is_truthy(terminal.find_text(lines, "interrupted!", start), show(lines))
      assert.is_nil(terminal.find_line(lines, "not reached"), show(lines))
      enter(term, "1+1", {"2"})
    end)

    it("clears a half-typed line and shows a fresh prompt", function()
      local term <close> = open_repl()
      term:type('print("never")')
      expect_tail(term, {'> print("never")'})
      term:press("C-c")
      expect_last(term, "^>$")
      assert.are.same(2, (term:cursor()))
      local lines = enter(term, "1+1", {"2"})
      assert.is_nil(terminal.find_line(lines, "never"), show(lines))
    end)
  end)

  describe("Ctrl-D", function()
    it("exits with status 0 at an empty prompt", function()
      local term <close> = open_repl()
      term:press("C-d")
      local status, lines = term:wait_exit()
      assert.are.equal(0, status, show(lines))
    end)

    it("first reports the background tasks still running, then cancels them and exits with status 0", function()
      local term <close> = open_repl()
      enter(term, "bg = tulua.spawn(tulua.sleep, 60)")
      enter(term, 'bg:set_name("sleeper")')
      term:press("C-d")
      local status, lines = term:wait_exit()
      assert.are.equal(0, status, show(lines))
      local reported = false
      for _, row in ipairs(lines) do
        if row:find("sleeper", 1, true) or row:lower():match("%f[%w]1 [%a ]*task") then reported = true end
      end
      assert.is_true(reported, "no row names the task or counts it; " .. show(lines))
    end)

    it("lets a cancelled background task clean up before exiting", function()
      local term <close> = open_repl()
      enter(term, 'bg = tulua.spawn(function() local _, e = pcall(tulua.sleep, 60) print("bye " .. e.code) end)')
      term:press("C-d")
      local status, lines = term:wait_exit()
      assert.are.equal(0, status, show(lines))
      assert.is_truthy(terminal.find_line(lines, "bye ECANCELED"), show(lines))
    end)
  end)

  describe("tab completion", function()
    it("completes the field of a global table: string.fo to string.format", function()
      local term <close> = open_repl()
      term:type("string.fo")
      term:press("Tab")
      local _, paren = expect_last(term, "^> string%.format(%(?)$")
      term:type((paren == "(" and "" or "(") .. "'%03d', 7) == '007'")
      term:press("Enter")
      expect_tail(term, {"> string.format('%03d', 7) == '007'", "true", ">"})
    end)

    it("completes a Task method: t:jo to t:join", function()
      local term <close> = open_repl()
      enter(term, "t = tulua.spawn(function() end)")
      term:type("t:jo")
      term:press("Tab")
      local _, paren = expect_last(term, "^> t:join(%(?)$")
      term:type(paren == "(" and ")" or "()")
      term:press("Enter")
      expect_tail(term, {"> t:join()", ">"})
    end)
  end)

  describe("history", function()
    local home

    before_each(function()
      home = terminal.temp_dir()
    end)

    after_each(function()
      terminal.remove_dir(home)
    end)

    it("is saved in $HOME/.tulua_history, syntax errors included, and recalled with Up in the next session",
      function()
        do
          local term <close> = open_repl({home = home})
          enter(term, "hist_check=6*7")
          term:type("hist_bad=)")
          term:press("Enter")
          expect_text(term, "unexpected symbol near ')'")
          expect_last(term, "^>$")
          term:press("C-d")
          local status, lines = term:wait_exit()
          assert.are.equal(0, status, show(lines))
        end
        local path = home .. "/" .. HISTORY
        assert.is_true(file_exists(path), path .. " should exist")
        local entries = history_entries(path)
        assert.is_truthy(terminal.find_line(entries, "hist_check=6*7"), table.concat(entries, "\n"))
        assert.is_truthy(terminal.find_line(entries, "hist_bad=)"), table.concat(entries, "\n"))

        local term <close> = open_repl({home = home})
        term:press("Up")
        expect_tail(term, {"> hist_bad=)"})
        term:press("Up")
        expect_tail(term, {"> hist_check=6*7"})
        term:press("Enter")
        expect_tail(term, {"> hist_check=6*7", ">"})
        enter(term, "=hist_check", {"42"})
      end)

    it("keeps at most 1000 entries, the newest", function()
      do
        local term <close> = open_repl({home = home})
        enter(term, "first=1")
        term:press("C-d")
        assert.are.equal(0, (term:wait_exit()))
      end
      local path = home .. "/" .. HISTORY
      assert.is_true(file_exists(path), path .. " should exist")
      local _, header = history_entries(path)
      local text = {header}
      for i = 1, 1100 do
        text[#text + 1] = "n=" .. i
      end
      support.write_file(path, table.concat(text, "\n") .. "\n")

      local term <close> = open_repl({home = home})
      term:press("Up")
      expect_tail(term, {"> n=1100"})
      term:press("Down")
      expect_last(term, "^>$")
      term:type("last=1")
      term:press("Enter")
      expect_tail(term, {"> last=1", ">"})
      term:press("C-d")
      assert.are.equal(0, (term:wait_exit()))
      local entries = history_entries(path)
      assert.is_true(#entries <= 1000, #entries .. " entries")
      assert.are.same({"n=1099", "n=1100", "last=1"}, terminal.tail(entries, 3))
    end)
  end)

  describe("tulua -i script", function()
    it("runs the script after the banner, then the script's globals are there at the prompt", function()
      local term <close> = terminal.open({args = {"-i", "repl_script.lua"}, cwd = support.absolute(support.FIXTURES)})
      local lines = term:wait_tail({BANNER, "script ran", ">"})
      assert.are.same({BANNER, "script ran", ">"}, lines)
      enter(term, "double(21)", {"42"})
      enter(term, "print(greeting)", {"hello from the script"})
    end)
  end)
end)
