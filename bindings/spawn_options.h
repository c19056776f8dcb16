/* spawn_options.h: the options of process.spawn and process.run (argv,
 * env, cwd, the three stdio, detached, process_group and spawn's pty, and
 * run's input,
 * timeout and check), read from
 * Lua and turned into libuv's uv_process_options_t. Defined in
 * spawn_options.c; used by process.c. */
#ifndef TULUA_SPAWN_OPTIONS_H
#define TULUA_SPAWN_OPTIONS_H

#include "common.h"

/* What a child's stdin, stdout or stderr is. */
enum {
  TULUA__IO_INHERIT,
  TULUA__IO_PIPE,
  TULUA__IO_NULL,
  TULUA__IO_FD,
  TULUA__IO_STREAM,
  TULUA__IO_STDOUT
};

typedef struct {
  int kind;
  int fd; /* TULUA__IO_FD */
  uv_stream_t *stream; /* TULUA__IO_STREAM */
} tulua__io_spec;

/* Strings and arrays live in Lua memory anchored in a "keep" table on the
 * stack, so that an argument error may be raised at any point. */
typedef struct {
  char **args; /* NULL-ended */
  char **env; /* NULL-ended, or NULL: the parent's environment */
  const char *cwd;
  int detached;
  int process_group; /* the child leads a group; kills on its behalf reach
                      * the group */
  int pty; /* spawn: stdin, stdout and stderr are a new terminal */
  int check; /* run */
  const char *input; /* run: bytes for stdin, or NULL */
  size_t input_len;
  double timeout; /* run: seconds, or -1 */
  tulua__io_spec io[3];
} tulua__spawn_spec;

/* "stdin", "stdout", "stderr": the option keys, and the Process fields. */
extern const char *const tulua__stdio_names[3];

/* Reads argv (argument 1) and the options table (argument 2, optional;
 * those of run if is_run, else of spawn) into s; raises on misuse, naming
 * any unknown option. The stack must be [argv, options, keep]: the strings
 * and arrays of s live in Lua memory anchored in keep. [-0, +0, v] */
void tulua__spawn_check(lua_State *L, int is_run, tulua__spawn_spec *s);

/* Fills the stdio container of a stdio which (0, 1, 2) that is no pipe
 * (TULUA__IO_STDOUT is resolved by the caller). */
void tulua__spawn_stdio(const tulua__io_spec *io, int which,
                        uv_stdio_container_t *c);

/* Returns the uv_stdio_flags of a pipe for stdio which, as the child sees
 * it. */
int tulua__spawn_pipe_flags(int which);

/* For stderr = "stdout" with a pipe: makes the pipe, h (initialized) takes
 * the read end, and fds[1], the write end, is for the child's stdout and
 * stderr (the caller closes it after uv_spawn). Returns 0 or a negative
 * libuv code, with nothing left open. */
int tulua__spawn_open_merged(uv_pipe_t *h, uv_file fds[2]);

/* Fills o from s and the three stdio containers (exit_cb is the
 * caller's). */
void tulua__spawn_options(uv_process_options_t *o, const tulua__spawn_spec *s,
                          uv_stdio_container_t *stdio);

#endif
