-- tulua.process: subprocesses (spawn, Process objects, run) and signals
-- (wait_signal, Signal objects), with real programs: sh, cat, sort, echo,
-- env, pwd, printf, ls, sleep, kill, true, false. Spec bodies run in the
-- main task; bodies that wait on a child run under a 10 s watchdog.
local tulua = require("tulua")
local fs = require("tulua.fs")
local process = require("tulua.process")

package.path = (debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or ".") .. "/?.lua;" .. package.path
local support = require("support")
local eventually = support.eventually
local TULUA = support.TULUA

local bounded = support.bounded

local proc_state = support.proc_state

local function gone(pid)
  return function() return proc_state(pid) == nil end
end

-- Runs a fixture with tulua under process.run; returns status, stdout,
-- stderr and the time it took.
local function run_fixture(name)
  local t0 = tulua.now()
  local status, out, err = process.run({TULUA, name}, {cwd = support.FIXTURES, stdin = "null", timeout = 20})
  return status, out, err, tulua.now() - t0
end

local function results(...)
  return table.pack(...)
end

describe("tulua.process", function()
  local dir

  before_each(function()
    dir = assert(fs.mkdtemp("/tmp/tulua-process-XXXXXX"))
  end)

  after_each(function()
    for name in assert(fs.scandir(dir)) do
      assert(fs.unlink(dir .. "/" .. name))
    end
    assert(fs.rmdir(dir))
  end)

  describe("spawn", function()
    it("starts a program and returns a Process with its pid and pipes", bounded(function()
      local p = assert(process.spawn({"echo", "hello", "world"}, {stdout = "pipe"}))
      assert.are.equal("number", type(p.pid))
      assert.is_true(p.pid > 0)
      assert.is_nil(p.stdin)
      assert.is_nil(p.stderr)
      assert.are.equal("hello world\n", p.stdout:read_all())
      assert.are.same({0}, {p:wait()})
      assert.are.equal("Process (echo, pid " .. p.pid .. ", exited 0)", tostring(p))
    end))

    it("echoes stdin to stdout through pipes with cat", bounded(function()
      local p = assert(process.spawn({"cat"}, {stdin = "pipe", stdout = "pipe"}))
      assert.is_true(p.stdin:write("line one\n"))
      assert.are.equal("line one", p.stdout:read_line())
      assert.is_true(p.stdin:write("two\0bytes\n"))
      assert.is_true(p.stdin:shutdown())
      assert.are.equal("two\0bytes\n", p.stdout:read_all())
      assert.are.same({0}, {p:wait()})
    end))

    it("sorts what sort reads once its input ends", bounded(function()
      local p = assert(process.spawn({"sort"}, {stdin = "pipe", stdout = "pipe"}))
      for _, word in ipairs({"pear", "apple", "fig"}) do
        assert(p.stdin:write(word .. "\n"))
      end
      p.stdin:close()
      assert.are.equal("apple\nfig\npear\n", p.stdout:read_all())
      assert.are.same({0}, {p:wait()})
    end))

    it("gives a child none of the files and pipes of Lua's io library", bounded(function()
      local tmpdir = support.temp_path("cloexec")
      assert(fs.mkdir(tmpdir))
      local f = assert(io.open(tmpdir .. "/opened", "w"))
      assert(fs.write_file(tmpdir .. "/lines", "a\n"))
      local _, _, _, lines_file = io.lines(tmpdir .. "/lines")
      local tmp = io.tmpfile()
      local p = assert(process.spawn({"sh", "-c", "ls -l /proc/$$/fd"}, {stdout = "pipe"}))
      local listing = p.stdout:read_all()
      assert.are.same({0}, {p:wait()})
      assert.is_nil(listing:find(tmpdir, 1, true), listing)
      assert.is_nil(listing:find("(deleted)", 1, true), listing)
      -- the write end of a popen: were it the sleeper's too, cat would see
      -- its end only when the sleeper ends, and close would wait for it
      local w = assert(io.popen("cat > /dev/null", "w"))
      local sleeper = assert(process.spawn({"sleep", "60"}))
      local t0 = tulua.now()
      w:close()
      assert.is_true(tulua.now() - t0 < 30, "popen's close waited for the other child")
      sleeper:kill()
      sleeper:wait()
      f:close()
      lines_file:close()
      tmp:close()
      os.execute("rm -rf " .. support.shell_quote(tmpdir))
    end))

    it("fails a write to a child that has exited with EPIPE, without dying of SIGPIPE", bounded(function()
      local p = assert(process.spawn({"true"}, {stdin = "pipe"}))
      assert.are.same({0}, {p:wait()})
      assert.are.same({nil, "write: broken pipe", "EPIPE"}, {p.stdin:write("too late\n")})
      assert.are.same({0}, {p:close()})
    end))

    it("reports the exit status of true, false and exit 7", bounded(function()
      assert.are.same({0}, {assert(process.spawn({"true"})):wait()})
      assert.are.same({1}, {assert(process.spawn({"false"})):wait()})
      assert.are.same({7}, {assert(process.spawn({"sh", "-c", "exit 7"})):wait()})
    end))

    it("passes arguments as they are, without a shell; numbers become strings", bounded(function()
      local p = assert(process.spawn({"printf", "[%s]", "a b", "$HOME", "*", "", 42}, {stdout = "pipe"}))
      assert.are.equal("[a b][$HOME][*][][42]", p.stdout:read_all())
      assert.are.same({0}, {p:wait()})
    end))

    it("runs a command line through sh -c with shell = true", bounded(function()
      local p = assert(process.spawn("echo $((6 * 7)) | tr 4 x", {shell = true, stdout = "pipe"}))
      assert.are.equal("x2\n", p.stdout:read_all())
      assert.are.same({0}, {p:wait()})
    end))

    it("replaces the environment with env", bounded(function()
      local p = assert(process.spawn({"env"}, {env = {TULUA_A = "1", TULUA_B = 2.5}, stdout = "pipe"}))
      local lines = {}
      for line in p.stdout:read_all():gmatch("[^\n]+") do
        lines[#lines + 1] = line
      end
      table.sort(lines)
      assert.are.same({"TULUA_A=1", "TULUA_B=2.5"}, lines)
      assert.are.same({0}, {p:wait()})
    end))

    it("inherits the environment without env", bounded(function()
      local p = assert(process.spawn({"sh", "-c", "printf %s \"$HOME\""}, {stdout = "pipe"}))
      assert.are.equal(os.getenv("HOME") or "", p.stdout:read_all())
      p:wait()
    end))

    it("runs the child in cwd", bounded(function()
      local p = assert(process.spawn({"pwd", "-P"}, {cwd = dir, stdout = "pipe"}))
      assert.are.equal(assert(fs.realpath(dir)) .. "\n", p.stdout:read_all())
      assert.are.same({0}, {p:wait()})
    end))

    it("sends stderr into the stdout pipe with stderr = \"stdout\"", bounded(function()
      local p = assert(process.spawn({"sh", "-c", "echo out; echo err >&2; echo out2"},
        {stdout = "pipe", stderr = "stdout"}))
      assert.is_nil(p.stderr)
      assert.are.equal("out\nerr\nout2\n", p.stdout:read_all())
      assert.are.same({0}, {p:wait()})
    end))

    it("gives the child /dev/null with \"null\"", bounded(function()
      local p = assert(process.spawn({"sh", "-c", "cat; echo gone; echo gone >&2"},
        {stdin = "null", stdout = "null", stderr = "null"}))
      assert.are.same({0}, {p:wait()})
      local q = assert(process.spawn({"cat"}, {stdin = "null", stdout = "pipe"}))
      assert.are.equal("", q.stdout:read_all())
      q:wait()
    end))

    it("writes into a file of the io library, after what it buffered", bounded(function()
      local path = dir .. "/out.txt"
      local f = assert(io.open(path, "w"))
      f:write("first\n") -- still in f's buffer: spawn flushes it
      local p = assert(process.spawn({"echo", "second"}, {stdout = f}))
      assert.are.same({0}, {p:wait()})
      f:close()
      assert.are.equal("first\nsecond\n", support.read_file(path))
    end))

    it("reads from a descriptor number", bounded(function()
      local path = dir .. "/in.txt"
      support.write_file(path, "from a descriptor\n")
      local f = assert(io.open(path, "r"))
      local fd -- f's descriptor: the one /proc/self/fd links to path
      for _, name in ipairs(assert(fs.readdir("/proc/self/fd"))) do
        if fs.readlink("/proc/self/fd/" .. name) == assert(fs.realpath(path)) then fd = tonumber(name) end
      end
      assert.is_truthy(fd)
      local p = assert(process.spawn({"cat"}, {stdin = fd, stdout = "pipe"}))
      assert.are.equal("from a descriptor\n", p.stdout:read_all())
      assert.are.same({0}, {p:wait()})
      f:close()
    end))

    it("takes another process's pipe as stdin (a pipeline without copying)", bounded(function()
      local producer = assert(process.spawn({"printf", "b\\nc\\na\\n"}, {stdout = "pipe"}))
      local sorter = assert(process.spawn({"sort"}, {stdin = producer.stdout, stdout = "pipe"}))
      producer.stdout:close() -- the child has its own copy
      assert.are.equal("a\nb\nc\n", sorter.stdout:read_all())
      assert.are.same({0}, {producer:wait()})
      assert.are.same({0}, {sorter:wait()})
    end))

    it("runs ls | sort -r, a task copying one's output into the other's input", bounded(function()
      for _, name in ipairs({"beta", "gamma", "alpha"}) do
        assert(fs.write_file(dir .. "/" .. name, ""))
      end
      local ls = assert(process.spawn({"ls", "-U", dir}, {stdout = "pipe"}))
      local sort = assert(process.spawn({"sort", "-r"}, {stdin = "pipe", stdout = "pipe"}))
      local copier = tulua.spawn(function()
        for chunk in function() return ls.stdout:read() end do
          assert(sort.stdin:write(chunk))
        end
        sort.stdin:close()
      end)
      assert.are.equal("gamma\nbeta\nalpha\n", sort.stdout:read_all())
      copier:join()
      assert.are.same({0}, {ls:wait()})
      assert.are.same({0}, {sort:wait()})
    end))

    it("returns nil, message and ENOENT for a missing program", function()
      assert.are.same({nil, "no-such-program-tulua: no such file or directory", "ENOENT"},
        {process.spawn({"no-such-program-tulua"})})
    end)

    it("returns nil, message and ENOENT for a missing cwd", function()
      assert.are.same({nil, "true: no such file or directory", "ENOENT"},
        {process.spawn({"true"}, {cwd = dir .. "/missing"})})
    end)

    it("returns nil, message and EACCES for a file that is not executable", function()
      local path = dir .. "/script.sh"
      support.write_file(path, "#!/bin/sh\n")
      assert.are.same({nil, path .. ": permission denied", "EACCES"}, {process.spawn({path})})
    end)

    it("raises on misuse", function()
      assert.has_error(function() process.spawn("ls") end,
        "bad argument #1 to 'spawn' (table expected, got string)")
      assert.has_error(function() process.spawn({}) end, "bad argument #1 to 'spawn' (empty argv)")
      assert.has_error(function() process.spawn({"ls", {}}) end,
        "bad argument #1 to 'spawn' (argv[2] is a table, not a string)")
      assert.has_error(function() process.spawn({"ls\0x"}) end,
        "bad argument #1 to 'spawn' (argv[1] contains a zero byte)")
      assert.has_error(function() process.spawn({"ls"}, {stdot = "pipe"}) end,
        "bad argument #2 to 'spawn' (unknown option 'stdot')")
      assert.has_error(function() process.spawn({"ls"}, {stdout = "bogus"}) end,
        "bad argument #2 to 'spawn' (invalid stdout 'bogus')")
      assert.has_error(function() process.spawn({"ls"}, {stdin = "stdout"}) end,
        "bad argument #2 to 'spawn' (invalid stdin 'stdout')")
      assert.has_error(function() process.spawn({"ls"}, {stdout = {}}) end,
        "bad argument #2 to 'spawn' (invalid stdout (a table))")
      assert.has_error(function() process.spawn({"ls"}, {stdout = -1}) end,
        "bad argument #2 to 'spawn' (invalid stdout descriptor)")
      assert.has_error(function() process.spawn({"ls"}, {env = "A=1"}) end,
        "bad argument #2 to 'spawn' ('env' must be a table, not a string)")
      assert.has_error(function() process.spawn({"ls"}, {env = {A = true}}) end,
        "bad argument #2 to 'spawn' (env value of 'A' is a boolean, not a string)")
      assert.has_error(function() process.spawn({"ls"}, {env = {["A=B"] = "1"}}) end,
        "bad argument #2 to 'spawn' (invalid name in 'env')")
      assert.has_error(function() process.spawn({"ls"}, {cwd = 1}) end,
        "bad argument #2 to 'spawn' ('cwd' must be a string)")
      assert.has_error(function() process.spawn({"ls"}, {cwd = "/tmp\0/etc"}) end,
        "bad argument #2 to 'spawn' ('cwd' contains a zero byte)")
      assert.has_error(function() process.run({"ls"}, {cwd = "/\0"}) end,
        "bad argument #2 to 'run' ('cwd' contains a zero byte)")
      assert.has_error(function() process.spawn({"ls"}, "x") end,
        "bad argument #2 to 'spawn' (table expected, got string)")
      local closed = assert(io.open("/dev/null"))
      closed:close()
      assert.has_error(function() process.spawn({"ls"}, {stdout = closed}) end,
        "bad argument #2 to 'spawn' (stdout is a closed file)")
    end)

    it("lets tulua end while a detached child runs on", function()
      local status, out, err, took = run_fixture("process_detached.lua")
      assert.are.same({0, ""}, {status, err})
      local pid = assert(tonumber(out))
      assert.is_true(took < 30, "took " .. took) -- not the child's 60 s
      assert.is_truthy(proc_state(pid))
      assert.is_true(process.kill(pid, "SIGKILL"))
    end)

    it("keeps tulua running until a child nobody waits for exits", function()
      local status, out, err, took = run_fixture("process_forgotten.lua")
      assert.are.same({0, "script done\n", ""}, {status, out, err})
      assert.is_true(took >= 0.3, "took " .. took)
    end)
  end)

  describe("wait", function()
    it("returns -signal and the signal's name for a killed child", bounded(function()
      local p = assert(process.spawn({"sleep", "10"}))
      assert.are.equal("Process (sleep, pid " .. p.pid .. ", running)", tostring(p))
      assert.is_true(p:kill())
      assert.are.same({-15, "SIGTERM"}, {p:wait()})
      assert.are.equal("Process (sleep, pid " .. p.pid .. ", SIGTERM)", tostring(p))
      local q = assert(process.spawn({"sleep", "10"}))
      assert.is_true(q:kill("SIGKILL"))
      assert.are.same({-9, "SIGKILL"}, {q:wait()})
      local r = assert(process.spawn({"sleep", "10"}))
      assert.is_true(r:kill(2))
      assert.are.same({-2, "SIGINT"}, {r:wait()})
    end))

    it("reports a signal the child sent itself", bounded(function()
      local p = assert(process.spawn({"sh", "-c", "kill -USR2 $$"}))
      assert.are.same({-12, "SIGUSR2"}, {p:wait()})
    end))

    it("returns at once, again and again, once the child has exited", bounded(function()
      local p = assert(process.spawn({"sh", "-c", "exit 3"}))
      assert.are.same({3}, {p:wait()})
      assert.are.same({3}, {p:wait()})
      assert.are.same({3}, {p:poll()})
    end))

    it("wakes every task waiting on the same process", bounded(function()
      local p = assert(process.spawn({"sleep", "0.1"}))
      local tasks = {}
      for i = 1, 3 do
        tasks[i] = tulua.spawn(function() return p:wait() end)
      end
      for i = 1, 3 do
        assert.are.same({0}, {tasks[i]:join()})
      end
    end))

    it("reaps the child: no zombie is left", bounded(function()
      local p = assert(process.spawn({"true"}))
      p:wait()
      assert.is_nil(proc_state(p.pid))
    end))

    it("can be cancelled, leaving the child running", bounded(function()
      local p = assert(process.spawn({"sleep", "10"}))
      local waiter = tulua.spawn(function() return p:wait() end)
      tulua.sleep(0)
      assert.are.equal("waiting", waiter:status())
      waiter:cancel()
      local ok, err = pcall(waiter.join, waiter)
      assert.is_false(ok)
      assert.are.equal("ECANCELED", err.code)
      assert.is_nil(p:poll())
      assert.is_truthy(proc_state(p.pid))
      assert.are_not.equal("Z", proc_state(p.pid))
      p:kill("SIGKILL")
      assert.are.same({-9, "SIGKILL"}, {p:wait()})
    end))

    it("raises where the task cannot wait", bounded(function()
      local p = assert(process.spawn({"sleep", "10"}))
      assert.has_error(function() table.sort({1, 2}, function() return p:wait() end) end,
        "attempt to wait in 'process.wait' inside a function called from C that cannot yield "
        .. "(such as a 'table.sort' comparator or a 'string.gsub' callback)")
      p:kill()
      p:wait()
    end))
  end)

  describe("poll", function()
    it("returns nothing while the child runs, then its status", bounded(function()
      local p = assert(process.spawn({"sleep", "10"}))
      assert.are.equal(0, select("#", p:poll()))
      p:kill("SIGKILL")
      assert.is_true(eventually(function() return p:poll() ~= nil end))
      assert.are.same({-9, "SIGKILL"}, {p:poll()})
    end))
  end)

  describe("kill", function()
    it("returns nil, message and ESRCH once the child has exited", bounded(function()
      local p = assert(process.spawn({"true"}))
      p:wait()
      assert.are.same({nil, "true: no such process", "ESRCH"}, {p:kill()})
    end))

    it("raises for an unknown signal", bounded(function()
      local p = assert(process.spawn({"sleep", "10"}))
      assert.has_error(function() p:kill("SIGNOPE") end, "bad argument #1 to 'kill' (unknown signal 'SIGNOPE')")
      assert.has_error(function() p:kill(0) end, "bad argument #1 to 'kill' (signal number out of range)")
      assert.has_error(function() p:kill({}) end,
        "bad argument #1 to 'kill' (signal name or number expected, got table)")
      p:kill()
      p:wait()
    end))

    it("sends a signal to any pid with process.kill", bounded(function()
      local p = assert(process.spawn({"sleep", "10"}))
      assert.is_true(process.kill(p.pid, "SIGKILL"))
      assert.are.same({-9, "SIGKILL"}, {p:wait()})
      assert.are.same({nil, p.pid .. ": no such process", "ESRCH"}, {process.kill(p.pid)})
    end))
  end)

  describe("close", function()
    it("closes the pipes, stdin first, then waits for the child", bounded(function()
      local p = assert(process.spawn({"cat"}, {stdin = "pipe", stdout = "pipe", stderr = "pipe"}))
      assert.are.same({0}, {p:close()})
      assert.is_true(p.stdin:is_closed())
      assert.is_true(p.stdout:is_closed())
      assert.is_true(p.stderr:is_closed())
      assert.is_nil(proc_state(p.pid))
    end))

    it("makes methods raise but keeps pid; a second close returns the status", bounded(function()
      local p = assert(process.spawn({"false"}))
      local pid = p.pid
      assert.are.same({1}, {p:close()})
      assert.are.equal(pid, p.pid)
      assert.are.equal("Process (false, pid " .. pid .. ", exited 1)", tostring(p))
      assert.are.same({1}, {p:close()})
      assert.has_error(function() p:wait() end, "attempt to use a closed process")
      assert.has_error(function() p:poll() end, "attempt to use a closed process")
      assert.has_error(function() p:kill() end, "attempt to use a closed process")
    end))

    it("waits at the end of the block of a <close> variable", bounded(function()
      local pid
      do
        local p <close> = assert(process.spawn({"sleep", "0.1"}))
        pid = p.pid
      end
      assert.is_nil(proc_state(pid))
    end))

    it("kills and reaps the child of a <close> variable when an error leaves the block", bounded(function()
      local pid
      local ok, err = pcall(function()
        local p <close> = assert(process.spawn({"sleep", "10"}))
        pid = p.pid
        error("boom", 0)
      end)
      assert.are.same({false, "boom"}, {ok, err})
      assert.is_nil(proc_state(pid)) -- waited for: the task could wait there
    end))

    it("kills the child of a <close> variable where the task cannot wait", bounded(function()
      local pid
      local done = tulua.spawn(function()
        local p <close> = assert(process.spawn({"sleep", "10"}))
        pid = p.pid
        error("at a task's top level, __close cannot wait", 0)
      end)
      local ok = pcall(done.join, done)
      assert.is_false(ok)
      assert.is_true(eventually(gone(pid)))
    end))

    it("kills the child when the task waiting in close is cancelled", bounded(function()
      local p = assert(process.spawn({"sleep", "10"}))
      local closer = tulua.spawn(function() return p:close() end)
      tulua.sleep(0)
      closer:cancel()
      local ok, err = pcall(closer.join, closer)
      assert.is_false(ok)
      assert.are.equal("ECANCELED", err.code)
      assert.is_true(eventually(gone(p.pid)))
    end))
  end)

  describe("garbage collection", function()
    it("still reaps the child of a Process nobody closed", bounded(function()
      local pid
      do
        local p = assert(process.spawn({"sleep", "0.1"}, {stdout = "pipe"}))
        pid = p.pid
      end
      collectgarbage()
      collectgarbage()
      assert.is_true(eventually(gone(pid)))
    end))

    it("leaves the child running", bounded(function()
      local pid
      do
        pid = assert(process.spawn({"sleep", "10"})).pid
      end
      collectgarbage()
      collectgarbage()
      assert.is_truthy(proc_state(pid))
      assert.are_not.equal("Z", proc_state(pid))
      assert.is_true(process.kill(pid, "SIGKILL"))
      assert.is_true(eventually(gone(pid)))
    end))
  end)

  describe("run", function()
    it("returns the status and captures stdout and stderr", bounded(function()
      assert.are.same({0, "out\n", "err\n"}, {process.run({"sh", "-c", "echo out; echo err >&2"})})
      assert.are.same({3, "", ""}, {process.run({"sh", "-c", "exit 3"})})
    end))

    it("feeds input to the child's stdin", bounded(function()
      assert.are.same({0, "b\nc\n", ""}, {process.run({"sort"}, {input = "c\nb\n"})})
      assert.are.same({0, "", ""}, {process.run({"cat"}, {input = ""})})
      local big = string.rep("0123456789abcdef", 65536) -- 1 MiB
      assert.are.same({0, big, ""}, {process.run({"cat"}, {input = big})})
    end))

    it("survives a child that does not read its input (no SIGPIPE)", bounded(function()
      local big = string.rep("x", 4 * 1024 * 1024)
      assert.are.same({0, "", ""}, {process.run({"true"}, {input = big})})
    end))

    it("reads large outputs on stdout and stderr at once without deadlock", bounded(function()
      local status, out, err = process.run({"sh", "-c",
        "head -c 1000000 /dev/zero | tr '\\0' a; head -c 1000000 /dev/zero >&2"})
      assert.are.equal(0, status)
      assert.are.equal(1000000, #out)
      assert.are.equal(string.rep("a", 1000000), out)
      assert.are.equal(string.rep("\0", 1000000), err)
    end))

    it("returns -signal for a child a signal ended", bounded(function()
      assert.are.same({-9, "", ""}, {process.run({"sh", "-c", "kill -9 $$"})})
    end))

    it("returns nil, message and ETIMEDOUT after killing and reaping a slow child", bounded(function()
      local t0 = tulua.now()
      local r = results(process.run({"sh", "-c", "echo $$; exec sleep 60"}, {timeout = 0.2}))
      local took = tulua.now() - t0
      assert.are.same({nil, "sh: timed out after 0.2 s", "ETIMEDOUT"}, {r[1], r[2], r[3]})
      assert.are.equal(5, r.n)
      assert.are.equal("", r[5])
      local pid = assert(tonumber(r[4]))
      assert.is_nil(proc_state(pid)) -- reaped before run returned
      assert.is_true(took >= 0.19 and took < 30, "took " .. took) -- not the child's 60 s
    end))

    it("returns the output of a child that ended before the timeout", bounded(function()
      assert.are.same({0, "quick\n", ""}, {process.run({"echo", "quick"}, {timeout = 5})})
    end))

    it("fails with ESTATUS on a non-zero status when check is set", bounded(function()
      assert.are.same({nil, "false: exited with status 1", "ESTATUS", "", ""},
        {process.run({"false"}, {check = true})})
      assert.are.same({nil, "sh: killed by SIGKILL", "ESTATUS", "partial\n", ""},
        {process.run({"sh", "-c", "echo partial; kill -9 $$"}, {check = true})})
      assert.are.same({0, "fine\n", ""}, {process.run({"echo", "fine"}, {check = true})})
    end))

    it("takes env, cwd, shell and stderr = \"stdout\"", bounded(function()
      assert.are.same({0, "v\n", ""}, {process.run({"sh", "-c", "echo $TULUA_V"}, {env = {TULUA_V = "v"}})})
      assert.are.same({0, assert(fs.realpath(dir)) .. "\n", ""}, {process.run({"pwd", "-P"}, {cwd = dir})})
      assert.are.same({0, "3\n", ""}, {process.run("echo $((1 + 2))", {shell = true})})
      assert.are.same({0, "o\ne\n", nil}, {process.run({"sh", "-c", "echo o; echo e >&2"}, {stderr = "stdout"})})
      assert.are.same({0, nil, nil}, {process.run({"echo", "x"}, {stdout = "null", stderr = "null"})})
    end))

    it("returns nil, message and ENOENT for a missing program", bounded(function()
      assert.are.same({nil, "no-such-program-tulua: no such file or directory", "ENOENT"},
        {process.run({"no-such-program-tulua"})})
    end))

    it("kills and reaps the child when its task is cancelled", bounded(function()
      local pidfile = dir .. "/pid"
      local runner = tulua.spawn(function()
        return process.run({"sh", "-c", "echo $$ > " .. pidfile .. "; exec sleep 10"})
      end)
      assert.is_true(eventually(function()
        local s = fs.read_file(pidfile)
        return s ~= nil and s:match("\n$") ~= nil
      end))
      local pid = assert(tonumber(assert(fs.read_file(pidfile))))
      runner:cancel()
      local ok, err = pcall(runner.join, runner)
      assert.is_false(ok)
      assert.are.equal("ECANCELED", err.code)
      assert.is_true(eventually(gone(pid)))
    end))

    it("raises on misuse", function()
      assert.has_error(function() process.run({"cat"}, {input = "x", stdin = "null"}) end,
        "bad argument #2 to 'run' ('input' and 'stdin' are exclusive)")
      assert.has_error(function() process.run({"cat"}, {stdin = "pipe"}) end,
        "bad argument #2 to 'run' (invalid stdin 'pipe')")
      assert.has_error(function() process.run({"cat"}, {input = 1}) end,
        "bad argument #2 to 'run' ('input' must be a string)")
      assert.has_error(function() process.run({"cat"}, {timeout = -1}) end,
        "bad argument #2 to 'run' ('timeout' must be a non-negative number)")
      assert.has_error(function() process.run({"cat"}, {detached = true}) end,
        "bad argument #2 to 'run' (unknown option 'detached')")
      assert.has_error(function() table.sort({1, 2}, function() return process.run({"true"}) end) end,
        "attempt to wait in 'process.run' inside a function called from C that cannot yield "
        .. "(such as a 'table.sort' comparator or a 'string.gsub' callback)")
    end)
  end)

  describe("detached", function()
    it("waits for a detached child's exit, and a cancelled wait lets tulua end", function()
      local status, out, err, took = run_fixture("process_detached_wait.lua")
      assert.are.same({0, ""}, {status, err})
      local code, cancelled, pid = out:match("^(%d+)\n(%a+)\n(%d+)\n$")
      assert.are.same({"4", "cancelled"}, {code, cancelled})
      assert.is_true(took >= 0.3 and took < 30, "took " .. took) -- not the second child's 60 s
      pid = assert(tonumber(pid))
      assert.is_truthy(proc_state(pid))
      assert.is_true(process.kill(pid, "SIGKILL"))
    end)
  end)

  describe("process_group", function()
    -- The process group of a process, from /proc (field 5 of stat).
    local function pgrp(pid)
      local f = assert(io.open("/proc/" .. pid .. "/stat"))
      local s = f:read("a")
      f:close()
      return tonumber((s:match("^%d+ %b() %a %d+ (%d+)")))
    end

    -- Gone or a zombie: killed, if not reaped yet by whoever inherited it.
    local function dead(pid)
      return function()
        local state = proc_state(pid)
        return state == nil or state == "Z"
      end
    end

    -- The pids written into path by a shell, once it has written them all.
    local function read_pids(path, n)
      local pids
      assert.is_true(eventually(function()
        pids = {}
        for pid in (fs.read_file(path) or ""):gmatch("(%d+)\n") do pids[#pids + 1] = tonumber(pid) end
        return #pids == n
      end))
      return pids
    end

    -- A shell leading a group, waiting for its child sleep 7, and that
    -- child's pid.
    local function group_with_grandchild()
      local pids = dir .. "/pids"
      local p = assert(process.spawn({"sh", "-c", "sleep 7 & echo $! > " .. pids .. "; wait"},
        {process_group = true}))
      return p, read_pids(pids, 1)[1]
    end

    it("makes the child of spawn lead a group of its own", bounded(function()
      local p = assert(process.spawn({"sleep", "5"}, {process_group = true}))
      assert.are.equal(p.pid, pgrp(p.pid))
      local q = assert(process.spawn({"sleep", "5"}))
      assert.are.equal(pgrp(process.getpid()), pgrp(q.pid))
      assert.is_true(p:kill("SIGKILL"))
      assert.is_true(q:kill("SIGKILL"))
      assert.are.same({-9, "SIGKILL"}, {p:wait()})
      assert.are.same({-9, "SIGKILL"}, {q:wait()})
    end))

    it("kills the whole group of run's child at its timeout", bounded(function()
      local pids = dir .. "/pids"
      local r = results(process.run({"sh", "-c", "sleep 7 & echo $! > " .. pids .. "; echo $$ >> " .. pids
        .. "; exec sleep 7"}, {timeout = 0.2, process_group = true}))
      assert.are.same({nil, "sh: timed out after 0.2 s", "ETIMEDOUT"}, {r[1], r[2], r[3]})
      for _, pid in ipairs(read_pids(pids, 2)) do
        assert.is_true(eventually(dead(pid)), "pid " .. pid .. " still runs")
      end
    end))

    it("kills the group of a child that has exited, leaving its grandchild, at run's timeout", bounded(function()
      local pids = dir .. "/pids"
      local r = results(process.run({"sh", "-c", "sleep 7 & echo $! > " .. pids},
        {timeout = 0.3, process_group = true}))
      assert.are.same({nil, "sh: timed out after 0.3 s", "ETIMEDOUT"}, {r[1], r[2], r[3]})
      assert.is_true(eventually(dead(read_pids(pids, 1)[1])))
    end))

    it("kills the whole group of run's child when its task is cancelled", bounded(function()
      local pids = dir .. "/pids"
      local runner = tulua.spawn(function()
        return process.run({"sh", "-c", "sleep 7 & echo $! > " .. pids .. "; echo $$ >> " .. pids
          .. "; exec sleep 7"}, {process_group = true})
      end)
      local killed = read_pids(pids, 2)
      runner:cancel()
      local ok, err = pcall(runner.join, runner)
      assert.is_false(ok)
      assert.are.equal("ECANCELED", err.code)
      for _, pid in ipairs(killed) do
        assert.is_true(eventually(dead(pid)), "pid " .. pid .. " still runs")
      end
    end))

    it("sends a signal to the whole group with kill's group option", bounded(function()
      local p, grandchild = group_with_grandchild()
      assert.is_true(p:kill("SIGTERM", {group = true}))
      assert.are.same({-15, "SIGTERM"}, {p:wait()})
      assert.is_true(eventually(dead(grandchild)))
      -- ESRCH once the group has no member left (a zombie is one)
      local r
      assert.is_true(eventually(function()
        r = results(p:kill("SIGTERM", {group = true}))
        return r[1] == nil
      end))
      assert.are.same({nil, "sh: no such process", "ESRCH"}, {r[1], r[2], r[3]})
    end))

    it("kills the group of a Process whose task is cancelled in close", bounded(function()
      local p, grandchild = group_with_grandchild()
      local closer = tulua.spawn(p.close, p)
      tulua.sleep(0)
      closer:cancel()
      assert.is_false(pcall(closer.join, closer))
      assert.is_true(eventually(dead(grandchild)))
      assert.is_true(eventually(dead(p.pid)))
    end))

    it("raises on misuse", bounded(function()
      local p = assert(process.spawn({"sleep", "5"}))
      assert.has_error(function() p:kill("SIGTERM", {group = true}) end,
        "bad argument #2 to 'kill' (the process leads no group: spawn it with process_group = true)")
      local q = assert(process.spawn({"sleep", "5"}, {process_group = true}))
      assert.has_error(function() q:kill("SIGTERM", {gruop = true}) end,
        "bad argument #2 to 'kill' (unknown option 'gruop')")
      assert.has_error(function() q:kill("SIGTERM", 1) end,
        "bad argument #2 to 'kill' (table expected, got number)")
      assert.has_error(function() process.spawn({"true"}, {process_groups = true}) end,
        "bad argument #2 to 'spawn' (unknown option 'process_groups')")
      assert.has_error(function() process.run({"true"}, {process_groups = true}) end,
        "bad argument #2 to 'run' (unknown option 'process_groups')")
      assert.is_true(p:kill("SIGKILL"))
      assert.is_true(q:kill("SIGKILL"))
      p:wait()
      q:wait()
    end))
  end)

  describe("pty", function()
    it("gives the child a terminal as stdin, stdout and stderr", bounded(function()
      local p = assert(process.spawn({"sh", "-c", "test -t 0 && test -t 1 && test -t 2 && echo yes; tty"},
        {pty = true}))
      assert.are.same({nil, nil, nil}, {p.stdin, p.stdout, p.stderr})
      local out = p.pty:read_all() -- to its end: the terminal's side closed
      assert.is_truthy(out:match("^yes\r\n/dev/pts/%d+\r\n$"), out)
      assert.are.same({0}, {p:close()})
      assert.is_true(p.pty:is_closed())
    end))

    it("writes to the child through the terminal, which echoes", bounded(function()
      local p = assert(process.spawn({"sh", "-c", "read x; echo \"got $x\""}, {pty = true}))
      assert(p.pty:write("hi\n"))
      assert.are.equal("hi\r\ngot hi\r\n", p.pty:read_all())
      assert.are.same({0}, {p:wait()})
      p:close()
    end))

    it("opens a terminal of 80 by 24 and resizes it with set_size", bounded(function()
      local p = assert(process.spawn({"sh", "-c", "stty size; read x; stty size"}, {pty = true}))
      assert.are.equal("24 80\r", p.pty:read_line())
      assert.is_true(p:set_size(100, 40))
      assert(p.pty:write("\n"))
      assert.are.equal("\r\n40 100\r\n", p.pty:read_all())
      assert.are.same({0}, {p:close()})
    end))

    it("raises on misuse", bounded(function()
      assert.has_error(function() process.spawn({"true"}, {pty = true, stdout = "pipe"}) end,
        "bad argument #2 to 'spawn' ('pty' and 'stdout' are exclusive)")
      assert.has_error(function() process.run({"true"}, {pty = true}) end,
        "bad argument #2 to 'run' (unknown option 'pty')")
      local p = assert(process.spawn({"true"}))
      assert.has_error(function() p:set_size(80, 24) end, "the process has no pty (spawn it with pty = true)")
      p:close()
      local q = assert(process.spawn({"true"}, {pty = true}))
      assert.has_error(function() q:set_size(0, 24) end, "bad argument #1 to 'set_size' (columns out of range)")
      assert.has_error(function() q:set_size(80, 65536) end, "bad argument #2 to 'set_size' (rows out of range)")
      q:close()
      assert.has_error(function() q:set_size(80, 24) end, "attempt to use a closed process")
    end))
  end)

  describe("wait_signal", function()
    local me = process.getpid()

    it("returns the name of the signal once it arrives", bounded(function()
      local waiter = tulua.spawn(process.wait_signal, "SIGUSR1")
      tulua.sleep(0) -- the waiter runs first, and listens from then on
      assert.are.same({0, "", ""}, {process.run({"kill", "-USR1", tostring(me)})})
      assert.are.equal("SIGUSR1", waiter:join())
    end))

    it("takes a signal number", bounded(function()
      local waiter = tulua.spawn(process.wait_signal, process.signals.SIGUSR2)
      tulua.sleep(0)
      assert.is_true(process.kill(me, "SIGUSR2"))
      assert.are.equal("SIGUSR2", waiter:join())
    end))

    it("can be cancelled, and then waited for again", bounded(function()
      local waiter = tulua.spawn(process.wait_signal, "SIGWINCH")
      tulua.sleep(0)
      waiter:cancel()
      local ok, err = pcall(waiter.join, waiter)
      assert.is_false(ok)
      assert.are.equal("ECANCELED", err.code)
      local again = tulua.spawn(process.wait_signal, "SIGWINCH")
      tulua.sleep(0)
      assert.is_true(process.kill(me, "SIGWINCH"))
      assert.are.equal("SIGWINCH", again:join())
    end))

    it("gives SIGINT back to the command line's Ctrl-C handling afterwards", function()
      local status, out, err = run_fixture("process_sigint.lua")
      assert.are.same({1, "SIGINT\n", TULUA .. ": interrupted!\n"}, {status, out, err})
    end)

    it("raises on misuse", function()
      assert.has_error(function() process.wait_signal("SIGNOPE") end,
        "bad argument #1 to 'wait_signal' (unknown signal 'SIGNOPE')")
      assert.has_error(function() process.wait_signal("SIGKILL") end,
        "bad argument #1 to 'wait_signal' (SIGKILL cannot be caught)")
      assert.has_error(function() process.wait_signal(9) end,
        "bad argument #1 to 'wait_signal' (SIGKILL cannot be caught)")
      assert.has_error(function() process.wait_signal() end,
        "bad argument #1 to 'wait_signal' (signal name or number expected, got no value)")
      assert.has_error(function() process.wait_signal(1000) end,
        "bad argument #1 to 'wait_signal' (signal number out of range)")
    end)
  end)

  describe("reserved signals", function()
    -- SIGRTMIN + 4 interrupts pool jobs (bindings/worker.c); glibc's
    -- SIGRTMIN is 34 on Linux, so it is 38 there
    local reserved = 38

    it("are refused by wait_signal and signal", bounded(function()
      assert.has_error(function() process.wait_signal(reserved) end,
        "bad argument #1 to 'wait_signal' (SIGRTMIN+4 is reserved by tulua: it interrupts pool jobs)")
      assert.has_error(function() process.signal(reserved) end,
        "bad argument #1 to 'signal' (SIGRTMIN+4 is reserved by tulua: it interrupts pool jobs)")
    end))

    it("leave the other real-time signals open", function()
      local sig <close> = assert(process.signal(reserved + 1))
      assert.are.equal("Signal (SIG" .. (reserved + 1) .. ")", tostring(sig))
    end)
  end)

  describe("signal", function()
    local me = process.getpid()

    it("remembers arrivals while nobody waits, several as one", bounded(function()
      local sig <close> = assert(process.signal("SIGUSR1"))
      assert.are.equal("Signal (SIGUSR1)", tostring(sig))
      assert.is_true(process.kill(me, "SIGUSR1"))
      assert.is_true(process.kill(me, "SIGUSR1"))
      assert.is_true(eventually(function()
        -- a waiter that is not served at once means nothing arrived yet
        local t = tulua.spawn(sig.wait, sig)
        tulua.sleep(0)
        if t:done() then return true end
        t:cancel()
        pcall(t.join, t)
        return false
      end))
      local next_one = tulua.spawn(sig.wait, sig)
      tulua.sleep(0) -- it has run once: a remembered arrival would end it
      assert.is_false(next_one:done()) -- the two arrivals counted as one
      assert.is_true(process.kill(me, "SIGUSR1"))
      assert.are.equal("SIGUSR1", next_one:join())
    end))

    it("wakes a waiting task with nil, message and ECANCELED when closed", bounded(function()
      local sig = assert(process.signal("SIGWINCH"))
      local waiter = tulua.spawn(sig.wait, sig)
      tulua.sleep(0)
      sig:close()
      assert.are.same({nil, "signal closed", "ECANCELED"}, {waiter:join()})
      assert.are.equal("Signal (closed)", tostring(sig))
      sig:close() -- a no-op
      assert.has_error(function() sig:wait() end, "attempt to use a closed signal")
    end))

    it("lets one task wait at a time", bounded(function()
      local sig <close> = assert(process.signal("SIGWINCH"))
      local waiter = tulua.spawn(sig.wait, sig)
      tulua.sleep(0)
      assert.has_error(function() sig:wait() end, "attempt to wait for a signal in two tasks at once")
      waiter:cancel()
      pcall(waiter.join, waiter)
    end))

    it("stops catching when collected", bounded(function()
      do
        assert(process.signal("SIGWINCH"))
      end
      collectgarbage()
      collectgarbage()
      -- SIGWINCH is ignored by default: nothing happens, and a new wait works
      assert.is_true(process.kill(me, "SIGWINCH"))
      local waiter = tulua.spawn(process.wait_signal, "SIGWINCH")
      tulua.sleep(0)
      assert.is_true(process.kill(me, "SIGWINCH"))
      assert.are.equal("SIGWINCH", waiter:join())
    end))
  end)

  describe("signals", function()
    it("maps names to numbers and numbers to names", function()
      assert.are.equal(9, process.signals.SIGKILL)
      assert.are.equal(15, process.signals.SIGTERM)
      assert.are.equal("SIGTERM", process.signals[15])
      assert.are.equal("SIGINT", process.signals[process.signals.SIGINT])
    end)
  end)

  describe("getpid", function()
    it("returns the pid of this process", function()
      local f = assert(io.open("/proc/self/stat"))
      local pid = tonumber(f:read("a"):match("^(%d+)"))
      f:close()
      assert.are.equal(pid, process.getpid())
    end)
  end)
end)
