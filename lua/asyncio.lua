--- asyncio: Python's asyncio over tulua's tasks (documented in lua/asyncio.md).
-- A package, as Python's is: this facade gathers the public names of its
-- internal modules, which the underscore marks as not API:
--   asyncio._exceptions   the error classes (CancelledError...) and their tests
--   asyncio._waiters      the FIFO queues of parked tasks the primitives share
--   asyncio._futures      Future, the awaitables, wrap_future
--   asyncio._tasks        creating tasks; gather, wait, as_completed, wait_for, shield
--   asyncio._timeouts     the timeout scopes
--   asyncio._taskgroups   TaskGroup
--   asyncio._runners      asyncio.run
--   asyncio._events       the event loop object, run_in_executor, to_thread
--   asyncio._locks        Lock, Event, Semaphore, BoundedSemaphore, Condition
--   asyncio._queues       Queue, LifoQueue, PriorityQueue
-- A Task is tulua's task; everything that waits here parks the current task
-- with tulua.park() and is woken with tulua.unpark().
local exceptions = require "asyncio._exceptions"
local futures = require "asyncio._futures"
local tasks = require "asyncio._tasks"
local timeouts = require "asyncio._timeouts"
local taskgroups = require "asyncio._taskgroups"
local runners = require "asyncio._runners"
local events = require "asyncio._events"
local locks = require "asyncio._locks"
local queues = require "asyncio._queues"

return {
  -- errors
  CancelledError = exceptions.CancelledError,
  TimeoutError = exceptions.TimeoutError,
  InvalidStateError = exceptions.InvalidStateError,
  QueueEmpty = exceptions.QueueEmpty,
  QueueFull = exceptions.QueueFull,
  ExceptionGroup = exceptions.ExceptionGroup,
  is_error = exceptions.is_error,
  is_cancelled = exceptions.is_cancelled,
  is_timeout = exceptions.is_timeout,
  -- tasks
  Task = tasks.Task,
  create_task = tasks.create_task,
  sleep = tasks.sleep,
  current_task = tasks.current_task,
  all_tasks = tasks.all_tasks,
  iscoroutinefunction = tasks.iscoroutinefunction,
  -- futures
  Future = futures.Future,
  isfuture = futures.isfuture,
  ensure_future = futures.ensure_future,
  wrap_future = futures.wrap_future,
  -- waiting on awaitables
  gather = tasks.gather,
  FIRST_COMPLETED = tasks.FIRST_COMPLETED,
  FIRST_EXCEPTION = tasks.FIRST_EXCEPTION,
  ALL_COMPLETED = tasks.ALL_COMPLETED,
  wait = tasks.wait,
  as_completed = tasks.as_completed,
  wait_for = tasks.wait_for,
  shield = tasks.shield,
  timeout = timeouts.timeout,
  timeout_at = timeouts.timeout_at,
  TaskGroup = taskgroups.TaskGroup,
  run = runners.run,
  -- the event loop
  new_event_loop = events.new_event_loop,
  get_event_loop = events.get_event_loop,
  get_running_loop = events.get_running_loop,
  set_event_loop = events.set_event_loop,
  to_thread = events.to_thread,
  -- synchronization
  Lock = locks.Lock,
  Event = locks.Event,
  Semaphore = locks.Semaphore,
  BoundedSemaphore = locks.BoundedSemaphore,
  Condition = locks.Condition,
  -- queues
  Queue = queues.Queue,
  LifoQueue = queues.LifoQueue,
  PriorityQueue = queues.PriorityQueue,
}
