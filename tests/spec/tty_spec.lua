-- tulua.tty: stdin, stdout and stderr as streams that wait without blocking
-- the loop, whatever they are (a pipe, a file, a terminal), and the
-- terminal's size and modes. Fixtures (tests/spec/fixtures/tty_*.lua) run
-- as separate tulua processes with their standard descriptors set up by
-- sh, or inside a tmux pseudo-terminal of 100 x 30 (terminal.lua). TULUA
-- names the binary (default build/tulua).
local tty = require("tulua.tty")

local HERE = debug.getinfo(1, "S").short_src -- as error positions show it
package.path = (debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or ".") .. "/?.lua;" .. package.path
local support = require("support")
local terminal = require("terminal")
local shell_quote, read_file, write_file = support.shell_quote, support.read_file, support.write_file
local error_of = support.error_in(HERE)

local FIXTURES = support.absolute(support.FIXTURES)

-- Runs the sh script in the fixtures directory, where "$T" is tulua and
-- "$OUT" the file its stdout goes to; returns the exit status, stdout and
-- stderr.
local function sh(script)
  local out, err = os.tmpname(), os.tmpname()
  local _, _, status = os.execute(string.format("cd %s && T=%s && OUT=%s && { %s ; } > \"$OUT\" 2> %s",
    shell_quote(FIXTURES), shell_quote(support.TULUA), shell_quote(out), script, shell_quote(err)))
  local stdout, stderr = read_file(out), read_file(err)
  os.remove(out)
  os.remove(err)
  return status, stdout, stderr
end

-- A writer for a pipe into a fixture: "a", then "b" once the fixture has
-- printed "line a" and 0.3 s more have passed (waiting for the fixture, not
-- a fixed time: a loaded machine can take longer than that to start it).
local A_THEN_B = [[(echo a; i=0; while ! grep -q "^line a" "$OUT" && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done; ]]
  .. [[sleep 0.3; echo b)]]

