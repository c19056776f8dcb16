--- asyncio._queues: the queues of tasks, Queue (FIFO), LifoQueue and
-- PriorityQueue (internal: the asyncio facade exports them).
local common = require "tulua._common"
local exceptions = require "asyncio._exceptions"
local locks = require "asyncio._locks"
local waiters = require "asyncio._waiters"

local need_task = common.need_task
local args = require "tulua._args"
local arg_error, type_error, check_self = args.arg_error, args.type_error, args.check_self
local QueueEmpty, QueueFull = exceptions.QueueEmpty, exceptions.QueueFull
local new_event = locks.Event
local wq_new, wq_wake, wq_wait = waiters.new, waiters.wake, waiters.wait
local type, error, setmetatable, getmetatable = type, error, setmetatable, getmetatable

local M = {}

local Queue = {__name = "asyncio.Queue", _kind = "asyncio.Queue"}
local fast_put, fast_get -- below: M.Queue's own put and get
Queue.__index = Queue

local function new_queue(mt, maxsize, fname)
  maxsize = maxsize or 0
  if math.type(maxsize) ~= "integer" then
    type_error(1, fname, "integer", maxsize, 3)
  end
  local q = setmetatable({maxsize = maxsize, _unfinished = 0,
    _getters = wq_new("queue get"), _putters = wq_new("queue put"), _finished = new_event()}, mt)
  q._finished:set()
  q:_init()
  return q
end

--- A FIFO queue (maxsize 0 or nil: unbounded).
function M.Queue(maxsize)
  local q = new_queue(Queue, maxsize, "Queue")
  q.put, q.get = fast_put(q), fast_get(q)
  return q
end

-- The FIFO store: a ring of items between head and tail.
function Queue:_init() self._items, self._head, self._tail = {}, 1, 0 end
function Queue:_put(item) local t = self._tail + 1; self._tail = t; self._items[t] = item end
function Queue:_get()
  local h = self._head
  local item = self._items[h]
  self._items[h] = nil
  self._head = h + 1
  return item
end
function Queue:qsize()
  check_self(self, "asyncio.Queue", "qsize")
  return self._tail - self._head + 1
end

function Queue:empty()
  check_self(self, "asyncio.Queue", "empty")
  return self:qsize() == 0
end

function Queue:full()
  check_self(self, "asyncio.Queue", "full")
  return self.maxsize > 0 and self:qsize() >= self.maxsize
end

local function wake_if(q, cond)
  if cond then wq_wake(q) end
end

--- Adds item without waiting; raises QueueFull when full.
function Queue:put_nowait(item)
  check_self(self, "asyncio.Queue", "put_nowait")
  if item == nil then arg_error(1, "put_nowait", "value expected") end
  if self:full() then error(QueueFull(), 2) end
  self:_put(item)
  self._unfinished = self._unfinished + 1
  self._finished._set = false
  wq_wake(self._getters)
end

local function putter_cancelled(self, woken)
  wake_if(self._putters, woken and not self:full())
end

local function getter_cancelled(self, woken)
  wake_if(self._getters, woken and not self:empty())
end

--- Adds item, waiting while the queue is full.
function Queue:put(item)
  check_self(self, "asyncio.Queue", "put")
  if item == nil then arg_error(1, "put", "value expected") end
  while self:full() do
    wq_wait(self._putters, need_task("put"), putter_cancelled, self)
  end
  return self:put_nowait(item)
end

--- Removes and returns an item without waiting; raises QueueEmpty when empty.
function Queue:get_nowait()
  check_self(self, "asyncio.Queue", "get_nowait")
  if self:empty() then error(QueueEmpty(), 2) end
  local item = self:_get()
  wq_wake(self._putters)
  return item
end

--- Removes and returns an item, waiting while the queue is empty.
function Queue:get()
  check_self(self, "asyncio.Queue", "get")
  while self:empty() do
    wq_wait(self._getters, need_task("get"), getter_cancelled, self)
  end
  return self:get_nowait()
end

