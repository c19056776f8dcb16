-- concurrent.timeline: render() draws an executor's timeline records as
-- text. The records here are made up, so that the pictures are exact.
local timeline = require("concurrent.timeline")

local function lines_of(s)
  local lines = {}
  for line in (s .. "\n"):gmatch("(.-)\n") do lines[#lines + 1] = line end
  return lines
end

-- The worker rows of a rendered picture (the lines that start with "worker").
local function rows_of(s)
  local rows = {}
  for _, line in ipairs(lines_of(s)) do
    if line:find("^worker") then rows[#rows + 1] = line end
  end
  return rows
end

-- The time cells of a row: what lies between its two bars.
local function cells_of(row)
  return row:match("|(.*)|$")
end

local function job(index, worker, start, finish, status, name)
  return {index = index, worker = worker, start = start, finish = finish, status = status, name = name}
end

describe("concurrent.timeline", function()
  describe("render", function()
    it("draws one row per worker, jobs back to back by submission number, an axis and a legend", function()
      local records = {
        job(1, 1, 0, 0.5, "done", "thread0"),
        job(2, 2, 0, 0.3, "done", "thread1"),
        job(3, 2, 0.3, 0.8, "done", "thread2"),
        job(4, 1, 0.5, 1, "done", "thread3"),
      }
      assert.are.equal(table.concat({
        "worker 1 |11111111114444444444|",
        "worker 2 |2222223333333333    |",
        "          +---------+---------+",
        "          0.0       0.5       1.0 s",
        "1 thread0  2 thread1  3 thread2",
        "4 thread3",
      }, "\n"), timeline.render(records, {width = 20}))
    end)

    it("marks failed and cancelled jobs, gives a zero-length job a cell and draws a running one up to now", function()
      local records = {
        job(1, 1, 0, 0.2, "done"),
        job(2, 1, 0.2, 0.2, "failed"),
        job(3, 1, 0.2, 0.4, "cancelled"),
        job(4, 3, 0.1, nil, "running"),
      }
      assert.are.equal(table.concat({
        "worker 1 |1111111X-----       |",
        "worker 2 |                    |",
        "worker 3 |   44444444444444   |",
        "          +------+-----+------+",
        "          0.0    0.2   0.4    0.6 s",
        "1 job 1  X job 2 (failed)",
        "- job 3 (cancelled)",
        "4 job 4 (running)",
      }, "\n"), timeline.render(records, {width = 20, now = 0.5}))
    end)

    it("draws an axis of one second and says so for no records", function()
      assert.are.equal(table.concat({
        "          +---------+---------+",
        "          0.0       0.5       1.0 s",
        "no jobs",
      }, "\n"), timeline.render({}, {width = 20}))
    end)

    it("draws idle rows for opts.workers", function()
      local rows = rows_of(timeline.render({job(1, 2, 0, 1)}, {workers = 4, width = 10}))
      assert.are.same({
        "worker 1 |          |",
        "worker 2 |1111111111|",
        "worker 3 |          |",
        "worker 4 |          |",
      }, rows)
    end)

    it("names the rows with opts.row (an MPI pool's ranks)", function()
      local rows = lines_of(timeline.render({job(1, 2, 0, 1)}, {workers = 2, width = 10, row = "rank"}))
      assert.are.same({"rank 1 |          |", "rank 2 |1111111111|"}, {rows[1], rows[2]})
      assert.has_error(function() timeline.render({}, {row = "a|b"}) end,
        "bad argument #2 to 'render' (field 'row' must be a word)")
    end)

    it("draws a running job up to the latest time in the records by default", function()
      local rows = rows_of(timeline.render({job(1, 1, 0, nil), job(2, 2, 0, 1)}, {width = 10}))
      assert.are.same({"worker 1 |1111111111|", "worker 2 |2222222222|"}, rows)
    end)

    it("takes the status from finish and the index from the position when they are missing", function()
      local out = timeline.render({{worker = 1, start = 0, finish = 1}, {worker = 1, start = 1}}, {width = 30})
      assert.are.equal("1 job 1  2 job 2 (running)", lines_of(out)[4])
    end)

    it("gives every one of many zero-length jobs on one worker its own cell", function()
      local records = {job(1, 2, 0, 1)}
      for i = 2, 6 do records[i] = job(i, 1, 0.5, 0.5) end
      local rows = rows_of(timeline.render(records, {width = 10}))
      assert.are.same({"worker 1 |     23456|", "worker 2 |1111111111|"}, rows)
    end)

    it("marks jobs 1-9, then a-z, then from 1 again", function()
      local records = {}
      for i = 1, 40 do records[i] = job(i, 1, i - 1, i) end
      local rows = rows_of(timeline.render(records, {width = 40}))
      assert.are.same({"worker 1 |123456789abcdefghijklmnopqrstuvwxyz12345|"}, rows)
    end)

    it("draws every row and the axis over width columns, the labels aligned, with many workers", function()
      local records = {}
      for i = 1, 30 do records[i] = job(i, (i - 1) % 12 + 1, (i - 1) // 12 * 0.25, ((i - 1) // 12 + 1) * 0.25) end
      for _, width in ipairs({1, 7, 60, 133}) do
        local lines = lines_of(timeline.render(records, {width = width}))
        local rows = rows_of(table.concat(lines, "\n"))
        assert.are.equal(12, #rows)
        for w, row in ipairs(rows) do
          assert.are.equal(("worker %2d |"):format(w), row:sub(1, 11))
          assert.are.equal(width, #cells_of(row))
        end
        assert.are.equal((" "):rep(11) .. "+", lines[13]:sub(1, 12))
        assert.are.equal(11 + width + 1, #lines[13])
        assert.are.equal(" s", lines[14]:sub(-2))
      end
    end)

    it("draws 60 columns by default and wraps the legend at the width of the rows", function()
      local records = {}
      for i = 1, 20 do records[i] = job(i, 1, i - 1, i, "done", "a long name " .. i) end
      local lines = lines_of(timeline.render(records))
      assert.are.equal(60, #cells_of(lines[1]))
      for i = 4, #lines do assert.is_true(#lines[i] <= 70, lines[i]) end
      assert.are.equal("1 a long name 1  2 a long name 2  3 a long name 3  4 a long name 4", lines[4])
    end)

    it("chooses a step of 1, 2 or 5 times a power of ten with a tick every 6 columns or more", function()
      local out = lines_of(timeline.render({job(1, 1, 0, 123.7)}, {width = 30}))
      assert.are.equal("          +---------+---------+---------+", out[2])
      assert.are.equal("          0         50        100       150 s", out[3])
      out = lines_of(timeline.render({job(1, 1, 0, 0.0042)}, {width = 60}))
      assert.are.equal("          0.000       0.001       0.002       0.003       0.004       0.005 s", out[3])
    end)

    it("raises for records or options of the wrong shape", function()
      assert.has_error(function() timeline.render(nil) end,
        "bad argument #1 to 'render' (table expected, got nil)")
      assert.has_error(function() timeline.render({job(1, 1, 0, 1), 5}) end,
        "bad argument #1 to 'render' (record 2: table expected, got number)")
      assert.has_error(function() timeline.render({job(1, 0, 0, 1)}) end,
        "bad argument #1 to 'render' (record 1: field 'worker' must be a positive integer)")
      assert.has_error(function() timeline.render({job(1, 1, nil, 1)}) end,
        "bad argument #1 to 'render' (record 1: field 'start' must be a non-negative number)")
      assert.has_error(function() timeline.render({job(1, 1, 2, 1)}) end,
        "bad argument #1 to 'render' (record 1: field 'finish' must be nil or a number not below 'start')")
      assert.has_error(function() timeline.render({job(1.5, 1, 0, 1)}) end,
        "bad argument #1 to 'render' (record 1: field 'index' must be a positive integer)")
      assert.has_error(function() timeline.render({job(1, 1, 0, 1, "done", 7)}) end,
        "bad argument #1 to 'render' (record 1: field 'name' must be nil or a string)")
      assert.has_error(function() timeline.render({}, "wide") end,
        "bad argument #2 to 'render' (table expected, got string)")
      assert.has_error(function() timeline.render({}, {width = 0}) end,
        "bad argument #2 to 'render' (field 'width' must be a positive integer)")
      assert.has_error(function() timeline.render({}, {workers = -1}) end,
        "bad argument #2 to 'render' (field 'workers' must be a non-negative integer)")
      assert.has_error(function() timeline.render({}, {now = 0 / 0}) end,
        "bad argument #2 to 'render' (field 'now' must be a non-negative number)")
      assert.has_error(function() timeline.render({}, {width = math.maxinteger}) end,
        "bad argument #2 to 'render' (field 'width' must be 1 to 10000)")
      assert.has_error(function() timeline.render({}, {workers = 1 << 40}) end,
        "bad argument #2 to 'render' (field 'workers' must be 0 to 1024)")
      assert.has_error(function() timeline.render({job(1, 1 << 40, 0, 1)}) end,
        "bad argument #1 to 'render' (record 1: field 'worker' must be 1 to 1024)")
      assert.has_error(function() timeline.render({}, {widht = 20}) end,
        "bad argument #2 to 'render' (unknown option 'widht')")
    end)

    it("blames the line that called it, as Lua's own functions do", function()
      local ok, err = pcall(function() timeline.render({5}) end)
      assert.is_false(ok)
      assert.matches("timeline_spec.lua:%d+: bad argument #1 to 'render'", err)
      ok, err = pcall(function() timeline.render({job(1, 0, 0, 1)}) end)
      assert.is_false(ok)
      assert.matches("timeline_spec.lua:%d+: bad argument #1 to 'render'", err)
    end)
  end)
end)
