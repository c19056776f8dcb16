/* tulua.h: the embedding API of the tulua runtime (Lua 5.4 tasks on libuv).
 *
 * A runtime owns one Lua state and runs on one libuv loop. Every function here
 * must be called from the thread that created the runtime, except
 * tulua_wakeup. Functions that return int return 0 (or a documented
 * non-negative value) on success and a negative UV_E* or TULUA_E* code on
 * failure; the text of the last failure is in tulua_errmsg. No function here
 * prints, exits or aborts, and no Lua error escapes to the host.
 *
 * Process-wide state. A runtime is confined to its thread, but signal
 * dispositions and a few hooks belong to the process; a host that embeds
 * tulua gives these up:
 * - SIGRTMIN + 4 stops the job a pool worker computes. The first thread
 *   pool opened, and a process pool's worker, install a handler for it
 *   (SA_SIGINFO); a process pool's parent sends it to its workers with
 *   sigqueue, and worker threads unblock it. The host must leave this
 *   signal alone; process.signal and process.wait_signal refuse it.
 * - SIGPIPE: when a module with streams or files (tulua.net, tulua.tty,
 *   tulua.fs, a pipe of tulua.process, a process pool) opens and SIGPIPE
 *   still has its default action, it gets a handler that does nothing, so
 *   that a write to a closed peer fails with EPIPE. Not SIG_IGN: an
 *   ignored signal stays ignored across exec, and the programs of
 *   os.execute and io.popen would inherit it. print and io writes still
 *   end the process on a closed pipe, as in lua5.4. A disposition the
 *   host set first is kept.
 * - A signal that process.signal or process.wait_signal listens for has
 *   libuv's handler meanwhile; the last listener of any runtime puts back
 *   the disposition the first one found.
 * - SIGINT is not touched by the library: the tulua command line installs
 *   its own handler while it runs Lua, which calls tulua_interrupt. A host
 *   wanting Ctrl-C does the same.
 * - The job context: a thread that runs pool jobs has one, per thread
 *   (_Thread_local), which that signal's handler reads, and a process
 *   runs at most one process pool worker. The hook that stops a job (or
 *   an interrupted chunk) follows coroutine.resume into the coroutines it
 *   resumes: one such hook per process. */
#ifndef TULUA_H
#define TULUA_H

#include <lua.h>
#include <uv.h>

