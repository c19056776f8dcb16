local tulua = require("tulua")
local fs = require("tulua.fs")
package.path = (debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or ".") .. "/?.lua;" .. package.path
local support = require("support")
local remove_tree = support.remove_tree
local fd_count = support.fd_count
local eventually = support.eventually

local function octal(s)
  return tonumber(s, 8)
end

local function make_fifo(path)
  assert(os.execute("mkfifo " .. path))
  return path
end

-- Writes to a FIFO that has a reader, from the loop's thread: the thread
-- pool may be full of requests that wait for these bytes.
local function feed_fifo(path, bytes)
  local w = assert(io.open(path, "w"))
  w:write(bytes)
  w:close()
end

local function all_bytes()
  local t = {}
  for i = 0, 255 do
    t[#t + 1] = string.char(i)
  end
  return table.concat(t)
end

describe("tulua.fs", function()
  local dir

  before_each(function()
    dir = assert(fs.mkdtemp("/tmp/tulua-fs-spec-XXXXXX"))
  end)

  after_each(function()
    remove_tree(dir)
  end)

  describe("in a script that loads only tulua.fs", function()
    it("returns nil, message and EPIPE for a write to a FIFO whose reader left", function()
      local fifo = make_fifo(dir .. "/fifo")
      local err = dir .. "/err"
      local _, how, status = os.execute(string.format("cd %s && %s fs_fifo_epipe.lua %s 2> %s",
        support.shell_quote(support.FIXTURES), support.shell_quote(support.TULUA),
        support.shell_quote(fifo), support.shell_quote(err)))
      assert.are.same({"exit", 0}, {how, status})
      assert.are.equal("nil\t" .. fifo .. ": broken pipe\tEPIPE\n", support.read_file(err))
    end)
  end)

  describe("options tables", function()
    it("raise for an unknown key", function()
      assert.has_error(function() fs.mkdir(dir .. "/a", {parent = true}) end,
        "bad argument #2 to 'mkdir' (unknown option 'parent')")
      assert.has_error(function() fs.copyfile(dir .. "/a", dir .. "/b", {exclusive = true}) end,
        "bad argument #3 to 'copyfile' (unknown option 'exclusive')")
      assert.has_error(function() fs.write_file(dir .. "/a", "x", {atomically = true}) end,
        "bad argument #3 to 'write_file' (unknown option 'atomically')")
    end)
  end)

  describe("paths with a zero byte", function()
    -- the kernel would read such a path up to the zero: "secret\0.txt"
    -- would name "secret"
    local function refused(name, argn, ...)
      -- called by pcall, the function is named by its place in
      -- package.loaded
      local ok, err = pcall(fs[name], ...)
      assert.is_false(ok)
      assert.are.equal("bad argument #" .. argn .. " to 'tulua.fs." .. name
        .. "' (path contains a zero byte)", err)
    end

    it("are refused by every function instead of cut at the zero", function()
      local secret = dir .. "/secret"
      assert(fs.write_file(secret, "s"))
      local bad = secret .. "\0.txt"
      for _, name in ipairs({"stat", "lstat", "unlink", "mkdir", "rmdir", "scandir",
          "readdir", "realpath", "readlink", "access", "read_file", "open", "lines"}) do
        refused(name, 1, bad)
      end
      refused("mkdtemp", 1, dir .. "/\0XXXXXX")
      refused("chmod", 1, bad, 420)
      refused("utime", 1, bad, 0, 0)
      refused("write_file", 1, bad, "x")
      for _, name in ipairs({"rename", "copyfile", "symlink"}) do
        refused(name, 1, bad, dir .. "/b")
        refused(name, 2, dir .. "/b", bad)
      end
      assert.are.equal("s", fs.read_file(secret))
    end)

    it("raise with the function's name, and in access's mode and open's flags too", function()
      assert.has_error(function() fs.read_file(dir .. "/secret\0.txt") end,
        "bad argument #1 to 'read_file' (path contains a zero byte)")
      assert.has_error(function() fs.access(dir, "r\0w") end,
        "bad argument #2 to 'access' (mode contains a zero byte)")
      assert.has_error(function() fs.open(dir .. "/a", "w\0x") end,
        "bad argument #2 to 'open' (flags contain a zero byte)")
    end)
  end)

  describe("mkdtemp", function()
    it("creates a new private directory from the template", function()
      assert.is_truthy(dir:match("^/tmp/tulua%-fs%-spec%-%w%w%w%w%w%w$"))
      local st = assert(fs.stat(dir))
      assert.are.equal("directory", st.type)
      assert.are.equal(octal("700"), st.perm)
    end)

    it("returns nil, message and code for a missing parent", function()
      local tpl = dir .. "/no/XXXXXX"
      assert.are.same({nil, tpl .. ": no such file or directory", "ENOENT"}, {fs.mkdtemp(tpl)})
    end)

    it("raises on a template that does not end in XXXXXX", function()
      assert.has_error(function() fs.mkdtemp("/tmp/x") end,
        "bad argument #1 to 'mkdtemp' (template must end in 'XXXXXX')")
    end)
  end)

  describe("stat", function()
    it("describes a file", function()
      assert(fs.write_file(dir .. "/a", "hello"))
      local st = assert(fs.stat(dir .. "/a"))
      local keys = {}
      for k in pairs(st) do
        keys[#keys + 1] = k
      end
      table.sort(keys)
      assert.are.same({"atime", "birthtime", "blksize", "blocks", "ctime", "dev", "gid", "ino", "mode", "mtime",
        "nlink", "perm", "rdev", "size", "type", "uid"}, keys)
      assert.are.equal("file", st.type)
      assert.are.equal(5, st.size)
      assert.are.equal(1, st.nlink)
      assert.are.equal(octal("100000"), st.mode & octal("170000"))
      assert.are.equal(st.mode & octal("7777"), st.perm)
      assert.is_true(math.type(st.ino) == "integer" and st.ino > 0)
      assert.is_true(math.type(st.mtime) == "float")
      assert.is_true(math.abs(st.mtime - os.time()) < 60)
      assert.is_true(st.blksize > 0)
    end)

    it("describes a directory", function()
      assert.are.equal("directory", assert(fs.stat(dir)).type)
    end)

    it("follows a symbolic link", function()
      assert(fs.write_file(dir .. "/a", "x"))
      assert(fs.symlink("a", dir .. "/l"))
      assert.are.equal("file", assert(fs.stat(dir .. "/l")).type)
    end)

    it("returns nil, message and code for a missing path", function()
      assert.are.same({nil, dir .. "/nope: no such file or directory", "ENOENT"}, {fs.stat(dir .. "/nope")})
    end)

    it("returns ENOTDIR for a path through a file", function()
      assert(fs.write_file(dir .. "/a", "x"))
      assert.are.same({nil, dir .. "/a/b: not a directory", "ENOTDIR"}, {fs.stat(dir .. "/a/b")})
    end)

    it("raises on a path that is not a string", function()
      assert.has_error(function() fs.stat({}) end, "bad argument #1 to 'stat' (string expected, got table)")
    end)

    it("raises when called where no wait is possible", function()
      assert.has_error(function()
        table.sort({1, 2}, function()
          fs.stat(dir)
          return false
        end)
      end, "attempt to wait in 'fs.stat' inside a function called from C that cannot yield "
        .. "(such as a 'table.sort' comparator or a 'string.gsub' callback)")
    end)
  end)

  describe("lstat", function()
    it("describes a symbolic link itself", function()
      assert(fs.symlink("nowhere", dir .. "/l"))
      local st = assert(fs.lstat(dir .. "/l"))
      assert.are.equal("link", st.type)
      assert.are.equal(#"nowhere", st.size)
    end)

    it("returns nil, message and code for a missing path", function()
      assert.are.same({nil, dir .. "/nope: no such file or directory", "ENOENT"}, {fs.lstat(dir .. "/nope")})
    end)
  end)

  describe("rename", function()
    it("moves a file, replacing the target", function()
      assert(fs.write_file(dir .. "/a", "new"))
      assert(fs.write_file(dir .. "/b", "old"))
      assert.is_true(fs.rename(dir .. "/a", dir .. "/b"))
      assert.are.equal("new", fs.read_file(dir .. "/b"))
      assert.are.same({"b"}, fs.readdir(dir))
    end)

    it("names both paths when it fails", function()
      local a, b = dir .. "/a", dir .. "/b"
      assert.are.same({nil, a .. " -> " .. b .. ": no such file or directory", "ENOENT"}, {fs.rename(a, b)})
    end)
  end)

  describe("unlink", function()
    it("removes a file", function()
      assert(fs.write_file(dir .. "/a", ""))
      assert.is_true(fs.unlink(dir .. "/a"))
      assert.are.same({}, fs.readdir(dir))
    end)

    it("returns nil, message and code for a missing path", function()
      assert.are.same({nil, dir .. "/a: no such file or directory", "ENOENT"}, {fs.unlink(dir .. "/a")})
    end)

    it("returns EISDIR for a directory", function()
      assert.are.same({nil, dir .. ": illegal operation on a directory", "EISDIR"}, {fs.unlink(dir)})
    end)
  end)

  describe("mkdir", function()
    it("creates a directory with a mode", function()
      assert.is_true(fs.mkdir(dir .. "/d", octal("700")))
      local st = assert(fs.stat(dir .. "/d"))
      assert.are.equal("directory", st.type)
      assert.are.equal(octal("700"), st.perm)
    end)

    it("returns EEXIST for an existing path", function()
      assert.are.same({nil, dir .. ": file already exists", "EEXIST"}, {fs.mkdir(dir)})
    end)

    it("returns ENOENT for a missing parent", function()
      assert.are.same({nil, dir .. "/a/b: no such file or directory", "ENOENT"}, {fs.mkdir(dir .. "/a/b")})
    end)

    it("creates missing parents with the parents option", function()
      assert.is_true(fs.mkdir(dir .. "/a/b//c/", {parents = true, mode = octal("750")}))
      assert.are.equal(octal("750"), assert(fs.stat(dir .. "/a/b/c")).perm)
      assert.is_true(fs.mkdir(dir .. "/a/b", {parents = true}))
    end)

    it("returns ENOTDIR with the parents option when a parent is a file", function()
      assert(fs.write_file(dir .. "/f", ""))
      assert.are.same({nil, dir .. "/f/a/b: not a directory", "ENOTDIR"}, {fs.mkdir(dir .. "/f/a/b", {parents = true})})
    end)

    it("returns EEXIST with the parents option when the path is a file", function()
      assert(fs.write_file(dir .. "/f", ""))
      assert.are.same({nil, dir .. "/f: file already exists", "EEXIST"}, {fs.mkdir(dir .. "/f", {parents = true})})
    end)

    it("raises on a bad mode", function()
      assert.has_error(function() fs.mkdir(dir .. "/d", "rwx") end,
        "bad argument #2 to 'mkdir' (number expected, got string)")
      assert.has_error(function() fs.mkdir(dir .. "/d", octal("10000")) end,
        "bad argument #2 to 'mkdir' (invalid mode)")
      assert.has_error(function() fs.mkdir(dir .. "/d", {mode = "x"}) end,
        "bad argument #2 to 'mkdir' (field 'mode' must be an integer)")
    end)
  end)

  describe("rmdir", function()
    it("removes an empty directory", function()
      assert(fs.mkdir(dir .. "/d"))
      assert.is_true(fs.rmdir(dir .. "/d"))
      assert.is_nil(fs.stat(dir .. "/d"))
    end)

    it("returns ENOTEMPTY for a directory with entries", function()
      assert(fs.mkdir(dir .. "/d"))
      assert.are.same({nil, dir .. ": directory not empty", "ENOTEMPTY"}, {fs.rmdir(dir)})
    end)

    it("returns ENOTDIR for a file", function()
      assert(fs.write_file(dir .. "/f", ""))
      assert.are.same({nil, dir .. "/f: not a directory", "ENOTDIR"}, {fs.rmdir(dir .. "/f")})
    end)

    it("returns nil, message and code for a missing path", function()
      assert.are.same({nil, dir .. "/d: no such file or directory", "ENOENT"}, {fs.rmdir(dir .. "/d")})
    end)
  end)

  describe("scandir", function()
    it("iterates over names and types in byte order", function()
      assert(fs.write_file(dir .. "/b", ""))
      assert(fs.mkdir(dir .. "/a"))
      assert(fs.symlink("b", dir .. "/c"))
      make_fifo(dir .. "/d")
      local seen = {}
      for name, type in assert(fs.scandir(dir)) do
        seen[#seen + 1] = name .. "=" .. type
      end
      assert.are.same({"a=directory", "b=file", "c=link", "d=fifo"}, seen)
    end)

    it("can be left early", function()
      assert(fs.write_file(dir .. "/a", ""))
      assert(fs.write_file(dir .. "/b", ""))
      local seen = {}
      for name in assert(fs.scandir(dir)) do
        seen[#seen + 1] = name
        if name == "a" then break end
      end
      assert.are.same({"a"}, seen)
    end)

    it("returns nil, message and code for a missing path", function()
      assert.are.same({nil, dir .. "/d: no such file or directory", "ENOENT"}, {fs.scandir(dir .. "/d")})
    end)

    it("returns ENOTDIR for a file", function()
      assert(fs.write_file(dir .. "/f", ""))
      assert.are.same({nil, dir .. "/f: not a directory", "ENOTDIR"}, {fs.scandir(dir .. "/f")})
    end)
  end)

  describe("readdir", function()
    it("lists the names in byte order", function()
      for _, name in ipairs({"b", "a", "C"}) do
        assert(fs.write_file(dir .. "/" .. name, ""))
      end
      assert.are.same({"C", "a", "b"}, fs.readdir(dir))
    end)

    it("returns nil, message and code for a missing path", function()
      assert.are.same({nil, dir .. "/d: no such file or directory", "ENOENT"}, {fs.readdir(dir .. "/d")})
    end)
  end)

  describe("realpath", function()
    it("resolves links, '.' and '..'", function()
      local real = assert(fs.realpath(dir))
      assert(fs.mkdir(dir .. "/d"))
      assert(fs.symlink("d", dir .. "/l"))
      assert.are.equal(real .. "/d", fs.realpath(dir .. "/./l/../l"))
    end)

    it("returns nil, message and code for a missing path", function()
      assert.are.same({nil, dir .. "/x: no such file or directory", "ENOENT"}, {fs.realpath(dir .. "/x")})
    end)
  end)

  describe("copyfile", function()
    it("copies contents and mode", function()
      assert(fs.write_file(dir .. "/a", all_bytes(), {mode = octal("640")}))
      assert.is_true(fs.copyfile(dir .. "/a", dir .. "/b"))
      assert.are.equal(all_bytes(), fs.read_file(dir .. "/b"))
      assert.are.equal(octal("640"), assert(fs.stat(dir .. "/b")).perm)
    end)

    it("returns EEXIST with the excl option when the target exists", function()
      local a, b = dir .. "/a", dir .. "/b"
      assert(fs.write_file(a, "1"))
      assert(fs.write_file(b, "2"))
      assert.are.same({nil, a .. " -> " .. b .. ": file already exists", "EEXIST"}, {fs.copyfile(a, b, {excl = true})})
      assert.are.equal("2", fs.read_file(b))
    end)

    it("names both paths when the source is missing", function()
      local a, b = dir .. "/a", dir .. "/b"
      assert.are.same({nil, a .. " -> " .. b .. ": no such file or directory", "ENOENT"}, {fs.copyfile(a, b)})
    end)

    it("raises on options that are not a table", function()
      assert.has_error(function() fs.copyfile("a", "b", true) end,
        "bad argument #3 to 'copyfile' (table expected, got boolean)")
    end)
  end)

  describe("symlink and readlink", function()
    it("create a link and read its target", function()
      assert.is_true(fs.symlink("some/target", dir .. "/l"))
      assert.are.equal("some/target", fs.readlink(dir .. "/l"))
    end)

    it("symlink names both paths when the link exists", function()
      local l = dir .. "/l"
      assert(fs.symlink("x", l))
      assert.are.same({nil, "y -> " .. l .. ": file already exists", "EEXIST"}, {fs.symlink("y", l)})
    end)

    it("readlink returns EINVAL for a path that is no link", function()
      assert.are.same({nil, dir .. ": invalid argument", "EINVAL"}, {fs.readlink(dir)})
    end)

    it("readlink returns nil, message and code for a missing path", function()
      assert.are.same({nil, dir .. "/l: no such file or directory", "ENOENT"}, {fs.readlink(dir .. "/l")})
    end)
  end)

  describe("chmod", function()
    it("sets the permission bits", function()
      assert(fs.write_file(dir .. "/a", ""))
      assert.is_true(fs.chmod(dir .. "/a", octal("4751")))
      assert.are.equal(octal("4751"), assert(fs.stat(dir .. "/a")).perm)
    end)

    it("returns nil, message and code for a missing path", function()
      assert.are.same({nil, dir .. "/a: no such file or directory", "ENOENT"}, {fs.chmod(dir .. "/a", 0)})
    end)

    it("raises on a bad mode", function()
      assert.has_error(function() fs.chmod(dir, -1) end, "bad argument #2 to 'chmod' (invalid mode)")
      assert.has_error(function() fs.chmod(dir) end, "bad argument #2 to 'chmod' (number expected, got no value)")
    end)
  end)

  describe("utime", function()
    it("sets access and modification times", function()
      assert(fs.write_file(dir .. "/a", ""))
      assert.is_true(fs.utime(dir .. "/a", 1000000000.5, 1200000000.25))
      local st = assert(fs.stat(dir .. "/a"))
      assert.are.equal(1000000000.5, st.atime)
      assert.are.equal(1200000000.25, st.mtime)
    end)

    it("defaults both times to now", function()
      assert(fs.write_file(dir .. "/a", ""))
      assert(fs.utime(dir .. "/a", 0, 0))
      assert.is_true(fs.utime(dir .. "/a"))
      local st = assert(fs.stat(dir .. "/a"))
      assert.is_true(math.abs(st.atime - os.time()) < 60)
      assert.is_true(math.abs(st.mtime - os.time()) < 60)
    end)

    it("returns nil, message and code for a missing path", function()
      assert.are.same({nil, dir .. "/a: no such file or directory", "ENOENT"}, {fs.utime(dir .. "/a")})
    end)
  end)

  describe("access", function()
    -- The specs run as root, who may read and write anything: no EACCES.
    it("returns true for an existing path and a mode", function()
      assert.is_true(fs.access(dir))
      assert.is_true(fs.access(dir, "rwx"))
    end)

    it("returns nil, message and code for a missing path", function()
      assert.are.same({nil, dir .. "/a: no such file or directory", "ENOENT"}, {fs.access(dir .. "/a", "r")})
    end)

    it("raises on a bad mode", function()
      assert.has_error(function() fs.access(dir, "rq") end, "bad argument #2 to 'access' (invalid mode 'rq')")
    end)
  end)

  describe("read_file", function()
    it("returns the whole contents, binary-safe", function()
      local data = all_bytes():rep(1000) .. "\0end"
      assert(fs.write_file(dir .. "/a", data))
      assert.are.equal(data, fs.read_file(dir .. "/a"))
    end)

    it("returns an empty string for an empty file", function()
      assert(fs.write_file(dir .. "/a", ""))
      assert.are.equal("", fs.read_file(dir .. "/a"))
    end)

    it("reads files whose size stat does not know", function()
      assert.is_truthy(fs.read_file("/proc/self/status"):find("\nPid:"))
    end)

    it("returns EISDIR for a directory", function()
      assert.are.same({nil, dir .. ": illegal operation on a directory", "EISDIR"}, {fs.read_file(dir)})
    end)

    it("returns nil, message and code for a missing path", function()
      assert.are.same({nil, dir .. "/a: no such file or directory", "ENOENT"}, {fs.read_file(dir .. "/a")})
    end)
  end)

  describe("write_file", function()
    it("creates a file with a mode and replaces its contents", function()
      assert.is_true(fs.write_file(dir .. "/a", "long contents", {mode = octal("600")}))
      assert.are.equal(octal("600"), assert(fs.stat(dir .. "/a")).perm)
      assert.is_true(fs.write_file(dir .. "/a", "short"))
      assert.are.equal("short", fs.read_file(dir .. "/a"))
    end)

    it("replaces a file atomically, keeping its permissions", function()
      assert(fs.write_file(dir .. "/a", "old", {mode = octal("640")}))
      local before = assert(fs.stat(dir .. "/a"))
      assert.is_true(fs.write_file(dir .. "/a", all_bytes(), {atomic = true}))
      local after = assert(fs.stat(dir .. "/a"))
      assert.are.equal(all_bytes(), fs.read_file(dir .. "/a"))
      assert.are.equal(octal("640"), after.perm)
      assert.are_not.equal(before.ino, after.ino)
      assert.are.same({"a"}, fs.readdir(dir))
    end)

    it("creates a new file atomically", function()
      assert.is_true(fs.write_file(dir .. "/a", "x", {atomic = true, mode = octal("600")}))
      assert.are.equal("x", fs.read_file(dir .. "/a"))
      assert.are.equal(octal("600"), assert(fs.stat(dir .. "/a")).perm)
      assert.are.same({"a"}, fs.readdir(dir))
    end)

    it("returns nil, message and code for a missing directory", function()
      local p = dir .. "/d/a"
      assert.are.same({nil, p .. ": no such file or directory", "ENOENT"}, {fs.write_file(p, "x")})
      assert.are.same({nil, p .. ": no such file or directory", "ENOENT"}, {fs.write_file(p, "x", {atomic = true})})
    end)

    it("returns EISDIR for a directory", function()
      assert.are.same({nil, dir .. ": illegal operation on a directory", "EISDIR"}, {fs.write_file(dir, "x")})
    end)

    it("raises on bad arguments", function()
      assert.has_error(function() fs.write_file(dir .. "/a", {}) end,
        "bad argument #2 to 'write_file' (string expected, got table)")
      assert.has_error(function() fs.write_file(dir .. "/a", "", "atomic") end,
        "bad argument #3 to 'write_file' (table expected, got string)")
    end)
  end)

  describe("open", function()
    it("opens with fopen's flags", function()
      local p = dir .. "/a"
      local f = assert(fs.open(p, "w"))
      assert.are.equal(3, f:write("abc"))
      assert(f:close())
      f = assert(fs.open(p, "a"))
      assert(f:write("def"))
      assert(f:write("!", 0)) -- append mode: the offset is ignored
      assert(f:close())
      f = assert(fs.open(p, "r+b"))
      assert(f:write("A"))
      assert.are.equal("bcdef!", f:read(100))
      assert(f:close())
      f = assert(fs.open(p))
      assert.are.equal("Abcdef!", f:read(100))
      assert(f:close())
      f = assert(fs.open(p, "w+"))
      assert.is_nil(f:read(100))
      assert(f:close())
    end)

    it("creates a new file with a mode", function()
      local f = assert(fs.open(dir .. "/a", "wx", octal("600")))
      assert(f:close())
      assert.are.equal(octal("600"), assert(fs.stat(dir .. "/a")).perm)
    end)

    it("returns nil, message and code for a missing path", function()
      assert.are.same({nil, dir .. "/a: no such file or directory", "ENOENT"}, {fs.open(dir .. "/a")})
    end)

    it("returns EEXIST for 'wx' on an existing file", function()
      assert(fs.write_file(dir .. "/a", ""))
      assert.are.same({nil, dir .. "/a: file already exists", "EEXIST"}, {fs.open(dir .. "/a", "wx")})
    end)

    it("returns EISDIR for a directory opened for writing", function()
      assert.are.same({nil, dir .. ": illegal operation on a directory", "EISDIR"}, {fs.open(dir, "r+")})
    end)

    it("raises on bad flags or mode", function()
      for _, flags in ipairs({"", "z", "rx", "r++", "wbb", "+"}) do
        assert.has_error(function() fs.open(dir .. "/a", flags) end,
          "bad argument #2 to 'open' (invalid flags '" .. flags .. "')")
      end
      assert.has_error(function() fs.open(dir .. "/a", "w", -1) end, "bad argument #3 to 'open' (invalid mode)")
      assert.has_error(function() fs.open(nil) end, "bad argument #1 to 'open' (string expected, got nil)")
    end)
  end)

  describe("File", function()
    local path, f

    before_each(function()
      path = dir .. "/file"
      f = assert(fs.open(path, "w+"))
    end)

    after_each(function()
      f:close()
    end)

    it("reads and writes at the file position", function()
      assert.are.equal(3, f:write("abc"))
      assert.are.equal(3, f:write("def"))
      assert.are.equal(6, f:seek())
      assert.are.equal(0, f:seek("set"))
      assert.are.equal("abcd", f:read(4))
      assert.are.equal("ef", f:read(10))
      assert.is_nil(f:read(10))
      assert.are.equal("", f:read(0))
    end)

    it("reads and writes at an offset without moving the position", function()
      assert(f:write("abcdef"))
      assert.are.equal(2, f:write("XY", 1))
      assert.are.equal("XYd", f:read(3, 1))
      assert.are.equal(6, f:seek())
      assert.is_nil(f:read(1, 6))
    end)

    it("is binary-safe", function()
      local data = all_bytes() .. "\0\0" .. all_bytes()
      assert(f:write(data))
      assert.are.equal(data, f:read(#data, 0))
    end)

    it("reads and writes at offsets beyond 4 GiB", function()
      local five = 5 * 1024 * 1024 * 1024
      assert.are.equal(1, f:write("x", five)) -- a sparse file
      assert.are.equal(five + 1, assert(f:stat()).size)
      assert.are.equal("x", f:read(1, five))
      assert.are.equal("\0", f:read(1, 4 * 1024 * 1024 * 1024))
      assert.are.equal(five + 1, f:seek("end"))
      assert.are.equal(five - 1, f:seek("cur", -2))
      assert.are.equal("\0x", f:read(2))
    end)

    it("seeks like Lua's file:seek", function()
      assert(f:write("0123456789"))
      assert.are.equal(3, f:seek("set", 3))
      assert.are.equal(5, f:seek("cur", 2))
      assert.are.equal(8, f:seek("end", -2))
      assert.are.equal("89", f:read(2))
    end)

    it("returns EINVAL for a seek before the start", function()
      assert.are.same({nil, path .. ": invalid argument", "EINVAL"}, {f:seek("set", -1)})
    end)

    it("describes itself with stat", function()
      assert(f:write("hello"))
      local st = assert(f:stat())
      assert.are.equal("file", st.type)
      assert.are.equal(5, st.size)
      assert.are.equal(assert(fs.stat(path)).ino, st.ino)
    end)

    it("syncs and truncates", function()
      assert(f:write("hello"))
      assert.is_true(f:sync())
      assert.is_true(f:sync(true))
      assert.is_true(f:truncate(2))
      assert.are.equal("he", fs.read_file(path))
      assert.is_true(f:truncate(4))
      assert.are.equal("he\0\0", fs.read_file(path))
    end)

    it("returns EBADF for a read on a file opened for writing", function()
      local w = assert(fs.open(path, "w"))
      assert.are.same({nil, path .. ": bad file descriptor", "EBADF"}, {w:read(1)})
      assert(w:close())
      local r = assert(fs.open(path, "r"))
      assert.are.same({nil, path .. ": bad file descriptor", "EBADF"}, {r:write("x")})
      assert(r:close())
    end)

    it("raises on bad arguments", function()
      assert.has_error(function() f:read(-1) end, "bad argument #1 to 'read' (negative size)")
      assert.has_error(function() f:read() end, "bad argument #1 to 'read' (number expected, got no value)")
      assert.has_error(function() f:read(1, -1) end, "bad argument #2 to 'read' (negative offset)")
      assert.has_error(function() f:write({}) end, "bad argument #1 to 'write' (string expected, got table)")
      assert.has_error(function() f:write("x", -5) end, "bad argument #2 to 'write' (negative offset)")
      assert.has_error(function() f:truncate(-1) end, "bad argument #1 to 'truncate' (negative size)")
      assert.has_error(function() f:seek("middle") end, "bad argument #1 to 'seek' (invalid option 'middle')")
      assert.has_error(function() f.read(nil, 1) end, "bad argument #1 to 'read' (tulua.file expected, got nil)")
    end)

    it("raises on use after close, and closes only once", function()
      assert.is_true(f:close())
      assert.is_true(f:close())
      assert.are.equal("file (closed)", tostring(f))
      for _, call in ipairs({
        function() f:read(1) end,
        function() f:write("x") end,
        function() f:stat() end,
        function() f:sync() end,
        function() f:truncate(0) end,
        function() f:seek() end,
      }) do
        assert.has_error(call, "attempt to use a closed file")
      end
    end)

    it("is closed by a to-be-closed variable", function()
      local g
      do
        local h <close> = assert(fs.open(path))
        g = h
        assert.are.equal("file (" .. path .. ")", tostring(g))
      end
      assert.are.equal("file (closed)", tostring(g))
    end)

    it("closes a file that is collected without being closed", function()
      local before = fd_count()
      local function leak()
        assert(fs.open(path))
      end
      leak()
      leak()
      assert.are.equal(before + 2, fd_count())
      collectgarbage()
      collectgarbage()
      assert.is_true(eventually(function() return fd_count() == before end))
    end)

    it("serves concurrent reads from several tasks", function()
      local chunk = 4096
      local parts = {}
      for i = 1, 16 do
        parts[i] = string.rep(string.char(64 + i), chunk)
      end
      assert(f:write(table.concat(parts)))
      local tasks = {}
      for i = 16, 1, -1 do
        tasks[#tasks + 1] = tulua.spawn(function() return i, f:read(chunk, (i - 1) * chunk) end)
      end
      for _, t in ipairs(tasks) do
        local i, data = t:join()
        assert.are.equal(parts[i], data)
      end
    end)

    describe("in a task that is cancelled while it waits", function()
      local fifo, pipe

      before_each(function()
        fifo = make_fifo(dir .. "/fifo")
        pipe = assert(fs.open(fifo, "r+")) -- a reader and a writer: never blocks
      end)

      after_each(function()
        pipe:close()
      end)

      it("ends the task with the cancellation error while the read runs", function()
        local t = tulua.spawn(function() return pipe:read(1) end)
        tulua.sleep(0)
        assert.are.equal("waiting", t:status())
        assert.is_true(t:cancel())
        local ok, err = pcall(t.join, t)
        assert.is_false(ok)
        assert.are.equal("ECANCELED", err.code)
        assert.is_true(t:cancelled())
        feed_fifo(fifo, "x") -- the read ends; its callback frees it
        assert.is_true(pipe:close()) -- waits for that read
      end)

      it("ends the task when its request was still queued", function()
        local n = tonumber(os.getenv("UV_THREADPOOL_SIZE")) or 4
        local readers = {}
        for i = 1, n do
          readers[i] = tulua.spawn(function() return pipe:read(1) end)
        end
        tulua.sleep(0) -- every pool thread now waits in a read
        local t = tulua.spawn(function() return fs.stat(dir) end)
        tulua.sleep(0)
        assert.is_true(t:cancel())
        assert.is_false(pcall(t.join, t))
        assert.is_true(t:cancelled())
        feed_fifo(fifo, string.rep("x", n))
        for i = 1, n do
          assert.are.equal("x", readers[i]:join())
        end
      end)

      it("closes the file an open got after its task was cancelled", function()
        local before = fd_count()
        local t = tulua.spawn(function() return fs.open(fifo, "w") end)
        tulua.sleep(0)
        assert.is_true(t:cancel())
        assert.is_false(pcall(t.join, t))
        -- that open did not block (pipe reads the FIFO) and got a descriptor
        assert.is_true(eventually(function() return fd_count() == before end))
      end)
    end)

    describe("closed by another task", function()
      it("makes a read in flight return 'file closed'", function()
        local fifo = make_fifo(dir .. "/fifo")
        local pipe = assert(fs.open(fifo, "r+"))
        local reader = tulua.spawn(function() return pipe:read(1) end)
        tulua.sleep(0)
        local closer = tulua.spawn(function() return pipe:close() end)
        tulua.sleep(0)
        assert.are.equal("waiting", closer:status()) -- for the read to end
        assert.has_error(function() pipe:read(1) end, "attempt to use a closed file")
        feed_fifo(fifo, "x")
        assert.are.same({nil, "file closed", "ECANCELED"}, {reader:join()})
        assert.is_true(closer:join())
      end)

      it("makes a queued request return 'file closed'", function()
        local fifo = make_fifo(dir .. "/fifo")
        local pipe = assert(fs.open(fifo, "r+"))
        local n = tonumber(os.getenv("UV_THREADPOOL_SIZE")) or 4
        local readers = {}
        for i = 1, n + 1 do -- the last one waits in the queue
          readers[i] = tulua.spawn(function() return pipe:read(1) end)
        end
        tulua.sleep(0)
        local closer = tulua.spawn(function() return pipe:close() end)
        tulua.sleep(0)
        feed_fifo(fifo, string.rep("x", n))
        for i = 1, n + 1 do
          assert.are.same({nil, "file closed", "ECANCELED"}, {readers[i]:join()})
        end
        assert.is_true(closer:join())
      end)
    end)
  end)

  describe("lines", function()
    local function collect(p)
      local t = {}
      for line in assert(fs.lines(p)) do
        t[#t + 1] = line
      end
      return t
    end

    it("iterates over lines without their newline", function()
      assert(fs.write_file(dir .. "/a", "one\n\ntwo\n"))
      assert.are.same({"one", "", "two"}, collect(dir .. "/a"))
    end)

    it("returns a last line without a newline", function()
      assert(fs.write_file(dir .. "/a", "one\ntwo"))
      assert.are.same({"one", "two"}, collect(dir .. "/a"))
    end)

    it("keeps a carriage return, as io.lines does", function()
      assert(fs.write_file(dir .. "/a", "one\r\ntwo\r\n"))
      assert.are.same({"one\r", "two\r"}, collect(dir .. "/a"))
    end)

    it("returns nothing for an empty file and one empty line for a newline", function()
      assert(fs.write_file(dir .. "/a", ""))
      assert.are.same({}, collect(dir .. "/a"))
      assert(fs.write_file(dir .. "/a", "\n"))
      assert.are.same({""}, collect(dir .. "/a"))
    end)

    it("reads lines across chunks, as io.lines does", function()
      local t = {}
      for i = 1, 20000 do
        t[i] = string.rep(string.char(97 + i % 26), i % 97) .. "\0" .. i
      end
      t[#t + 1] = string.rep("z", 200000) -- longer than a chunk
      assert(fs.write_file(dir .. "/a", table.concat(t, "\n") .. "\n"))
      local expected = {}
      for line in io.lines(dir .. "/a") do
        expected[#expected + 1] = line
      end
      assert.are.same(expected, collect(dir .. "/a"))
      assert.are.same(t, expected)
    end)

    it("closes the file at the end and when the loop is left", function()
      assert(fs.write_file(dir .. "/a", "1\n2\n"))
      local iter, _, _, file = assert(fs.lines(dir .. "/a"))
      assert.are.equal("file (" .. dir .. "/a)", tostring(file))
      assert.are.equal("1", iter())
      assert.are.equal("2", iter())
      assert.is_nil(iter())
      assert.are.equal("file (closed)", tostring(file))
      assert.is_nil(iter())
      iter, _, _, file = assert(fs.lines(dir .. "/a"))
      local seen = {}
      for line in iter, nil, nil, file do
        seen[#seen + 1] = line
        if line == "1" then break end
      end
      assert.are.same({"1"}, seen)
      assert.are.equal("file (closed)", tostring(file))
    end)

    it("works in a generator made with coroutine.wrap", function()
      assert(fs.write_file(dir .. "/a", "a\nb\nc"))
      local gen = coroutine.wrap(function()
        for line in assert(fs.lines(dir .. "/a")) do
          coroutine.yield(line:upper())
        end
        return "done"
      end)
      assert.are.same({"A", "B", "C", "done"}, {gen(), gen(), gen(), gen()})
    end)

    it("returns nil, message and code for a missing path", function()
      assert.are.same({nil, dir .. "/a: no such file or directory", "ENOENT"}, {fs.lines(dir .. "/a")})
    end)

    it("raises the read's failure", function()
      local iter = assert(fs.lines(dir))
      assert.has_error(iter, dir .. ": illegal operation on a directory")
    end)

    it("raises when two tasks use one iterator at once", function()
      assert(fs.write_file(dir .. "/a", "1\n2\n"))
      local iter = assert(fs.lines(dir .. "/a"))
      local t = tulua.spawn(iter)
      tulua.sleep(0)
      assert.has_error(iter, "attempt to iterate over lines in two tasks at once")
      assert.are.equal("1", t:join())
      assert.are.equal("2", iter())
    end)
  end)
end)
