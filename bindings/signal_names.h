/* signal_names.h: the names of signals (signal.c), which process.c also
 * takes and gives (kill, a child's exit signal). */
#ifndef TULUA_SIGNAL_NAMES_H
#define TULUA_SIGNAL_NAMES_H

#include "common.h"

/* Returns the signal number named by the value at idx: a name such as
 * "SIGTERM" or a positive integer. If the value is none or nil, returns
 * def; raises "bad argument" for anything else or an unknown name. */
int tulua__signal_check(lua_State *L, int idx, int def);

/* Pushes the name of signal signum ("SIGKILL"), or "SIG<n>" for a signal
 * without one (real-time signals). [-0, +1, m] */
void tulua__signal_push_name(lua_State *L, int signum);

#endif
