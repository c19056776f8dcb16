/* process.h: what the two halves of the module 'tulua.process' share:
 * process.c (uv_process_t) and signal.c (uv_signal_t, signal names). */
#ifndef TULUA_PROCESS_H
#define TULUA_PROCESS_H

#include "common.h"

/* Returns the signal number named by the value at idx: a name such as
 * "SIGTERM" or a positive integer. If the value is none or nil, returns
 * def; raises "bad argument" for anything else or an unknown name. */
int tulua__signal_check(lua_State *L, int idx, int def);

/* Pushes the name of signal signum ("SIGKILL"), or "SIG<n>" for a signal
 * without one (real-time signals). [-0, +1, m] */
void tulua__signal_push_name(lua_State *L, int signum);

/* Adds signal.c's functions (wait_signal, signal, signals) to the module
 * table on top of the stack. [-0, +0, m] */
void tulua__signal_open(lua_State *L);

#endif
