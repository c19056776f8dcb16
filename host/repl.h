/* repl.h: the REPL (repl.c) and its terminal line editor (lineedit.c), for
 * main.c. Private to the CLI, which uses the public tulua.h only. */
#ifndef TULUA_REPL_H
#define TULUA_REPL_H

#include "tulua.h"

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
