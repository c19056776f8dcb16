/* docall.h: running a chunk as lua.c's docall does (docall.c), for the
 * files of the tulua command line (main.c, repl.c). */
#ifndef TULUA_DOCALL_H
#define TULUA_DOCALL_H

#include "tulua.h"

/* How tulua__docall runs a function: as lua.c runs the chunks of pmain
 * (LUA_INIT, -e, -l, the script) or a REPL line, with its message handler,
 * or as it calls print in the REPL, with no handler. */
#define TULUA__CALL_MAIN  0
#define TULUA__CALL_REPL  1
#define TULUA__CALL_PLAIN 2

/* Runs the function on top of the runtime's stack, below its nargs
 * arguments, as the main task (tulua_call), the way lua.c's docall runs a
 * chunk: with a SIGINT handler installed while it runs and, unless mode is
 * TULUA__CALL_PLAIN, with lua.c's message handler. Returns LUA_OK and
 * pushes nresults results (LUA_MULTRET for all), or an error status and
 * pushes the error: lua.c's message with its traceback, or in
 * TULUA__CALL_PLAIN mode the error object itself. Blocks. */
int tulua__docall(tulua_runtime *rt, int nargs, int nresults, int mode);

/* Makes SIGINT interrupt rt (tulua_interrupt) until tulua__sigint_stop: a
 * SIGINT that comes while an earlier one is pending ends the process, as
 * lua.c's second Ctrl-C does; with strict (tulua_run), so does any second
 * SIGINT. Not reentrant: one runtime at a time. */
void tulua__sigint_start(tulua_runtime *rt, int strict);

/* Gives SIGINT its default action back, unless it is held: then it stays
 * with rt, not strict, so that the next start takes over without a gap. */
void tulua__sigint_stop(void);

/* Holds SIGINT for rt from now on, across chunks and until the loop that
 * follows them (main.c, when no REPL runs): a Ctrl-C that comes between two
 * of them interrupts what runs next, where SIGINT's default action would
 * kill the process with status 130. */
void tulua__sigint_hold(tulua_runtime *rt);

/* Ends the hold and gives SIGINT its default action back. */
void tulua__sigint_release(void);

#endif