local function lines_of(s)
  local t = {}
  for line in s:gmatch("([^\n]*)\n") do
    t[#t + 1] = line
  end
  return t
end

-- Splits the lines of a tty_lines.lua run into the "tick N" lines between
-- "line <first>" and "line <second>", and the other lines.
local function ticks_between(lines, first, second)
  local others, between, state = {}, 0, "before"
  for _, line in ipairs(lines) do
    if line:match("^tick %d+$") then
      if state == "inside" then between = between + 1 end
    else
      others[#others + 1] = line
      if line == "line " .. first then state = "inside" end
      if line == "line " .. second then state = "after" end
    end
  end
  return between, others
end

-- What tty_read.lua prints for the input READ_INPUT, for a stream kind.
local READ_INPUT = "abcdef\nx;yz rest\nlast"
local function read_results(mt, kind)
  return {
    mt,
    "nil " .. kind .. " stream: line longer than 3 bytes ENOBUFS",
    "abc",
    "def",
    "x",
    "yz",
    " rest",
    "nil " .. kind .. " stream: end of stream after 4 of 10 bytes EOF",
    "last",
    "nil",
    "nil",
    "nil " .. kind .. " stream: end of stream after 0 of 2 bytes EOF",
    "",
    "",
  }
end

-- What tty_tasks.lua share prints: the second reader is refused, the long
-- read cancelled, and no byte is lost.
local SHARE_RESULTS = {
  "second\tfalse\tanother task is reading this stream",
  "long\tfalse\tECANCELED",
  "same\ttrue",
  "first half\ttrue",
  "rest\t100000\ttrue",
}

describe("tulua.tty", function()
  local dir

  setup(function()
    local p = assert(io.popen("mktemp -d /tmp/tulua-tty.XXXXXX"))
    dir = p:read("l")
    p:close()
    write_file(dir .. "/lines.txt", "one\ntwo\n\nlast without newline")
    write_file(dir .. "/read.txt", READ_INPUT)
    write_file(dir .. "/a.txt", "a\n")
    write_file(dir .. "/big.txt", string.rep("0123456789", 20000))
  end)

  teardown(function()
    assert(dir:match("^/tmp/tulua%-tty%."))
    os.execute("rm -rf " .. shell_quote(dir))
  end)

  it("is preloaded as tulua.tty", function()
    assert.are.equal(tty, package.loaded["tulua.tty"])
    assert.are.equal("function", type(tty.stdin))
  end)

  describe("stdin from a pipe", function()
    it("reads lines in order while a timer task keeps ticking", function()
      local status, stdout, stderr = sh(A_THEN_B .. ' | "$T" tty_lines.lua')
      assert.are.equal(0, status)
      assert.are.equal("", stderr)
      local between, others = ticks_between(lines_of(stdout), "a", "b")
      assert.are.same({"tulua.pipe", "line a", "line b", "eof"}, others)
      assert.is_true(between >= 1, stdout)
    end)

    it("offers the stream's read methods, with nil at the end", function()
      local status, stdout, stderr = sh('printf %s ' .. shell_quote(READ_INPUT) .. ' | "$T" tty_read.lua')
      assert.are.equal(0, status)
      assert.are.equal("", stderr)
      assert.are.same(read_results("tulua.pipe", "pipe"), lines_of(stdout))
    end)

    it("gives the line a cancelled reader waited for to the next reader", function()
      local status, stdout, stderr = sh('(sleep 0.2; echo a) | "$T" tty_cancel.lua')
      assert.are.equal(0, status)
      assert.are.equal("", stderr)
      assert.are.equal("cancelled false ECANCELED\nline a\n", stdout)
    end)

    it("refuses a second reader, and loses nothing when a long read is cancelled", function()
      local status, stdout, stderr = sh("cat " .. shell_quote(dir .. "/big.txt") .. ' | "$T" tty_tasks.lua share')
      assert.are.equal(0, status)
      assert.are.equal("", stderr)
      assert.are.same(SHARE_RESULTS, lines_of(stdout))
    end)

    it("wakes a waiting reader with ECANCELED when closed, and opens a new stream after", function()
      local status, stdout, stderr = sh("cat " .. shell_quote(dir .. "/big.txt") .. ' | "$T" tty_tasks.lua close')
      assert.are.equal(0, status)
      assert.are.equal("", stderr)
      local lines = lines_of(stdout)
      -- stream.c says "pipe stream closed" or "stream closed", by timing
      assert.is_truthy(lines[1]:match("^reader\tnil\t[a-z ]*stream closed\tECANCELED$"), lines[1])
      assert.are.same({
        "closed\ttrue\tpipe stream (closed)",
        "read\tfalse\tattempt to use a closed pipe stream",
        "new\ttrue\ttrue\tfalse",
      }, {lines[2], lines[3], lines[4]})
    end)

    it("leaves fd 0 blocking, and readable with io.read once the stream is closed", function()
      local status, stdout, stderr = sh(A_THEN_B .. ' | "$T" tty_fd.lua')
      assert.are.equal(0, status)
      assert.are.equal("", stderr)
      assert.are.equal("before blocking\nafter blocking\nline a\nclosed blocking\nio.read b\n", stdout)
    end)

    it("lets the process end once the script is done, with the writer still open", function()
      -- sh reports how long tulua ran, in ms; the writer would sleep 20 s
      -- more, but is killed as soon as tulua has ended
      local function timed(command)
        local pid = os.tmpname()
        local status, stdout, stderr = sh('start=$(date +%s%N); '
          .. [[sh -c 'echo $$ > "$1"; echo a; exec sleep 20' writer ]] .. shell_quote(pid) .. ' | { ' .. command
          .. '; echo "ended $? after $(( ($(date +%s%N) - start) / 1000000 ))" >&2; kill $(cat '
          .. shell_quote(pid) .. '); }')
        os.remove(pid)
        return status, stdout, stderr
      end
      for _, case in ipairs({
        {'"$T" tty_cancel.lua', "cancelled false ECANCELED\nline a\n"},
        {[["$T" -e 'print(require("tulua.tty").stdin():read_line())']], "a\n"},
      }) do
        local command, output = case[1], case[2]
        local status, stdout, stderr = timed(command)
        assert.are.equal(0, status)
        assert.are.equal(output, stdout)
        -- (the shell may add a line on the writer it saw killed)
        local code, ms = stderr:match("^ended (%d+) after (%d+)\n")
        assert.are.equal("0", code, stderr)
        assert.is_true(tonumber(ms) < 15000, command .. ": " .. stderr)
      end
    end)
  end)

  describe("stdin from a file", function()
    it("reads the lines in order, a last line without newline too", function()
      local status, stdout, stderr = sh('"$T" tty_lines.lua 0 < ' .. shell_quote(dir .. "/lines.txt"))
      assert.are.equal(0, status)
      assert.are.equal("", stderr)
      assert.are.equal("tulua.file_stream\nline one\nline two\nline \nline last without newline\neof\n",
        stdout)
    end)

    it("reads /dev/null as an empty stream", function()
      local status, stdout, stderr = sh('"$T" tty_lines.lua 0 < /dev/null')
      assert.are.equal(0, status)
      assert.are.equal("", stderr)
      assert.are.equal("tulua.file_stream\neof\n", stdout)
    end)

    it("offers the stream's read methods with the same results, with nil at the end", function()
      local status, stdout, stderr = sh('"$T" tty_read.lua < ' .. shell_quote(dir .. "/read.txt"))
      assert.are.equal(0, status)
      assert.are.equal("", stderr)
      assert.are.same(read_results("tulua.file_stream", "file"), lines_of(stdout))
    end)

    it("gives the line a cancelled reader waited for to the next reader", function()
      local status, stdout, stderr = sh('"$T" tty_cancel.lua < ' .. shell_quote(dir .. "/a.txt"))
      assert.are.equal(0, status)
      assert.are.equal("", stderr)
      assert.are.equal("cancelled false ECANCELED\nline a\n", stdout)
    end)

    it("refuses a second reader, and loses nothing when a long read is cancelled", function()
      local status, stdout, stderr = sh('"$T" tty_tasks.lua share < ' .. shell_quote(dir .. "/big.txt"))
      assert.are.equal(0, status)
      assert.are.equal("", stderr)
      assert.are.same(SHARE_RESULTS, lines_of(stdout))
    end)

    it("wakes a waiting reader with ECANCELED when closed, and opens a new stream after", function()
      local status, stdout, stderr = sh('"$T" tty_tasks.lua close < ' .. shell_quote(dir .. "/big.txt"))
      assert.are.equal(0, status)
      assert.are.equal("", stderr)
      assert.are.same({
        "reader\tnil\tfile stream closed\tECANCELED",
        "closed\ttrue\tfile stream (closed)",
        "read\tfalse\tattempt to use a closed file stream",
        "new\ttrue\ttrue\tfalse",
      }, lines_of(stdout))
    end)

    it("frees streams that were closed and collected", function()
      for _, input in ipairs({"< " .. shell_quote(dir .. "/big.txt"), "< /dev/null"}) do
        local status, stdout, stderr = sh('"$T" tty_tasks.lua gc ' .. input)
        assert.are.equal(0, status)
        assert.are.equal("", stderr)
        assert.are.equal(input == "< /dev/null" and "after gc\t0\n" or "after gc\t200000\n", stdout)
      end
    end)
  end)

  describe("stdin from a terminal", function()
    it("reads typed lines while a timer task ticks, and nil at Ctrl-D", function()
      local term <close> = terminal.open({args = {"tty_lines.lua", "3"}, cwd = FIXTURES})
      local lines, ok = term:wait_text("tick 3")
      assert.is_truthy(ok, table.concat(lines, "\n"))
      assert.are.same({"tulua.tty", "tick 1", "tick 2", "tick 3"}, lines)
      term:type("hello there")
      term:press("Enter")
      lines, ok = term:wait_text("line hello there")
      assert.is_truthy(ok, table.concat(lines, "\n"))
      term:press("C-d")
      local status
      status, lines = term:wait_exit()
      assert.are.equal(0, status, table.concat(lines, "\n"))
      assert.are.same({"tulua.tty", "tick 1", "tick 2", "tick 3", "hello there", "line hello there", "eof", "",
        "[exit status 0]"}, lines)
    end)

    it("gives the line a cancelled reader waited for to the next reader", function()
      local term <close> = terminal.open({args = {"tty_cancel.lua", "close"}, cwd = FIXTURES})
      local lines, ok = term:wait_text("cancelled")
      assert.is_truthy(ok, table.concat(lines, "\n"))
      term:type("typed")
      term:press("Enter")
      lines, ok = term:wait_text("line typed")
      assert.is_truthy(ok, table.concat(lines, "\n"))
      local status
      status, lines = term:wait_exit()
      assert.are.equal(0, status, table.concat(lines, "\n"))
      assert.are.same({"cancelled false ECANCELED", "typed", "line typed"}, {lines[1], lines[2], lines[3]})
    end)

    it("leaves fd 0 blocking, and readable with io.read once the stream is closed", function()
      local term <close> = terminal.open({args = {"tty_fd.lua"}, cwd = FIXTURES})
      local lines, ok = term:wait_text("after")
      assert.is_truthy(ok, table.concat(lines, "\n"))
      term:type("a")
      term:press("Enter")
      lines, ok = term:wait_text("closed")
      assert.is_truthy(ok, table.concat(lines, "\n"))
      term:type("b")
      term:press("Enter")
      local status
      status, lines = term:wait_exit()
      assert.are.equal(0, status, table.concat(lines, "\n"))
      assert.are.same({"before blocking", "after blocking", "a", "line a", "closed blocking", "b", "io.read b"},
        {table.unpack(lines, 1, 7)})
    end)
  end)

  describe("stdout and stderr", function()
    it("write to a pipe in order with print", function()
      local status, stdout, stderr = sh('"$T" tty_write.lua | cat')
      assert.are.equal(0, status)
      assert.are.equal("to stderr\n", stderr)
      assert.are.equal("tulua.pipe tulua.file_stream true\none\ntwo\nthree\n", stdout)
    end)

    it("write to files in order with print, and fail with EPIPE after shutdown", function()
      local status, stdout, stderr = sh('"$T" tty_write.lua shutdown')
      assert.are.equal(0, status)
      assert.are.equal("to stderr\n", stderr)
      assert.are.equal("tulua.file_stream tulua.file_stream true\none\ntwo\nthree\ntrue\n"
        .. "nil\tstdout: broken pipe\tEPIPE\n", stdout)
    end)

    it("wait while a slow reader drains a pipe, and the loop runs meanwhile", function()
      local status, stdout, stderr = sh('"$T" tty_write.lua flood | (sleep 0.3; wc -c)')
      assert.are.equal(0, status)
      assert.are.equal("ticks true\n", stderr)
      assert.are.equal("1048576", (stdout:gsub("%s", "")))
    end)

    it("write to a terminal", function()
      local term <close> = terminal.open({args = {"tty_write.lua"}, cwd = FIXTURES})
      local status, lines = term:wait_exit()
      assert.are.equal(0, status, table.concat(lines, "\n"))
      assert.are.same({"tulua.tty tulua.tty true", "one", "two", "three", "to stderr", "", "[exit status 0]"},
        lines)
    end)
  end)

  describe("size, is_terminal, set_mode and reset_mode", function()
    it("give the terminal's size and modes in a terminal", function()
      local term <close> = terminal.open({args = {"tty_info.lua"}, cwd = FIXTURES})
      local status, lines = term:wait_exit()
      assert.are.equal(0, status, table.concat(lines, "\n"))
      assert.are.same({
        "is_terminal true true true",
        "size 100 30",
        "size 0 100 30",
        "size 99 nil fd 99: bad file descriptor EBADF",
        "set_mode true",
        "reset_mode true",
        "kind tulua.tty",
        "stdin size 100 30",
        "",
        "[exit status 0]",
      }, lines)
    end)

    it("return nil, message and code where there is no terminal", function()
      local status, stdout, stderr = sh('"$T" tty_info.lua < /dev/null 2> /dev/null')
      assert.are.equal(0, status)
      assert.are.equal("", stderr)
      assert.are.same({
        "is_terminal false false false",
        "size nil stdout: inappropriate ioctl for device ENOTTY",
        "size 0 nil stdin: inappropriate ioctl for device ENOTTY",
        "size 99 nil fd 99: bad file descriptor EBADF",
        "set_mode nil stdin: inappropriate ioctl for device ENOTTY",
        "reset_mode true",
        "kind tulua.file_stream",
      }, lines_of(stdout))
    end)

    it("switch to raw mode and back, and the terminal is restored at the end", function()
      local term <close> = terminal.open({args = {"tty_mode.lua"}, cwd = FIXTURES})
      local lines, ok = term:wait_text("raw true")
      assert.is_truthy(ok, table.concat(lines, "\n"))
      term:type("x") -- no Enter: raw mode hands over each key
      lines, ok = term:wait_text("reset true")
      assert.is_truthy(ok, table.concat(lines, "\n"))
      term:type("hello")
      term:press("Enter")
      local status
      status, lines = term:wait_exit()
      assert.are.equal(0, status, table.concat(lines, "\n"))
      assert.are.same({"raw true", "key 120", "reset true", "hello", "line hello", "raw again true", "",
        "[exit status 0]"}, lines)
      -- after the program, cat reads the terminal: typed keys echo again
      term:type("zz")
      lines, ok = term:wait_tail({"[exit status 0]", "zz"})
      assert.is_truthy(ok, table.concat(lines, "\n"))
    end)

    it("raise for arguments of the wrong type or range", function()
      assert.are.equal("bad argument #1 to 'size' (number expected, got string)",
        error_of(function() tty.size("x") end))
      assert.are.equal("bad argument #1 to 'size' (descriptor out of range)",
        error_of(function() tty.size(-1) end))
      assert.are.equal("bad argument #1 to 'is_terminal' (number expected, got no value)",
        error_of(function() tty.is_terminal() end))
      assert.are.equal("bad argument #1 to 'is_terminal' (descriptor out of range)",
        error_of(function() tty.is_terminal(math.maxinteger) end))
      assert.are.equal("bad argument #1 to 'set_mode' (invalid option 'fast')",
        error_of(function() tty.set_mode("fast") end))
      assert.are.equal("bad argument #1 to 'set_mode' (string expected, got no value)",
        error_of(function() tty.set_mode() end))
    end)

    it("is_terminal is false for a descriptor that is not open", function()
      assert.is_false(tty.is_terminal(12345))
    end)
  end)
end)