--- Marks one item taken with get() as processed.
function Queue:task_done()
  check_self(self, "asyncio.Queue", "task_done")
  if self._unfinished <= 0 then error("task_done() called too many times", 2) end
  self._unfinished = self._unfinished - 1
  if self._unfinished == 0 then self._finished:set() end
end

--- Waits until every item put has been marked done.
function Queue:join()
  check_self(self, "asyncio.Queue", "join")
  if self._unfinished > 0 then
    wq_wait(self._finished._waiters, need_task("join"))
  end
end

-- A Queue's own put and get: the same as the methods above, as closures
-- over the queue with the ring inlined, which makes them about four times
-- faster (tests/bench/README.md, Q1). `self ~= q` is the whole self check:
-- any other object takes the checked method.
function fast_put(q)
  local generic, getters, putters, finished = Queue.put, q._getters, q._putters, q._finished
  return function(self, item)
    if self ~= q or item == nil then return generic(self, item) end
    local max = q.maxsize
    if max > 0 then
      while q._tail - q._head + 1 >= max do
        wq_wait(putters, need_task("put"), putter_cancelled, q)
      end
    end
    local t = q._tail + 1
    q._tail = t
    q._items[t] = item
    q._unfinished = q._unfinished + 1
    finished._set = false
    if getters.head <= getters.tail then wq_wake(getters) end
  end
end

function fast_get(q)
  local generic, getters, putters = Queue.get, q._getters, q._putters
  return function(self)
    if self ~= q then return generic(self) end
    local h = q._head
    while h > q._tail do
      wq_wait(getters, need_task("get"), getter_cancelled, q)
      h = q._head
    end
    local items = q._items
    local item = items[h]
    items[h] = nil
    if h == q._tail then q._head, q._tail = 1, 0 else q._head = h + 1 end
    if putters.head <= putters.tail then wq_wake(putters) end
    return item
  end
end

local LifoQueue = setmetatable({__name = "asyncio.LifoQueue"}, {__index = Queue})
LifoQueue.__index = LifoQueue

--- A LIFO queue (a stack).
function M.LifoQueue(maxsize)
  local q = new_queue(LifoQueue, maxsize, "LifoQueue")
  return q
end
function LifoQueue:_init() self._items = {} end
function LifoQueue:_put(item) self._items[#self._items + 1] = item end
function LifoQueue:_get()
  local items = self._items
  local item = items[#items]
  items[#items] = nil
  return item
end
function LifoQueue:qsize()
  check_self(self, "asyncio.Queue", "qsize")
  return #self._items
end

local PriorityQueue = setmetatable({__name = "asyncio.PriorityQueue"}, {__index = Queue})
PriorityQueue.__index = PriorityQueue

-- Python's tuple order for lists without __lt; `<` for everything else.
local function less(a, b)
  if type(a) == "table" and type(b) == "table" and getmetatable(a) == nil
      and getmetatable(b) == nil then
    local n = math.max(#a, #b)
    for i = 1, n do
      local x, y = a[i], b[i]
      if x == nil then return true end
      if y == nil then return false end
      if x ~= y then return less(x, y) end
    end
    return false
  end
  return a < b
end

--- A queue that returns its smallest item first.
function M.PriorityQueue(maxsize)
  local q = new_queue(PriorityQueue, maxsize, "PriorityQueue")
  return q
end
function PriorityQueue:_init() self._items = {} end
function PriorityQueue:qsize()
  check_self(self, "asyncio.Queue", "qsize")
  return #self._items
end

function PriorityQueue:_put(item)
  local h = self._items
  local i = #h + 1
  h[i] = item
  while i > 1 do
    local p = i // 2
    if not less(h[i], h[p]) then break end
    h[i], h[p] = h[p], h[i]
    i = p
  end
end

function PriorityQueue:_get()
  local h = self._items
  local top, n = h[1], #h
  h[1] = h[n]
  h[n] = nil
  n = n - 1
  local i = 1
  while true do
    local l, r, m = 2 * i, 2 * i + 1, i
    if l <= n and less(h[l], h[m]) then m = l end
    if r <= n and less(h[r], h[m]) then m = r end
    if m == i then break end
    h[i], h[m] = h[m], h[i]
    i = m
  end
  return top
end

return M
