-- tulua.fs.watch: Watcher objects over libuv's uv_fs_event_t (inotify on
-- Linux, where these specs run). Spec bodies run in the main task; every
-- wait for an event is bounded (5 s), through eventually() or a guard.
local tulua = require("tulua")
local fs = require("tulua.fs")
local timer = require("tulua.timer")

package.path = (debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or ".") .. "/?.lua;" .. package.path
local support = require("support")
local eventually = support.eventually
local remove_tree = support.remove_tree

-- Starts a task that appends each event of w to a list until w is closed;
-- returns the list and the task.
local function collect(w)
  local events = {}
  local t = tulua.spawn(function()
    for ev in w do
      events[#events + 1] = ev
    end
  end)
  return events, t
end

-- Returns the next event of w, waited for in another task (at most 5 s).
local function next_event(w)
  local t = tulua.spawn(w.next, w)
  if not eventually(function() return t:done() end) then
    t:cancel()
    error("no event within 5 s", 2)
  end
  return t:join()
end

-- Merges runs of equal change events: inotify coalesces an event with the
-- previous one while that is unread, so a write may give one or two.
local function merge_changes(events)
  local out = {}
  for _, ev in ipairs(events) do
    local last = out[#out]
    if not (last and ev.change and last.change and last.name == ev.name and last.rename == ev.rename) then
      out[#out + 1] = ev
    end
  end
  return out
end

-- The number of inotify watches this process holds (one per watched path).
local function inotify_watches()
  local n = 0
  for _, fd in ipairs(assert(fs.readdir("/proc/self/fdinfo"))) do
    local info = fs.read_file("/proc/self/fdinfo/" .. fd) or ""
    for _ in info:gmatch("inotify wd:") do
      n = n + 1
    end
  end
  return n
end

describe("tulua.fs", function()
  local base, dir

  before_each(function()
    base = os.tmpname() -- reserves a unique name; the directory is next to it
    dir = base .. ".d"
    assert(fs.mkdir(dir))
  end)

  after_each(function()
    remove_tree(dir)
    os.remove(base)
  end)

  describe("watch", function()
    it("returns a Watcher, nil, nil and the Watcher again (the closing value)", function()
      local results = table.pack(fs.watch(dir))
      local w = results[1]
      assert.are.equal(4, results.n)
      assert.are.equal("tulua.watcher", getmetatable(w).__name)
      assert.is_nil(results[2])
      assert.is_nil(results[3])
      assert.are.equal(w, results[4])
      assert.are.equal("watcher (" .. dir .. ")", tostring(w))
      w:close()
    end)

    it("reports creating, changing, renaming and removing a file done by another task", function()
      local w <close> = assert(fs.watch(dir))
      local events, reader = collect(w)
      local writer = tulua.spawn(function()
        assert(fs.write_file(dir .. "/a", "")) -- IN_CREATE
        assert(fs.write_file(dir .. "/a", "22")) -- IN_MODIFY (truncate), IN_MODIFY (write)
        assert(fs.rename(dir .. "/a", dir .. "/b")) -- IN_MOVED_FROM, IN_MOVED_TO
        assert(fs.unlink(dir .. "/b")) -- IN_DELETE
      end)
      writer:join()
      assert.is_true(eventually(function()
        local last = events[#events]
        return #events >= 5 and last.name == "b" and events[#events - 1].name == "b"
      end))
      w:close()
      assert.is_true(eventually(function() return reader:done() end))
      assert.are.same({
        {name = "a", rename = true},
        {name = "a", change = true},
        {name = "a", rename = true},
        {name = "b", rename = true},
        {name = "b", rename = true},
      }, merge_changes(events))
    end)

    it("waits in the task between events, and keeps watching between calls", function()
      local w <close> = assert(fs.watch(dir))
      local writer = tulua.spawn(function()
        assert(fs.write_file(dir .. "/one", ""))
      end)
      assert.are.same({name = "one", rename = true}, next_event(w))
      writer:join()
      writer = tulua.spawn(function()
        assert(fs.mkdir(dir .. "/two"))
      end)
      assert.are.same({name = "two", rename = true}, next_event(w))
      writer:join()
    end)

    it("queues the events that come while no task waits, in order", function()
      local w <close> = assert(fs.watch(dir))
      for i = 1, 3 do
        assert(io.open(dir .. "/f" .. i, "w")):close() -- the task does not wait here
      end
      tulua.sleep(0) -- the loop polls: the events reach the queue
      for i = 1, 3 do
        assert.are.same({name = "f" .. i, rename = true}, w:next()) -- queued: no wait
      end
    end)

    it("watches a single file, naming it in its events", function()
      local path = dir .. "/file"
      assert(fs.write_file(path, "x"))
      local w <close> = assert(fs.watch(path))
      local events, reader = collect(w)
      tulua.spawn(fs.write_file, path, "yy"):join()
      assert.is_true(eventually(function() return #events > 0 end))
      w:close()
      assert.is_true(eventually(function() return reader:done() end))
      assert.are.same({{name = "file", change = true}}, merge_changes(events))
    end)

    it("is closed when a for loop over it is left with break", function()
      local f, s, c, w = fs.watch(dir)
      local guard <close> = timer.after(5, function() w:close() end) -- bounds the wait
      tulua.spawn(fs.write_file, dir .. "/a", "")
      local got
      for ev in f, s, c, w do
        got = ev
        if ev.name == "a" then break end
      end
      assert.is_true(guard:active()) -- the event came, not the guard
      assert.are.same({name = "a", rename = true}, got)
      assert.are.equal("watcher (closed)", tostring(w))
      assert.is_nil(w:next())
    end)

    it("is closed when a for loop over it is left by an error", function()
      local f, s, c, w = fs.watch(dir)
      local guard <close> = timer.after(5, function() w:close() end)
      tulua.spawn(fs.write_file, dir .. "/a", "")
      local ok, err = pcall(function()
        for _ in f, s, c, w do
          error("boom", 0)
        end
      end)
      assert.are.same({false, "boom"}, {ok, err})
      assert.is_true(guard:active())
      assert.are.equal("watcher (closed)", tostring(w))
    end)

    it("accepts recursive = false", function()
      local w <close> = assert(fs.watch(dir, {recursive = false}))
      assert.are.equal("watcher (" .. dir .. ")", tostring(w))
    end)

    it("returns nil, message and code for a missing path", function()
      local path = dir .. "/nope"
      assert.are.same({nil, path .. ": no such file or directory", "ENOENT"}, {fs.watch(path)})
    end)

    it("returns nil, message and code for a path through a file", function()
      assert(fs.write_file(dir .. "/file", ""))
      local path = dir .. "/file/x"
      assert.are.same({nil, path .. ": not a directory", "ENOTDIR"}, {fs.watch(path)})
    end)

    it("returns ENOSYS for recursive = true, which inotify cannot do", function()
      assert.are.same({nil, dir .. ": function not implemented", "ENOSYS"}, {fs.watch(dir, {recursive = true})})
    end)

    it("raises on bad arguments", function()
      assert.has_error(function() fs.watch() end, "bad argument #1 to 'watch' (string expected, got no value)")
      assert.has_error(function() fs.watch(dir .. "\0/x") end, "bad argument #1 to 'watch' (path contains a zero byte)")
      assert.has_error(function() fs.watch(dir, {recursve = true}) end,
        "bad argument #2 to 'watch' (unknown option 'recursve')")
      assert.has_error(function() fs.watch(dir, "r") end, "bad argument #2 to 'watch' (table expected, got string)")
      local w <close> = assert(fs.watch(dir))
      assert.has_error(function() w.next(42) end, "bad argument #1 to 'next' (tulua.watcher expected, got number)")
      assert.has_error(function() w.close({}) end, "bad argument #1 to 'close' (tulua.watcher expected, got table)")
    end)

    it("raises when a second task waits on the same watcher", function()
      local w = assert(fs.watch(dir))
      local t = tulua.spawn(w.next, w)
      tulua.sleep(0)
      assert.are.equal("waiting", t:status())
      assert.has_error(function() w:next() end, "attempt to use a watcher in two tasks at once")
      w:close()
      assert.are.same({n = 1, nil}, table.pack(t:join()))
    end)

    it("raises when waiting where Lua cannot yield", function()
      local w <close> = assert(fs.watch(dir))
      assert.has_error(function()
        table.sort({1, 2}, function()
          w:next()
          return false
        end)
      end, "attempt to wait in 'fs.watch' inside a function called from C that cannot yield "
        .. "(such as a 'table.sort' comparator or a 'string.gsub' callback)")
    end)

    describe("closed", function()
      it("returns nil from next, ends a for loop at once and closes again silently", function()
        local w = assert(fs.watch(dir))
        w:close()
        assert.are.equal("watcher (closed)", tostring(w))
        assert.are.same({n = 1, nil}, table.pack(w:next()))
        local n = 0
        for _ in w do
          n = n + 1
        end
        assert.are.equal(0, n)
        w:close()
        assert.are.equal("watcher (closed)", tostring(w))
      end)

      it("by another task wakes the task waiting in next with nil", function()
        local w = assert(fs.watch(dir))
        local t = tulua.spawn(w.next, w)
        tulua.sleep(0)
        assert.are.equal("waiting", t:status())
        tulua.spawn(w.close, w):join()
        assert.is_true(eventually(function() return t:done() end))
        assert.are.same({n = 1, nil}, table.pack(t:join()))
      end)

      it("after an event woke the waiting task, still gives that task nil", function()
        local w = assert(fs.watch(dir))
        local t = tulua.spawn(w.next, w)
        tulua.sleep(0)
        assert(io.open(dir .. "/a", "w")):close()
        tulua.sleep(0) -- the poll wakes t; its turn comes after ours
        w:close()
        assert.is_true(eventually(function() return t:done() end))
        assert.are.same({n = 1, nil}, table.pack(t:join()))
      end)

      it("drops the events still queued", function()
        local w = assert(fs.watch(dir))
        assert(io.open(dir .. "/a", "w")):close()
        tulua.sleep(0)
        w:close()
        assert.is_nil(w:next())
      end)
    end)

    describe("in a task that is cancelled while it waits", function()
      it("ends the task with the cancellation error and leaves the watcher usable", function()
        local w <close> = assert(fs.watch(dir))
        local t = tulua.spawn(w.next, w)
        tulua.sleep(0)
        assert.are.equal("waiting", t:status())
        assert.is_true(t:cancel())
        local ok, err = pcall(t.join, t)
        assert.is_false(ok)
        assert.are.equal("ECANCELED", err.code)
        assert.is_true(t:cancelled())
        tulua.spawn(fs.write_file, dir .. "/after", "")
        assert.are.same({name = "after", rename = true}, next_event(w))
      end)
    end)

    describe("overflow", function()
      it("drops events past 1024 queued ones and reports them as one overflow event", function()
        local w <close> = assert(fs.watch(dir))
        local events = collect(w)
        for i = 1, 1100 do -- while the task runs, no event is read
          assert(io.open(dir .. "/f" .. i, "w")):close()
        end
        assert.is_true(eventually(function() return #events >= 1025 end))
        for i = 1, 1024 do
          assert.are.same({name = "f" .. i, rename = true}, events[i])
        end
        assert.are.same({overflow = true}, events[1025])
        tulua.spawn(fs.write_file, dir .. "/late", "")
        assert.is_true(eventually(function() return #events >= 1026 end))
        assert.are.same({name = "late", rename = true}, events[1026])
        w:close() -- before the removal of 1101 files
      end)
    end)

    describe("and garbage collection", function()
      it("closes a watcher nobody refers to, active or not", function()
        local before = inotify_watches()
        local function leak()
          assert(fs.watch(dir))
        end
        -- no collection may run before the count: counting allocates
        collectgarbage("stop")
        leak()
        local during = inotify_watches()
        collectgarbage("restart")
        assert.are.equal(before + 1, during)
        collectgarbage()
        collectgarbage()
        assert.are.equal(before, inotify_watches()) -- uv_close stops it at once
      end)

      it("keeps a watcher that a task waits on", function()
        local got
        local t = tulua.spawn(function()
          for ev in assert(fs.watch(dir)) do -- nothing else refers to it
            got = ev
            if ev.name == "a" then break end
          end
        end)
        tulua.sleep(0)
        assert.are.equal("waiting", t:status())
        collectgarbage()
        collectgarbage()
        tulua.spawn(fs.write_file, dir .. "/a", "")
        assert.is_true(eventually(function() return t:done() end))
        t:join()
        assert.are.same({name = "a", rename = true}, got)
      end)
    end)

    describe("and the process", function()
      it("lives while a task waits on a watcher, not for a watcher nobody waits on", function()
        local out, ready = os.tmpname(), os.tmpname()
        os.remove(ready)
        -- the fixture must be watching when x appears (it makes ready
        -- then), and exit by itself
        local _, _, status = os.execute(string.format(
          "(i=0; while [ ! -e %s ] && [ $i -lt 400 ]; do sleep 0.05; i=$((i+1)); done; touch %s/x) & "
            .. "timeout 30 %s %s %s %s > %s; st=$?; wait; exit $st",
          support.shell_quote(ready), support.shell_quote(dir), support.shell_quote(support.TULUA),
          support.shell_quote(support.FIXTURES .. "/watch_wait.lua"), support.shell_quote(dir),
          support.shell_quote(ready), support.shell_quote(out)))
        local stdout = support.read_file(out)
        os.remove(out)
        os.remove(ready)
        assert.are.same({0, "x\nwatcher (" .. dir .. ")\n"}, {status, stdout})
      end)
    end)
  end)
end)