#ifdef __cplusplus
extern "C" {
#endif

#define TULUA_VERSION "tulua 0.1.0"

/* Marks the API: libtulua.so is built with hidden visibility and exports
 * only what carries it. */
#if defined(__GNUC__)
#define TULUA_API __attribute__((visibility("default")))
#else
#define TULUA_API
#endif

/* Error codes of their own; the rest are libuv's UV_E* codes. */
#define TULUA_ELUA   (-30001) /* a Lua error: the message is in tulua_errmsg */
#define TULUA_ESTATE (-30002) /* the runtime is closed or busy */

typedef struct tulua_runtime tulua_runtime;

/* Receives an uncaught task error: msg is the error text with the task's
 * traceback, valid only during the call. Also receives the report of an
 * error that the runtime caught and went on from (a failing done callback
 * of a Future, a process pool's lost worker), a line of text of its own
 * that tulua_uncaught_errors does not count: a host tells the two apart by
 * that count. Called on the runtime's thread, from inside tulua_run,
 * tulua_step or tulua_call. */
typedef void (*tulua_error_fn)(tulua_runtime *rt, const char *msg, void *ud);

typedef struct tulua_config {
  uv_loop_t *loop; /* a loop the host runs, or NULL for one of its own */
  tulua_error_fn on_error; /* NULL: uncaught errors are only counted */
  void *userdata; /* passed back to on_error */
  int open_stdlibs; /* 1: open Lua's standard libraries (default), with
                       tulua's print and io functions in place of some
                       (host/cli.md: differences from lua5.4) */
  int debug; /* 1: warn (lua_warning) about task steps that keep the loop
              * busy for longer than debug_slow, as asyncio's debug mode */
  double debug_slow; /* debug mode's threshold in seconds (asyncio's
                      * slow_callback_duration); 0: the default, 0.1; a
                      * negative or NaN one: tulua_open gives UV_EINVAL */
  const char *trace; /* a file to write a trace to from the start (Chrome
                      * trace event format, host/trace.md), or NULL; as
                      * tulua.trace.start(trace): one trace per process
                      * (UV_EBUSY), tulua_close ends it; not kept */
  int ps; /* 1 (default): answer `tulua --ps PID` (host/ps.md): on SIGURG
           * the runtime writes its task list into /tmp/tulua-<uid>/, a
           * directory only its user may enter. The first runtime opened
           * in the process decides, for the process; 0 turns it off (and
           * leaves SIGURG alone). */
  double trace_gc_slow; /* with trace: the collector steps this many
                         * seconds long or longer are recorded (0: every
                         * one, at most 86400); negative (the default): 1
                         * ms, as trace.start's gc_slow; NaN or more than a
                         * day: tulua_open gives UV_EINVAL */
} tulua_config;

/* Fills cfg with the defaults: own loop, no error callback, stdlibs open,
 * answering tulua --ps. */
TULUA_API void tulua_config_init(tulua_config *cfg);

/* Creates a runtime: a Lua state with the tulua modules preloaded, on cfg's
 * loop or on a new one (cfg may be NULL for the defaults; it is copied).
 * Stores the runtime in *out and returns 0, or returns UV_ENOMEM (or the
 * libuv error of creating the loop) and stores NULL. */
TULUA_API int tulua_open(tulua_runtime **out, const tulua_config *cfg);

/* Closes the runtime: cancels every task, closes the Lua state (running
 * __gc and __close), closes every handle the runtime opened and, when the
 * runtime owns its loop, closes and frees the loop. A borrowed loop is left
 * open: the host must run it until it is idle (close callbacks and file
 * operations still on libuv's thread pool free their memory then) before
 * closing it. NULL is ignored. */
TULUA_API void tulua_close(tulua_runtime *rt);

/* Returns the runtime's Lua state: the host may push values and call the
 * Lua C API on it between calls into tulua, but must not yield. */
TULUA_API lua_State *tulua_state(tulua_runtime *rt);

/* Returns the loop the runtime runs on. */
TULUA_API uv_loop_t *tulua_loop(tulua_runtime *rt);

/* Returns the text of the last failure, valid until the next call. */
TULUA_API const char *tulua_errmsg(tulua_runtime *rt);

/* Registers a module that require(name) opens with the given function
 * (package.preload). Returns 0, or TULUA_ELUA if Lua ran out of memory. */
TULUA_API int tulua_preload(tulua_runtime *rt, const char *name,
                            lua_CFunction open);

/* Loads a chunk of Lua source or bytecode, as luaL_loadbufferx with mode
 * "bt", and pushes the compiled function on the state's stack. Returns 0,
 * or TULUA_ELUA with nothing pushed and the syntax error in tulua_errmsg. */
TULUA_API int tulua_load_string(tulua_runtime *rt, const char *code, size_t len,
                                const char *chunkname);

/* Loads a file as luaL_loadfile does (NULL reads stdin; a first line
 * starting with '#' is skipped) and pushes the function. Returns 0, or
 * TULUA_ELUA with nothing pushed and the message in tulua_errmsg. */
TULUA_API int tulua_load_file(tulua_runtime *rt, const char *path);

/* Pops a function and its nargs arguments from the state's stack and starts
 * it as a task; it first runs on the next loop iteration. The task runs to
 * its end even if nothing refers to it; if it fails, its error goes to
 * on_error. Pushes nothing. Returns 0 or TULUA_ELUA. Does not block. */
TULUA_API int tulua_spawn(tulua_runtime *rt, int nargs);

/* Pops a function and its nargs arguments, runs the function as a task and
 * runs the loop (other tasks and handles too) until that task has ended,
 * like lua_pcall. Returns LUA_OK and pushes nresults results (LUA_MULTRET
 * for all), or returns the task's error status (LUA_ERRRUN, LUA_ERRMEM, ...)
 * and pushes one value: the error message with the task's traceback, or the
 * error object itself when it is not a string and has no __tostring. A
 * SIGINT delivered while it waits cancels the task (see tulua_interrupt).
 * Blocks; must not be called from inside a task. */
TULUA_API int tulua_call(tulua_runtime *rt, int nargs, int nresults);

/* Runs the loop until no task is left and no handle keeps it alive, or,
 * after tulua_interrupt, until the tasks it cancelled have ended (handles
 * such as a listening server may still be active: tulua_close closes them).
 * Returns 0, or TULUA_ESTATE when called from inside a task. Blocks. */
TULUA_API int tulua_run(tulua_runtime *rt);

/* Runs one loop iteration without blocking: due timers fire, ready I/O is
 * handled and ready tasks run. With budget > 0 (seconds) it stops resuming
 * tasks once that much time has passed; the rest run at the next step.
 * Returns 1 if the runtime still has work (tasks or active handles), 0 if
 * it is idle, or TULUA_ESTATE. For a host's frame loop. */
TULUA_API int tulua_step(tulua_runtime *rt, double budget);

/* Returns how many seconds the host may sleep before the runtime needs the
 * next step: 0 when tasks are ready, the time to the next timer, or -1 when
 * nothing is scheduled (only I/O can wake it; see tulua_wakeup). */
TULUA_API double tulua_next_deadline(tulua_runtime *rt);

/* Wakes the runtime's loop from any thread, e.g. to end a uv_run that is
 * blocked in polling. Async-signal-safe. Returns 0 or a UV_E* code. */
TULUA_API int tulua_wakeup(tulua_runtime *rt);

/* Asks the runtime to interrupt what it runs, as a Ctrl-C does: Lua code
 * that is running gets the error "interrupted!" at its next instruction;
 * if no Lua code runs, the task tulua_call waits for is cancelled (during
 * tulua_run: every task), with an error whose message is "interrupted!".
 * During tulua_run either way ends the run (the other tasks cancelled),
 * whatever handles are open. Returns
 * 1 if an earlier interrupt is still pending (a host ends the process on
 * a second Ctrl-C), else 0. Async-signal-safe: call it from a SIGINT
 * handler. */
TULUA_API int tulua_interrupt(tulua_runtime *rt);

/* Pushes the text an uncaught error value on top of L prints as, without a
 * traceback, and returns it (the value stays under it). A string or a
 * number is itself, as in lua.c. An error object a task failed with (and
 * that a join raised again) is the report of that task: where it was
 * raised and the task's traceback. Any other value is preceded by the place
 * where it was raised ("script.lua:12: "): the first frame of the thread
 * `from`, at `level` or deeper, that runs Lua code outside tulua's own
 * modules (asyncio, concurrent.futures...), so that a library's error
 * names the caller's line. Then an object whose __tostring gives a string
 * is that string; a table with fields is "(error object is a table value:
 * {code = "X", message = "..."})" (the array part, then name keys in byte
 * order, at most 8); anything else is "(error object is a T value)", with
 * no place, as lua.c prints it. [-0, +1, m] */
TULUA_API const char *tulua_error_text(lua_State *L, lua_State *from,
                                       int level);

/* Returns how many task errors went uncaught (reported through on_error)
 * since the runtime was created; the other reports on_error receives are
 * not counted. */
TULUA_API int tulua_uncaught_errors(tulua_runtime *rt);

#ifdef __cplusplus
}
#endif

#endif
