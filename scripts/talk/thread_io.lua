-- Slide "ThreadPoolExecuter - I/Oバウンドの例" (ThreadPoolExecutor, an
-- I/O-bound example): three threads read six large files. The Python on the
-- slide:
--
--   from concurrent.futures import ThreadPoolExecutor, as_completed
--
--   def busy_io(index):
--       # read a huge file
--       with open('large{}.txt'.format(index)) as fp:
--           content = fp.read()
--       return 'Finish thread{}'.format(index)
--
--   if __name__ == '__main__':
--       futures = []
--       worker_num = 3  # worker threads
--       task_num = 6    # tasks to run
--
--       with ThreadPoolExecutor(worker_num) as executer:
--           for index in range(task_num):
--               futures.append(executer.submit(busy_io, index))
--
--       # show the results as they finish
--       for x in as_completed(futures):
--           print(x.result())
--
-- A to-be-closed executor is Python's `with`: closing it waits for the work.
-- busy_io runs in a worker thread with a Lua state of its own; it gets a
-- copy of its upvalues (the directory's name) and requires tulua.fs there by
-- name. The script writes the six files, a few megabytes each, into a new
-- temporary directory and removes them at the end, also when it fails. It
-- prints the results in the order they finished, which varies from run to
-- run, then the pool's timeline: which worker read which file, and when.
--
-- Run it with: tulua scripts/talk/thread_io.lua
-- (--svg FILE also writes the timeline as an SVG picture)
local futures = require "concurrent.futures"
local timeline = require "concurrent.timeline"
local svg_path = arg and arg[1] == "--svg" and (arg[2] or error("--svg needs a file name"))
local fs = require "tulua.fs"

local WORKER_NUM = 3
local TASK_NUM = 6
local FILE_SIZE = 4 * 1024 * 1024

-- A new directory under TMPDIR (default /tmp) for the large files; closing
-- it removes them and itself. os.remove does not wait, so that __close never
-- yields, even while an error unwinds the script.
local function temporary_directory()
  local path = assert(fs.mkdtemp((os.getenv("TMPDIR") or "/tmp") .. "/tulua-thread-io-XXXXXX"))
  return setmetatable({path = path}, {__close = function(self)
    for index = 0, TASK_NUM - 1 do os.remove(("%s/large%d.txt"):format(self.path, index)) end
    os.remove(self.path)
  end})
end

local dir <close> = temporary_directory()
local line = ("0123456789"):rep(7) .. "abcdefghi\n" -- 80 bytes
for index = 0, TASK_NUM - 1 do
  assert(fs.write_file(("%s/large%d.txt"):format(dir.path, index), line:rep(FILE_SIZE // #line)))
end
local path = dir.path -- the worker gets a copy of this string, not of dir

local function busy_io(index)
  -- read a huge file; as in the Python, its content is not used
  assert(fs.read_file(("%s/large%d.txt"):format(path, index)))
  return ("Finish thread%d"):format(index)
end

local submitted = {}
local executor <close> = futures.ThreadPoolExecutor(WORKER_NUM)
for index = 0, TASK_NUM - 1 do
  submitted[#submitted + 1] = executor:submit(busy_io, index)
end

for x in futures.as_completed(submitted) do
  print(x:result())
end

local records = executor:timeline()
for _, r in ipairs(records) do r.name = ("thread%d"):format(r.index - 1) end
print()
print(timeline.render(records, {workers = WORKER_NUM}))
if svg_path then
  assert(timeline.write_svg(svg_path, records, {workers = WORKER_NUM, title = "ThreadPoolExecutor(3): busy_io"}))
end
