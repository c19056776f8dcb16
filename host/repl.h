/* repl.h: what the files of the tulua command line share (main.c, repl.c).
 * Private to the CLI: both files use the public tulua.h only. */
#ifndef TULUA_REPL_H
#define TULUA_REPL_H

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
 * TULUA__CALL_PLAIN mode the error object itself. Defined in main.c.
 * Blocks. */
int tulua__docall(tulua_runtime *rt, int nargs, int nresults, int mode);

/* Runs lua.c's read-eval-print loop on stdin until its end: each line (or
 * group of lines making up one statement) runs as the main task through
 * tulua__docall, expressions print their values, errors go to stderr
 * without the program name. When stdin is not a terminal, prompts and input
 * lines are echoed to stdout, byte for byte as Debian's lua5.4 does with
 * GNU readline. Must run inside a protected call on the runtime's state (a
 * failing _PROMPT __tostring raises, as in lua.c). Blocks. */
void tulua__repl(tulua_runtime *rt);

/* The terminal line editor (lineedit.c), for the REPL when stdin and stdout
 * are terminals: libedit on the runtime's loop. One per process. */

/* Sets the editor up: history from ~/.tulua_history, completion through
 * lua/tulua/repl.lua. Returns 0, or -1 if the terminal cannot be used. */
int tulua__edit_open(tulua_runtime *rt);

/* Shows prompt and runs the loop (tasks, timers, I/O) until a line is
 * entered; output printed meanwhile appears above the prompt. Ctrl-C clears
 * the typed text. Returns the line (the caller frees it), or NULL at the
 * end of the input (Ctrl-D on an empty line). Blocks. */
char *tulua__edit_read(const char *prompt);

/* Adds an entered chunk to the history and saves the history file. */
void tulua__edit_add_history(const char *line);

/* Restores the terminal and frees the editor. */
void tulua__edit_close(void);

#endif
