-- The tulua command line against Debian's lua5.4, option by option: both run
-- the same arguments, environment and input, and must give the same stdout,
-- stderr and exit status. Both are started as "lua" through a symlink, so
-- that messages carry the same program name. TULUA names the binary under
-- test (default: build/tulua).

package.path = (debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or ".") .. "/?.lua;" .. package.path
local support = require("support")
local shell_quote, read_file, write_file = support.shell_quote, support.read_file, support.write_file

local function capture(cmd)
  local p = assert(io.popen(cmd))
  local s = p:read("a")
  p:close()
  return (s:gsub("\n$", ""))
end

local function absolute(path)
  if path:sub(1, 1) == "/" then return path end
  return capture("pwd") .. "/" .. path
end

local TULUA = absolute(os.getenv("TULUA") or "build/tulua")
local LUA54 = capture("command -v lua5.4")

-- Variables that would change what either binary does; each run starts
-- without them and sets what its test needs.
local CLEAN_ENV = "env -u LUA_INIT -u LUA_INIT_5_4 -u LUA_PATH -u LUA_PATH_5_4 -u LUA_CPATH -u LUA_CPATH_5_4"
-- GNU readline (in lua5.4) echoes plain lines the same way for any TERM but
-- scrolls long ones on a dumb terminal; no user inputrc either.
local READLINE_ENV = "TERM=xterm INPUTRC=/dev/null"

describe("tulua command line", function()
  local dir

  setup(function()
    dir = capture("mktemp -d")
    assert(os.execute("mkdir " .. dir .. "/ref " .. dir .. "/tulua"))
    assert(os.execute("ln -s " .. shell_quote(LUA54) .. " " .. dir .. "/ref/lua"))
    assert(os.execute("ln -s " .. shell_quote(TULUA) .. " " .. dir .. "/tulua/lua"))
  end)

  teardown(function()
    os.execute("rm -rf " .. shell_quote(dir))
  end)

  local function write(name, text)
    write_file(dir .. "/" .. name, text)
  end

  -- Runs `lua args...` in the temp dir, where lua is lua5.4 ("ref") or
  -- tulua ("tulua"). opts.env: "NAME=value ..." for the environment;
  -- opts.stdin: the input (default: empty, not a terminal).
  -- Returns {status=, stdout=, stderr=}; a death by signal N is 128 + N.
  local function run(which, args, opts)
    opts = opts or {}
    local words = {}
    for i, a in ipairs(args) do
      words[i] = shell_quote(a)
    end
    local input = "/dev/null"
    if opts.stdin then
      write("stdin.txt", opts.stdin)
      input = "stdin.txt"
    end
    local cmd = string.format("cd %s && %s %s PATH=%s/%s:\"$PATH\" lua %s < %s > out.txt 2> err.txt",
      shell_quote(dir), CLEAN_ENV, opts.env or "", shell_quote(dir), which, table.concat(words, " "), input)
    local _, how, code = os.execute(cmd)
    return {
      status = how == "signal" and 128 + code or code,
      stdout = read_file(dir .. "/out.txt"),
      stderr = read_file(dir .. "/err.txt"),
    }
  end

  -- Asserts that tulua does what lua5.4 does; returns what it did.
  local function same(args, opts)
    local want = run("ref", args, opts)
    local got = run("tulua", args, opts)
    assert.are.same(want, got)
    return got
  end

  local function same_repl(input, args)
    return same(args or {"-i"}, {stdin = input, env = READLINE_ENV})
  end

  local USAGE = [==[
usage: lua [options] [script [args]]
Available options are:
  -e stat   execute string 'stat'
  -i        enter interactive mode after executing 'script'
  -l mod    require library 'mod' into global 'mod'
  -l g=mod  require library 'mod' into global 'g'
  -v        show version information
  -E        ignore environment variables
  -W        turn warnings on
  --        stop handling options
  -         stop handling options and execute stdin
]==]

  describe("options", function()
    it("runs a script with its arguments in ... and in arg, negative indices included", function()
      write("args.lua", "print(...)\nfor i = -3, #arg do print(i, arg[i]) end\n")
      local r = same({"-W", "args.lua", "a", "b c"})
      assert.are.same("a\tb c\n-3\tnil\n-2\tlua\n-1\t-W\n0\targs.lua\n1\ta\n2\tb c\n", r.stdout)
    end)

    it("puts the program and the options in arg when there is no script", function()
      same({"-e", "for i = -1, #arg do print(i, arg[i]) end", "-W"})
    end)

    it("runs -e chunks and -l modules in their order", function()
      write("mymod.lua", "print('loading mymod', ...)\nreturn {n = 42}\n")
      local r = same({"-e", "x = 1", "-lmymod", "-e", "print(x, mymod.n)", "-l", "m2=mymod", "-eprint(m2 == mymod)"})
      assert.are.same("loading mymod\tmymod\t./mymod.lua\n1\t42\ntrue\n", r.stdout)
    end)

    it("keeps the whole name in the global for -l without '='", function()
      write("a-b.lua", "return {x = 1}\n")
      same({"-l", "a-b", "-e", "print(rawget(_G, 'a'), rawget(_G, 'a-b').x)"})
    end)

    it("makes a dotted -l reachable as nested globals too, keeping lua5.4's global", function()
      assert(os.execute("mkdir -p " .. shell_quote(dir .. "/sub")))
      write("sub/mod.lua", "return {x = 7}\n")
      local show = "print(rawget(_G, 'sub.mod').x, type(rawget(_G, 'sub')), sub and sub.mod == rawget(_G, 'sub.mod'))"
      local want = run("ref", {"-l", "sub.mod", "-e", show})
      assert.are.same({0, "7\tnil\tnil\n", ""}, {want.status, want.stdout, want.stderr})
      local got = run("tulua", {"-l", "sub.mod", "-e", show})
      assert.are.same({0, "7\ttable\ttrue\n", ""}, {got.status, got.stdout, got.stderr})
      -- g=mod with a dotted g: the same
      got = run("tulua", {"-l", "a.b.c=sub.mod", "-e", "print(a.b.c.x, rawget(_G, 'a.b.c').x)"})
      assert.are.same({0, "7\t7\n", ""}, {got.status, got.stdout, got.stderr})
      -- a table already there gains the field; a field already set, and a
      -- global that is no table, are left as they are (as lua5.4 has them)
      got = run("tulua", {"-e", "sub = {y = 1}", "-l", "sub.mod", "-e", "print(sub.y, sub.mod.x)"})
      assert.are.same("1\t7\n", got.stdout)
      local keep = {"-e", "sub = {mod = 'mine'}", "-l", "sub.mod", "-e", "print(sub.mod, rawget(_G, 'sub.mod').x)"}
      local kept = same(keep)
      assert.are.same({0, "mine\t7\n", ""}, {kept.status, kept.stdout, kept.stderr})
      same({"-e", "sub = 'a string'", "-l", "sub.mod", "-e", "print(sub, rawget(_G, 'sub.mod').x)"})
    end)

    it("runs the issue's command: tulua -l tulua.trace -e 'tulua.trace.svg(...)'", function()
      write("jobs.lua", [[
        local ex <close> = require("concurrent.futures").ThreadPoolExecutor(2)
        local fs = {}
        for i = 1, 4 do fs[i] = ex:submit(function() return i end) end
        for _, f in ipairs(fs) do f:result() end
      ]])
      local r = run("tulua", {"jobs.lua"}, {env = "TULUA_TRACE=out.json"})
      assert.are.equal(0, r.status, r.stderr)
      r = run("tulua", {"-l", "tulua.trace", "-e", "assert(tulua.trace.svg('out.json', 'out.svg'))"})
      assert.are.same({0, "", ""}, {r.status, r.stdout, r.stderr})
      assert.matches("^<%?xml", read_file(dir .. "/out.svg"))
      assert.are.equal(4, select(2, read_file(dir .. "/out.svg"):gsub('<g class="job"', "")))
    end)

    it("shows the usage for an unknown option", function()
      for _, opt in ipairs({"-hx", "--helpx", "-x", "-ix", "-vx", "-Ex", "-Wx", "--x"}) do
        local r = same({opt, "-e", "print(1)"})
        assert.are.same({1, "", "lua: unrecognized option '" .. opt .. "'\n" .. USAGE}, {r.status, r.stdout, r.stderr})
      end
    end)

    it("shows the usage when -e or -l has no argument", function()
      local cases = {{{"-e"}, "-e"}, {{"-l"}, "-l"}, {{"-e", "-i"}, "-e"}, {{"-l", "-"}, "-l"}, {{"-v", "-e"}, "-e"}}
      for _, case in ipairs(cases) do
        local r = same(case[1])
        assert.are.same({1, "", "lua: '" .. case[2] .. "' needs argument\n" .. USAGE}, {r.status, r.stdout, r.stderr})
      end
    end)

    it("prints Lua's copyright line for -v, alone or before a script", function()
      write("hello.lua", "print('hello')\n")
      local r = same({"-v"})
      assert.are.same("Lua 5.4.4  Copyright (C) 1994-2022 Lua.org, PUC-Rio\n", r.stdout)
      same({"-v", "hello.lua"})
      same({"-v", "-v", "-e", "print(1)"})
    end)

    it("runs stdin for '-', with the arguments that follow", function()
      same({"-", "x", "y"}, {stdin = "print(...) print(arg[0])\n"})
      same({"-e", "print(1)", "-"}, {stdin = "print(2)\n"})
    end)

    it("stops handling options at '--'", function()
      write("opt.lua", "print(...)\n")
      same({"--", "opt.lua", "-e", "x"})
      local r = same({"--", "-"})
      assert.are.same("lua: cannot open -: No such file or directory\n", r.stderr)
    end)

    it("runs stdin as a script when there are no arguments and stdin is no terminal", function()
      local r = same({}, {stdin = "print('from stdin', ...)\n"})
      assert.are.same("from stdin\n", r.stdout)
    end)

    it("exits with status 0 when stdin run without '-' fails, as lua5.4 does", function()
      local r = same({}, {stdin = "error('x')\n"})
      assert.are.same(0, r.status)
      r = same({"-"}, {stdin = "error('x')\n"})
      assert.are.same(1, r.status)
    end)

    it("turns warnings on with -W, in order with -e", function()
      local r = same({"-e", "warn('a')", "-W", "-e", "warn('b')", "-e", "warn('@off') warn('c')"})
      assert.are.same("Lua warning: b\n", r.stderr)
    end)

    it("skips a first line that starts with '#'", function()
      write("shebang.lua", "#!/usr/bin/env lua5.4\nprint(debug.getinfo(1, 'l').currentline)\n")
      same({"shebang.lua"})
    end)

    it("uses Lua's own io.stdout and io.stderr", function()
      same({"-e", "print(io.type(io.stdout), getmetatable(io.stdout).__name) io.stdout:write('a'):write('b\\n')"
        .. " io.stderr:write('to stderr\\n') print(io.stdout == io.output())"})
    end)

    it("prints and writes as lua5.4 does, errors included", function()
      same({"-e", "print(pcall(io.write, {})) print(pcall(function() io.write({}) end))"
        .. " print(pcall(function() io.stdout:write(nil) end)) io.write(1, ' ', 2.5, ' ', -0.0, ' ',"
        .. " math.mininteger, '\\n') print(1, nil, true, 2.0, io.write('x') == io.stdout)"
        .. " local f = io.tmpfile() f:close() print(pcall(f.write, f, 'x'))"})
    end)

    it("opens, reads and reports errors with io's functions as lua5.4 does", function()
      write("io_script.lua", [[
local function show(...)
  local t = table.pack(...)
  for i = 1, t.n do t[i] = tostring(t[i]):gsub("0x%x+", "ADDR") end
  print(table.concat(t, " | "))
end
show(pcall(io.open))
show(pcall(io.open, "x.txt", "rw"))
show(io.open("missing/x"))
local f = assert(io.open("io.txt", "w"))
f:write("a\n", 1, "\n", 2.5, "\nlast")
f:close()
show(io.type(f), pcall(f.write, f, "x"))
for l in io.lines("io.txt") do io.write("[", l, "]") end print()
for a, b in io.lines("io.txt", 1, "l") do io.write("<", a, ",", tostring(b), ">") end print()
show(pcall(io.lines, "missing"))
show(pcall(function() for _ in io.lines("missing") do end end))
show(pcall(function() for _ in io.lines("io.txt", "x") do end end))
show(pcall(function() for _ in io.lines(".") do end end))
local p = io.popen("echo hi")
show(p:read("a"), p:close())
show(io.popen("exit 3"):close())
show(pcall(io.popen, "ls", "rw"))
local t = io.tmpfile()
t:write("tmp")
t:seek("set")
show(t:read("a"), t:close())
local o = io.output("io2.txt")
io.write("via output")
io.close()
io.output(io.stdout)
show(io.type(o), io.input("io2.txt") ~= io.stdin, io.read("a"))
io.input(io.stdin)
show(pcall(io.input, {}))
show(pcall(io.output, "missing/x"))
local it, a, b, c = io.lines("io.txt")
show(type(it), a, b, io.type(c), it(), it(), it(), it(), it(), io.type(c))
]])
      same({"io_script.lua"})
    end)

    it("dies of SIGPIPE when it writes endlessly into '| head', streams loaded or not", function()
      -- the exit status of lua, on the left of the pipe; 124: still writing
      local function status_in_pipe(which, code)
        local cmd = string.format("cd %s && (timeout 10 %s/lua -e %s -e %s; echo $? > status.txt)"
          .. " | head -1 > /dev/null", shell_quote(dir), which, shell_quote('pcall(require, "tulua.net")'),
          shell_quote(code))
        assert(os.execute(cmd))
        return read_file(dir .. "/status.txt")
      end
      for _, code in ipairs({
        "while true do print(('x'):rep(100)) end",
        "while true do io.write(('x'):rep(100), '\\n') end",
        "while true do io.stdout:write(('x'):rep(100), '\\n') end",
      }) do
        assert.are.equal("141\n", status_in_pipe("ref", code), code)
        assert.are.equal("141\n", status_in_pipe("tulua", code), code)
      end
    end)
  end)

  describe("environment", function()
    it("runs LUA_INIT before -e", function()
      same({"-e", "print(2)"}, {env = "LUA_INIT='print(1)'"})
    end)

    it("prefers LUA_INIT_5_4 to LUA_INIT", function()
      local r = same({"-e", "print(2)"}, {env = "LUA_INIT_5_4='print(54)' LUA_INIT='print(1)'"})
      assert.are.same("54\n2\n", r.stdout)
    end)

    it("runs the file named by LUA_INIT=@file", function()
      write("init.lua", "print('init file')\n")
      same({"-e", "print(2)"}, {env = "LUA_INIT=@init.lua"})
      local r = same({"-e", "print(2)"}, {env = "LUA_INIT=@missing.lua"})
      assert.are.same({1, ""}, {r.status, r.stdout})
    end)

    it("stops when LUA_INIT fails, and names the chunk after the variable", function()
      same({"-e", "print(2)"}, {env = "LUA_INIT='error(\"init\")'"})
      same({"-e", "print(2)"}, {env = "LUA_INIT_5_4='x ='"})
    end)

    it("ignores LUA_INIT and LUA_PATH under -E, and sets LUA_NOENV", function()
      local r = same({"-E", "-e", "print(package.path) print(package.cpath)"
        .. " print(debug.getregistry().LUA_NOENV)"},
        {env = "LUA_INIT='print(1)' LUA_PATH='x/?.lua' LUA_CPATH_5_4='y/?.so'"})
      assert.are.same("true", r.stdout:match("([^\n]*)\n$"))
    end)

    it("builds package.path and cpath as lua5.4 does", function()
      same({"-e", "print(package.path) print(package.cpath)"})
      same({"-e", "print(package.path) print(package.cpath)"}, {env = "LUA_PATH='x/?.lua;;' LUA_CPATH='y/?.so'"})
      same({"-e", "print(package.path) print(package.cpath)"}, {env = "LUA_PATH_5_4='z/?.lua' LUA_PATH='x/?.lua'"})
    end)

    it("loads C modules that are not linked against liblua (lfs)", function()
      local r = same({"-l", "lfs", "-e", "print(lfs._VERSION, type(lfs.currentdir()))"})
      assert.are.same({0, "LuaFileSystem 1.8.0\tstring\n"}, {r.status, r.stdout})
    end)
  end)

  describe("errors", function()
    it("reports an error in the script with lua5.4's traceback", function()
      write("err.lua", "local function f()\n  error('x')\nend\nf()\n")
      local r = same({"err.lua"})
      assert.are.same({1, "lua: err.lua:2: x\nstack traceback:\n\t[C]: in function 'error'\n"
        .. "\terr.lua:2: in local 'f'\n\terr.lua:4: in main chunk\n\t[C]: in ?\n"}, {r.status, r.stderr})
    end)

    it("reports non-string error objects without fields or __tostring as lua5.4 does", function()
      local objects = {"{}", "nil", "", "42", "true", "'x', 0", "coroutine.create(print)",
        "setmetatable({}, {__tostring = function() return 1 end})"}
      for _, obj in ipairs(objects) do
        same({"-e", "error(" .. obj .. ")"})
      end
    end)

    -- where lua5.4 prints only "custom" or "(error object is a table value)"
    local TB = "stack traceback:\n\t[C]: in function 'error'\n"

    it("reports an error object with __tostring where it was raised, with a traceback", function()
      write("obj.lua", "local E = setmetatable({}, {__tostring = function() return 'custom' end})\n"
        .. "local function f() error(E) end\nf()\n")
      local r = run("tulua", {"obj.lua"})
      assert.are.same({1, "lua: obj.lua:2: custom\n" .. TB .. "\tobj.lua:2: in local 'f'\n"
        .. "\tobj.lua:3: in main chunk\n\t[C]: in ?\n"}, {r.status, r.stderr})
    end)

    it("reports a table error object's fields, array part first, names sorted", function()
      write("tbl.lua", "error({code = 'X', message = 'a \"b\"\\n', 7, n = 1.5, ok = true, [{}] = 1,"
        .. " t = {}})\n")
      local r = run("tulua", {"tbl.lua"})
      assert.are.same({1, "lua: tbl.lua:1: (error object is a table value: {7, code = \"X\", "
        .. "message = \"a \\\"b\\\"\\n\", n = 1.5, ok = true, t = table, ...})\n"
        .. TB .. "\ttbl.lua:1: in main chunk\n\t[C]: in ?\n"}, {r.status, r.stderr})
    end)

    it("reports an uncaught TimeoutError where the task raised it, then where it was raised again", function()
      write("to.lua", "local asyncio = require 'asyncio'\nasyncio.run(function()\n"
        .. "  asyncio.wait_for(function() asyncio.sleep(5) end, 0.01)\nend)\n")
      local r = run("tulua", {"to.lua"})
      assert.are.same(1, r.status)
      assert.are.equal("lua: to.lua:3: timed out\n" .. TB, r.stderr:sub(1, #("lua: to.lua:3: timed out\n" .. TB)))
      assert.matches("\n\tto.lua:3: in function <to.lua:2>\n\t%[C%]: in %?\n" .. TB:gsub("[%[%]%%]", "%%%0")
        .. "\tlua/asyncio/_runners.lua:%d+: in function 'asyncio[%w._]*%.run'\n"
        .. "\tto.lua:2: in main chunk\n\t%[C%]: in %?\n$",
        r.stderr)
    end)

    it("reports a cancellation and an EINVALIDSTATE error where they were raised", function()
      write("cancel.lua", "local tulua = require 'tulua'\nlocal t = tulua.spawn(function() tulua.sleep(1) end)\n"
        .. "t:cancel()\nt:join()\n")
      local r = run("tulua", {"cancel.lua"})
      assert.are.same({1, "lua: cancel.lua:4: task cancelled\nstack traceback:\n\t[C]: in method 'join'\n"
        .. "\tcancel.lua:4: in main chunk\n\t[C]: in ?\n"}, {r.status, r.stderr})
      write("state.lua", "local futures = require 'concurrent.futures'\nlocal f = futures.Future()\n"
        .. "f:set_result(1)\nf:set_result(2)\n")
      r = run("tulua", {"state.lua"})
      assert.are.same({1, "lua: state.lua:4: the future is done\nstack traceback:\n\t[C]: in method 'set_result'\n"
        .. "\tstate.lua:4: in main chunk\n\t[C]: in ?\n"}, {r.status, r.stderr})
    end)

    it("reports a library's error object at the caller's line: a task's 'queue is empty'", function()
      write("q.lua", "local tulua, asyncio = require 'tulua', require 'asyncio'\n"
        .. "tulua.spawn(function()\n  asyncio.Queue():get_nowait()\nend)\n")
      local r = run("tulua", {"q.lua"})
      assert.are.same(1, r.status)
      assert.matches("^lua: q.lua:3: queue is empty\nstack traceback:\n\t%[C%]: in function 'error'\n"
        .. "\tlua/asyncio/_queues.lua:%d+: in method 'get_nowait'\n\tq.lua:3: in function <q.lua:2>\n$", r.stderr)
    end)

    it("reports a syntax error in the script", function()
      write("syntax.lua", "x = = 1\n")
      local r = same({"syntax.lua"})
      assert.are.same("lua: syntax.lua:1: unexpected symbol near '='\n", r.stderr)
    end)

    it("reports a missing script", function()
      local r = same({"nonexist.lua"})
      assert.are.same({1, "lua: cannot open nonexist.lua: No such file or directory\n"}, {r.status, r.stderr})
    end)

    it("reports an error in -e and runs nothing after it", function()
      local r = same({"-e", "print(1)", "-e", "error('in e')", "-e", "print(3)"})
      assert.are.same("1\n", r.stdout)
      same({"-e", "x ="})
    end)

    it("reports a module that -l cannot find or that fails", function()
      same({"-l", "nomod"})
      write("badmod.lua", "error('bad module')\n")
      same({"-l", "badmod", "-e", "print(1)"})
    end)

    it("reports an 'arg' that is no table when the script starts", function()
      write("hello.lua", "print('hello')\n")
      local r = same({"-e", "arg = 1", "hello.lua"})
      assert.are.same("lua: 'arg' is not a table\n", r.stderr)
    end)

    it("skips the middle of a deep traceback as lua5.4 does", function()
      for _, depth in ipairs({8, 18, 19, 20, 21, 22, 30}) do
        same({"-e", "local function f(n) if n == 0 then error('deep') end return (f(n - 1)) end f(" .. depth .. ")"})
        same({"-e", "local function f(n) if n == 0 then error('deep') end return f(n - 1) end f(" .. depth .. ")"})
      end
    end)

    it("reports a stack overflow at the same depth", function()
      write("overflow.lua", "local function f(n) return 1 + f(n + 1) end\nf(1)\n")
      same({"overflow.lua"})
    end)

    it("reports errors inside coroutines and to-be-closed variables", function()
      same({"-e", "coroutine.wrap(function() error('in co') end)()"})
      same({"-e", "print(coroutine.resume(coroutine.create(function() local x; return x.y end)))"})
      same({"-e", "local x <close> = setmetatable({}, {__close = function() print('closed') end}) error('e')"})
    end)
  end)

  describe("exit status", function()
    it("is the status os.exit gives, with stdout flushed", function()
      for _, call in ipairs({"os.exit()", "os.exit(3)", "os.exit(true)", "os.exit(false)", "os.exit(4, true)"}) do
        local r = same({"-e", "io.write('buffered') " .. call})
        assert.are.same("buffered", r.stdout)
      end
    end)

    it("closes the main chunk's to-be-closed variables on os.exit(status, true)", function()
      local guard = "setmetatable({}, {__close = function() print('closed') end})"
      local r = same({"-e", "do local x <close> = " .. guard .. " os.exit(true, true) end"})
      assert.are.same({0, "closed\n"}, {r.status, r.stdout})
      write("exit_close.lua", "local x <close> = setmetatable({}, {__close = function() print(120) end})\n"
        .. "io.stderr:write('Ok')\nos.exit(true, true)\n")
      r = same({"exit_close.lua"})
      assert.are.same({0, "120\n", "Ok"}, {r.status, r.stdout, r.stderr})
      -- from inside a coroutine: the main chunk's close, the coroutine's not
      r = same({"-e", "local x <close> = setmetatable({}, {__close = function() print('main') end})"
        .. " coroutine.wrap(function() local y <close> = setmetatable({}, {__close = function() print('co') end})"
        .. " os.exit(3, true) end)()"})
      assert.are.same({3, "main\n"}, {r.status, r.stdout})
    end)

    it("closes only the main chunk's to-be-closed variables when a task calls os.exit(status, true)", function()
      -- as lua5.4 closes the main thread's and not a suspended coroutine's
      local r = run("tulua", {"-e", "local t = require 'tulua'"
        .. " local function guard(s) return setmetatable({}, {__close = function() print(s) end}) end"
        .. " t.spawn(function() local y <close> = guard('sleeper') t.sleep(10) end)"
        .. " t.spawn(function() local z <close> = guard('caller') t.sleep(0.01) os.exit(5, true) end)"
        .. " local x <close> = guard('main') t.sleep(10)"})
      assert.are.same({5, "main\n", ""}, {r.status, r.stdout, r.stderr})
    end)

    it("is 0 after a script that ran to its end", function()
      assert.are.same(0, same({"-e", "return 1, 2"}).status)
    end)
  end)

  describe("interactive mode", function()
    it("echoes prompts and lines when stdin is no terminal, as lua5.4 with readline does", function()
      local r = same_repl('x=1\nprint(x+1)\n1+1\nfor i=1,2 do\nprint(i)\nend\nerror("boom")\n')
      assert.are.same("Lua 5.4.4  Copyright (C) 1994-2022 Lua.org, PUC-Rio\n"
        .. "> x=1\n> print(x+1)\n2\n> 1+1\n2\n> for i=1,2 do\n>> print(i)\n>> end\n1\n2\n"
        .. '> error("boom")\n> \n', r.stdout)
      assert.are.same("stdin:1: boom\nstack traceback:\n\t[C]: in function 'error'\n"
        .. "\tstdin:1: in main chunk\n\t[C]: in ?\n", r.stderr)
      assert.are.same(0, r.status)
    end)

    it("prints the values of expressions and of '=' lines", function()
      same_repl("=1+2\nreturn 4, nil, 5\nreturn nil\nreturn\n'a' .. 'b'\nlocal x = 1\nx\n")
    end)

    it("takes empty lines, '\\r' line ends and a last line without its end", function()
      same_repl("print(1)\n\n\r\nprint(2)\rprint(3)")
    end)

    it("reports an incomplete chunk at the end of the input as lua5.4 does", function()
      same_repl("for i=1,2 do\n")
      same_repl("_PROMPT2 = '++'\nfor i = 1, 2 do\n")
      same_repl("x = [[\nabc")
    end)

    it("uses _PROMPT and _PROMPT2 through tostring", function()
      same_repl("_PROMPT = 42\n_PROMPT2 = '..'\nfor i = 1, 2 do\nend\n")
      same_repl("_PROMPT = setmetatable({}, {__tostring = function() return 'T ' end})\n1\n")
    end)

    it("ends with status 1 when the prompt's __tostring fails", function()
      same_repl("_PROMPT = setmetatable({}, {__tostring = function() error('bad') end})\n1\n")
    end)

    it("reports errors and error objects without the program name", function()
      same_repl("error({})\nerror()\n"
        .. "x = = 2\nlocal function f(n) return 1 + f(n + 1) end f(1)\n")
    end)

    it("reports an error object with __tostring at the prompt where it was raised", function()
      local r = run("tulua", {"-i"}, {stdin = "error(setmetatable({}, {__tostring = function() return 'E' end}))\n",
        env = READLINE_ENV})
      assert.are.equal("stdin:1: E\nstack traceback:\n\t[C]: in function 'error'\n\tstdin:1: in main chunk\n"
        .. "\t[C]: in ?\n", r.stderr)
    end)

    it("reports an error of print", function()
      same_repl("print = function() error('p') end\n1\nprint = nil\n2\n")
    end)

    it("leaves the input after a line to io.read", function()
      same_repl("x = io.read()\nhello\nprint(x)\n")
    end)

    it("runs after the script, -e and -v", function()
      write("vars.lua", "y = ...\n")
      same_repl("print(x, y)\n", {"-e", "x = 5", "-i", "vars.lua", "arg1"})
      same_repl("print(1)\n", {"-v", "-i"})
      same_repl("print(1)\n", {"-i", "-"})
    end)

    it("runs each line as a task that may wait", function()
      local r = run("tulua", {"-i", "-l", "tulua"}, {stdin = "t = tulua.now()\ntulua.sleep(0.05)\n"
        .. "tulua.now() - t >= 0.045\ntulua.spawn(function() tulua.sleep(0.01) print('spawned') end):join()\n"})
      assert.are.same({0, "Lua 5.4.4  Copyright (C) 1994-2022 Lua.org, PUC-Rio\n> t = tulua.now()\n"
        .. "> tulua.sleep(0.05)\n> tulua.now() - t >= 0.045\ntrue\n"
        .. "> tulua.spawn(function() tulua.sleep(0.01) print('spawned') end):join()\nspawned\n> \n", ""},
        {r.status, r.stdout, r.stderr})
    end)
  end)

  describe("tasks", function()
    it("runs the loop after the script until no task is left", function()
      local r = run("tulua", {"-e", "local t = require 'tulua' t.spawn(function() t.sleep(0.02) print('task') end)"
        .. " print('main')"})
      assert.are.same({0, "main\ntask\n", ""}, {r.status, r.stdout, r.stderr})
    end)

    it("prints an uncaught task error with the program name and exits with status 1", function()
      local r = run("tulua", {"-e", "local t = require 'tulua' t.spawn(function() error('in task') end)"
        .. " t.sleep(0.02) print('main')"})
      assert.are.same({1, "main\n", "lua: (command line):1: in task\nstack traceback:\n\t[C]: in function 'error'\n"
        .. "\t(command line):1: in function <(command line):1>\n"}, {r.status, r.stdout, r.stderr})
    end)

    it("exits with os.exit's status from a spawned task, with stdout flushed", function()
      for _, case in ipairs({{"7", 7}, {"true", 0}, {"false", 1}, {"3, true", 3}}) do
        local r = run("tulua", {"-e", "local t = require 'tulua' t.spawn(function() t.sleep(0.01) io.write('out')"
          .. " os.exit(" .. case[1] .. ") end) io.write('main ')"})
        assert.are.same({case[2], "main out", ""}, {r.status, r.stdout, r.stderr})
      end
    end)
  end)

  describe("tests/lua_testes.sh", function()
    local SCRIPT = absolute("tests/lua_testes.sh")

    -- Runs the script with the environment words env; returns status, output.
    local function testes(env)
      local cmd = string.format("%s %s TULUA=%s sh %s > %s/testes.txt 2>&1", CLEAN_ENV, env,
        shell_quote(TULUA), shell_quote(SCRIPT), shell_quote(dir))
      local _, _, code = os.execute(cmd)
      return code, read_file(dir .. "/testes.txt")
    end

    it("skips with a message and status 0 without LUA_TESTES", function()
      local code, out = testes("-u LUA_TESTES")
      assert.are.same(0, code)
      assert.is_truthy(out:find("skipped: LUA_TESTES is not set", 1, true))
    end)

    it("runs all.lua of the copy in portable mode with tulua, and passes on its status", function()
      os.execute("mkdir -p " .. shell_quote(dir .. "/copy/testes"))
      write("copy/testes/all.lua", "local i = 0 while arg[i - 1] do i = i - 1 end\n"
        .. "print(_U, arg[0], arg[i] == os.getenv('TULUA'), require('tulua') ~= nil)\nos.exit(_U and 3 or 4)\n")
      local code, out = testes("LUA_TESTES=" .. shell_quote(dir .. "/copy"))
      assert.are.same(3, code)
      assert.is_truthy(out:find("\ntrue\tall.lua\ttrue\ttrue\n", 1, true))
    end)

    it("fails with a message for a folder without all.lua", function()
      local code, out = testes("LUA_TESTES=" .. shell_quote(dir .. "/none"))
      assert.are.same(2, code)
      assert.is_truthy(out:find("no all.lua in", 1, true))
    end)
  end)

  describe("--version", function()
    it("prints tulua's, libuv's and Lua's versions", function()
      local r = run("tulua", {"--version"})
      local uv = capture("pkg-config --modversion libuv")
      assert.are.same({0, "tulua 0.1.0\nlibuv " .. uv .. "\nLua 5.4.4  Copyright (C) 1994-2022 Lua.org, PUC-Rio\n", ""},
        {r.status, r.stdout, r.stderr})
    end)
  end)

  describe("-h and --help", function()
    it("print tulua's usage on stdout, run nothing and exit with 0", function()
      for _, opt in ipairs({"-h", "--help"}) do
        local r = run("tulua", {opt, "-e", "print('ran')"})
        assert.are.same({0, ""}, {r.status, r.stderr})
        assert.is_truthy(r.stdout:find("^usage: lua %[options%] %[script %[args%]%]\n"))
        assert.is_nil(r.stdout:find("ran", 1, true))
        for _, word in ipairs({"-e stat", "-l g=mod", "-l a.b    also sets a.b", "-W ", "--version", "-h, --help",
                               "LUA_INIT", "LUA_CPATH", "TULUA_DEBUG", "TULUA_TRACE", "TULUA_TRACE_GC_SLOW",
                               "man tulua", "host/cli.md"}) do
          assert.is_truthy(r.stdout:find(word, 1, true), word)
        end
      end
    end)

    it("leave -v byte-identical to lua5.4's", function()
      local t, l = run("tulua", {"-v"}), run("ref", {"-v"})
      assert.are.same({l.status, l.stdout, l.stderr}, {t.status, t.stdout, t.stderr})
    end)
  end)

  describe("Ctrl-C", function()
    -- Starts `lua script` in the background, waits (at most 30 s) until it
    -- printed "ready", sends it `signals` SIGINTs 0.2 s apart and waits for
    -- it (a watchdog kills it after 60 s: only a hang, since the scripts'
    -- sleeps end by themselves after 10 s; 10 s was too short when another
    -- spec loaded both cores). Returns {status=, stdout=, stderr=}.
    -- The old out.txt goes first: the background job truncates it only once
    -- it runs, and a "ready" left by the test before would send the signal
    -- before tulua has its handler (a background job starts with SIGINT
    -- ignored, so the signal would be lost).
    local function interrupt(which, script, signals)
      write("sig.lua", script)
      local cmd = string.format([[
cd %s && PATH=%s/%s:"$PATH"
rm -f out.txt err.txt
lua sig.lua > out.txt 2> err.txt < /dev/null & pid=$!
(sleep 60; kill -9 $pid) 2> /dev/null & dog=$!
i=0; while [ $i -lt 600 ] && ! grep -q ready out.txt; do sleep 0.05; i=$((i+1)); done
n=0; while [ $n -lt %d ]; do kill -INT $pid; sleep 0.2; n=$((n+1)); done
wait $pid; rc=$?; kill $dog 2> /dev/null; exit $rc]], shell_quote(dir), shell_quote(dir), which, signals)
      local _, _, code = os.execute(cmd)
      return {status = code, stdout = read_file(dir .. "/out.txt"), stderr = read_file(dir .. "/err.txt")}
    end

    local READY = "print('ready') io.stdout:flush()\n"

    it("interrupts running Lua code with 'interrupted!' as lua5.4 does", function()
      local script = READY .. "local x = 0\nwhile true do x = x + 1 end\n"
      local want = interrupt("ref", script, 1)
      assert.are.same({1, "ready\n", "lua: interrupted!\nstack traceback:\n\tsig.lua:3: in main chunk\n\t[C]: in ?\n"},
        {want.status, want.stdout, want.stderr})
      assert.are.same(want, interrupt("tulua", script, 1))
    end)

    it("lets pcall catch the interrupt of running code", function()
      -- "ready" comes from inside the pcall, so the signal always lands there
      local script = "print(pcall(function() " .. READY:gsub("\n$", "") .. " while true do end end))\n"
      local want = interrupt("ref", script, 1)
      assert.are.same(want, interrupt("tulua", script, 1))
    end)

    it("ends the process on a second Ctrl-C while the first is pending", function()
      -- find runs for seconds in C, where no hook can stop it
      local script = "local s = string.rep('a', 1e5)\n" .. READY .. "print(s:find('.-b'))\n"
      local want = interrupt("ref", script, 2)
      assert.are.same({130, "ready\n", ""}, {want.status, want.stdout, want.stderr})
      assert.are.same(want, interrupt("tulua", script, 2))
    end)

    it("cancels the waiting main task, which pcall catches", function()
      local r = interrupt("tulua", "local t = require 'tulua'\n" .. READY
        .. "local ok, err = pcall(t.sleep, 10) print(ok, err, err.code)\n", 1)
      assert.are.same({0, "ready\nfalse\tinterrupted!\tECANCELED\n", ""}, {r.status, r.stdout, r.stderr})
    end)

    it("reports an interrupted wait of the main task", function()
      local r = interrupt("tulua", "local t = require 'tulua'\n" .. READY .. "t.sleep(10)\n", 1)
      assert.are.same({1, "ready\n", "lua: interrupted!\n"}, {r.status, r.stdout, r.stderr})
    end)

    it("interrupts a task that runs Lua code after the script", function()
      local r = interrupt("tulua", "local t = require 'tulua'\n"
        .. "t.spawn(function() t.sleep(0.01) " .. READY .. "while true do end end)\n", 1)
      assert.are.same({1, "ready\n", "lua: interrupted!\nstack traceback:\n\tsig.lua:3: in function <sig.lua:2>\n"},
        {r.status, r.stdout, r.stderr})
    end)

        it("cancels the tasks that wait after the script, reporting each", function()
      local r = interrupt("tulua", "local t = require 'tulua'\nt.spawn(function() t.sleep(10) end)\n" .. READY, 1)
      assert.are.same({1, "ready\n", "lua: interrupted!\n"}, {r.status, r.stdout, r.stderr})
    end)

    it("stops a server script: cancels its connections' tasks and exits", function()
      local r = interrupt("tulua", "local net = require 'tulua.net'\n"
        .. "local s = net.serve('127.0.0.1', 0, function(c) c:read() end)\n"
        .. "local c = require('tulua.net').connect('127.0.0.1', select(2, s:address()))\n"
        .. "c:write('x')\n" .. READY, 1)
      assert.are.same({1, "ready\n", "lua: interrupted!\n"}, {r.status, r.stdout, r.stderr})
    end)

    it("stops the run when it interrupts a task's Lua code while a timer would go on", function()
      -- the timer keeps the loop alive: the interrupted task's error alone
      -- would leave it running
      local r = interrupt("tulua", "local t = require 'tulua'\n"
        .. "require('tulua.timer').every(0.05, function() end)\n"
        .. "t.spawn(function() t.sleep(0.01) " .. READY .. "while true do end end)\n", 1)
      assert.are.same({1, "ready\n", "lua: interrupted!\nstack traceback:\n\tsig.lua:4: in function <sig.lua:3>\n"},
        {r.status, r.stdout, r.stderr})
    end)

    it("stops a script with only a timer running, reporting the interrupt", function()
      local r = interrupt("tulua", "require('tulua.timer').every(0.05, function() end)\n" .. READY, 1)
      assert.are.same({1, "ready\n", "lua: interrupted!\n"}, {r.status, r.stdout, r.stderr})
    end)

    it("lets a task catch the cancellation after the script and clean up", function()
      -- "ready" comes from the task, inside its pcall: printed by the main
      -- chunk, a signal that came before the chunk ended (a loaded machine)
      -- interrupted the chunk instead (status 1). In the task, the signal
      -- lands in its wait (the cancellation) or, rarely, in its print (the
      -- interrupt of running code): pcall catches either
      local r = interrupt("tulua", "local t = require 'tulua'\nt.spawn(function() "
        .. "local ok, err = pcall(function() " .. READY:gsub("\n$", "") .. " t.sleep(10) end) "
        .. "print(ok, type(err) == 'table' and err.code or err) end)\n", 1)
      assert.are.same({0, ""}, {r.status, r.stderr})
      assert.is_truthy(r.stdout == "ready\nfalse\tECANCELED\n"
        or r.stdout:find("^ready\nfalse\tsig.lua:2: interrupted!\n$"), r.stdout)
    end)
  end)
end)
