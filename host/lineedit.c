/* lineedit.c: the REPL's terminal line editor: libedit's readline-compatible
 * callback interface driven by a uv_poll on stdin, so that the runtime's
 * loop (timers, tasks, servers) keeps running while the prompt waits for
 * keys. Uses tulua.h (and libuv, which it includes) only.
 *
 * Output of background tasks appears above the prompt: while the editor
 * shows a prompt, the C streams stdout and stderr (and io.stdout, io.stderr)
 * are replaced by streams that first erase the prompt line; after the loop
 * iteration that wrote, the prompt is drawn again with what was being
 * typed. libedit itself writes to its own stream on the terminal.
 *
 * libedit keeps global state, and so does this file: there is one editor
 * per process, the CLI's. */
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <editline/readline.h>
#include <lauxlib.h>

#include "repl.h"

#define HISTORY_FILE "/.tulua_history"
#define HISTORY_MAX  1000
#define ERASE_BELOW  "\r\033[J" /* to column 0, clear to the end of screen */

/* libedit, opened when the REPL starts on a terminal (dlopen): linking it
 * would cost every script about 0.2 ms of start-up for its library and
 * those it needs (libtinfo, libbsd, libmd). Pointers to its functions and
 * variables, by their readline names. */
static struct {
  void *so;
  int (*add_history)(const char *);
  int (*read_history)(const char *);
  int (*write_history)(const char *);
  void (*stifle_history)(int);
  void (*rl_callback_handler_install)(const char *, rl_vcpfunc_t *);
  void (*rl_callback_handler_remove)(void);
  void (*rl_callback_read_char)(void);
  char **(*rl_completion_matches)(const char *, rl_compentry_func_t *);
  void (*rl_forced_update_display)(void);
  int (*rl_initialize)(void);
  rl_completion_func_t **rl_attempted_completion_function;
  int *rl_attempted_completion_over;
  const char **rl_basic_word_break_characters;
  int *rl_catch_signals;
  char **rl_completer_word_break_characters;
  int *rl_completion_append_character;
  int (**rl_getc_function)(FILE *);
  FILE **rl_instream;
  FILE **rl_outstream;
  const char **rl_readline_name;
  int *rl_point; /* the cursor's offset in the typed line */
} R;

/* Opens libedit and finds every symbol; returns 0, or -1 (the REPL then
 * reads lines without editing). */
static int load_libedit(void) {
  if (R.so != NULL) return 0;
  void *so = dlopen("libedit.so.2", RTLD_NOW | RTLD_LOCAL);
  if (so == NULL) return -1;
#define SYM(name)                                                              \
  if ((*(void **)&R.name = dlsym(so, #name)) == NULL) {                        \
    dlclose(so);                                                               \
    return -1;                                                                 \
  }
  SYM(add_history)
  SYM(read_history)
  SYM(write_history)
  SYM(stifle_history)
  SYM(rl_callback_handler_install)
  SYM(rl_callback_handler_remove)
  SYM(rl_callback_read_char)
  SYM(rl_completion_matches)
  SYM(rl_forced_update_display)
  SYM(rl_initialize)
  SYM(rl_attempted_completion_function)
  SYM(rl_attempted_completion_over)
  SYM(rl_basic_word_break_characters)
  SYM(rl_catch_signals)
  SYM(rl_completer_word_break_characters)
  SYM(rl_completion_append_character)
  SYM(rl_getc_function)
  SYM(rl_instream)
  SYM(rl_outstream)
  SYM(rl_readline_name)
  SYM(rl_point)
#undef SYM
  R.so = so;
  return 0;
}

static struct {
  tulua_runtime *rt;
  uv_loop_t *loop;
  uv_poll_t poll; /* stdin readable: feed libedit one key */
  uv_signal_t sigint; /* Ctrl-C at the prompt */
  FILE *term; /* libedit's output: the terminal, bypassing the wrappers */
  FILE *out, *err; /* the wrappers of stdout and stderr */
  FILE *saved_out, *saved_err;
  char *history; /* the history file's path, or NULL */
  const char *prompt;
  char *line; /* the line entered, malloc'd by libedit */
  int done; /* a line was entered, or the input ended */
  int shown; /* the prompt line is on the screen */
  int hidden; /* output erased the prompt: draw it again */
  int at_bol; /* the last output ended a line */
  int pending; /* a key read from stdin, not yet given to libedit, or -1 */
  unsigned char last_key; /* the last key libedit took */
  pthread_t thread; /* the REPL's: the one that owns the prompt */
} E;

/* ---- output above the prompt ---- */

static void write_all(int fd, const char *buf, size_t n) {
  while (n > 0) {
    ssize_t w = write(fd, buf, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return; /* the terminal is gone: drop it, as stdio would */
    buf += w;
    n -= (size_t)w;
  }
}

/* Erases the prompt line before the first output that comes while it is
 * shown. */
static void hide_prompt(void) {
  if (!E.shown) return;
  fflush(E.term);
  /* a long line wraps: go up to the prompt's row, then clear below it */
  struct winsize ws;
  size_t col = strlen(E.prompt) + (size_t)*R.rl_point;
  if (ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0 &&
      col >= ws.ws_col) {
    char up[32];
    int n = snprintf(up, sizeof up, "\033[%zuA", col / ws.ws_col);
    write_all(STDOUT_FILENO, up, (size_t)n);
  }
  write_all(STDOUT_FILENO, ERASE_BELOW, sizeof ERASE_BELOW - 1);
  E.shown = 0;
  E.hidden = 1;
  E.at_bol = 1;
}

static ssize_t wrapped_write(int fd, const char *buf, size_t n) {
  if (n == 0) return 0;
  if (!pthread_equal(pthread_self(), E.thread)) {
    /* a thread-pool worker's print: the prompt is the REPL thread's to
     * erase and redraw, so the text goes out as it is */
    write_all(fd, buf, n);
    return (ssize_t)n;
  }
  hide_prompt();
  write_all(fd, buf, n);
  E.at_bol = buf[n - 1] == '\n';
  return (ssize_t)n;
}

static ssize_t out_write(void *c, const char *buf, size_t n) {
  (void)c;
  return wrapped_write(STDOUT_FILENO, buf, n);
}

static ssize_t err_write(void *c, const char *buf, size_t n) {
  (void)c;
  return wrapped_write(STDERR_FILENO, buf, n);
}

/* Draws the prompt and the typed text again below what tasks printed. */
static void show_again(void) {
  fflush(E.out);
  fflush(E.err);
  if (!E.hidden) return;
  if (!E.at_bol) write_all(STDOUT_FILENO, "\n", 1);
  E.hidden = 0;
  E.shown = 1;
  R.rl_forced_update_display();
  fflush(E.term);
}

/* Points the io library's stream object named field at f if it held old. */
static void swap_io(lua_State *L, const char *field, FILE *old, FILE *f) {
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  if (lua_getfield(L, -1, "io") == LUA_TTABLE) {
    lua_getfield(L, -1, field);
    luaL_Stream *p = luaL_testudata(L, -1, LUA_FILEHANDLE);
    if (p != NULL && p->f == old) p->f = f;
    lua_pop(L, 1);
  }
  lua_pop(L, 2);
}

/* ---- completion: lua/tulua/repl.lua's complete() ---- */

static char **matches; /* the candidates of the current completion */
static size_t nmatches, next_match;

static int push_matches(lua_State *L) {
  const char *text = lua_touserdata(L, 1);
  lua_getglobal(L, "require");
  lua_pushliteral(L, "tulua.repl");
  lua_call(L, 1, 1);
  lua_getfield(L, -1, "complete");
  lua_pushstring(L, text);
  lua_call(L, 1, 1);
  return 1;
}

static void free_matches(void) {
  for (size_t i = next_match; i < nmatches; i++)
    free(matches[i]);
  free(matches);
  matches = NULL;
  nmatches = next_match = 0;
}

/* libedit's generator: state 0 asks Lua for the list, then each call
 * returns the next candidate (malloc'd: libedit frees it). */
static char *generate(const char *text, int state) {
  if (state == 0) {
    lua_State *L = tulua_state(E.rt);
    int top = lua_gettop(L);
    free_matches();
    lua_pushcfunction(L, push_matches);
    lua_pushlightuserdata(L, (void *)text);
    if (lua_pcall(L, 1, 1, 0) == LUA_OK && lua_istable(L, -1)) {
      size_t n = (size_t)lua_rawlen(L, -1);
      matches = calloc(n ? n : 1, sizeof *matches);
      for (size_t i = 0; matches != NULL && i < n; i++) {
        lua_rawgeti(L, -1, (lua_Integer)i + 1);
        const char *s = lua_tostring(L, -1);
        if (s != NULL && (matches[nmatches] = strdup(s)) != NULL) nmatches++;
        lua_pop(L, 1);
      }
    }
    lua_settop(L, top);
  }
  if (next_match >= nmatches) return NULL;
  return matches[next_match++];
}

static char **complete(const char *text, int start, int end) {
  (void)start;
  (void)end;
  (*R.rl_attempted_completion_over) = 1; /* no file names */
  return R.rl_completion_matches(text, generate);
}

/* ---- reading a line on the loop ---- */

static void on_line(char *line) {
  E.line = line;
  E.done = 1;
  E.shown = 0;
  R.rl_callback_handler_remove(); /* the terminal back to normal */
}

/* Reads one key from stdin, which is blocking; returns it, EOF at the end
 * of the input, or -2 when there is nothing to read after all. One byte at
 * a time, as readline reads: the bytes after the line that ends stay in
 * the terminal, in order, for the next prompt or for io.read in the chunk
 * the line runs (a paste is several lines at once). */
static int read_key(void) {
  unsigned char c;
  ssize_t n;
  do
    n = read(STDIN_FILENO, &c, 1);
  while (n < 0 && errno == EINTR);
  if (n < 0 && errno == EAGAIN) return -2;
  return n == 1 ? c : EOF;
}

/* libedit's input: the key poll_cb read, then stdin. A key that needs
 * more (an escape sequence, or the rest of an incremental search started
 * by Ctrl-R, which libedit reads in a loop of its own) is waited for, as
 * libedit itself would: the loop pauses while a search is typed. */
static int getc_fn(FILE *f) {
  (void)f;
  int key = E.pending;
  E.pending = -1;
  if (key < 0) {
    fflush(E.term);
    key = read_key();
    if (key < 0) return EOF;
  }
  E.last_key = (unsigned char)key;
  return key;
}

/* Returns 1 if stdin has bytes that a read takes without waiting. */
static int keys_waiting(void) {
  int n = 0;
  return ioctl(STDIN_FILENO, FIONREAD, &n) == 0 && n > 0;
}

/* Gives libedit the keys that stdin has, one by one, until a line ends. */
static void feed_keys(void) {
  while (!E.done && (E.pending >= 0 || keys_waiting())) {
    if (E.pending < 0) {
      int key = read_key();
      if (key == -2) return;
      if (key == EOF) { /* stdin is gone: as an end of input */
        on_line(NULL);
        return;
      }
      E.pending = key;
    }
    unsigned char key = (unsigned char)E.pending;
    R.rl_callback_read_char();
    /* A search ends at a key it pushes back into libedit's own input
     * (Ctrl-G aborts it instead): act on that key now, not at the next. */
    if ((key == 0x12 || key == 0x13) && !E.done && E.last_key != 0x07)
      R.rl_callback_read_char();
  }
}

static void poll_cb(uv_poll_t *h, int status, int events) {
  (void)h;
  (void)events;
  if (status < 0) {
    on_line(NULL);
    return;
  }
  /* readable: a key, or the end of the input (which FIONREAD counts as
   * nothing), so the first read is made whatever FIONREAD says */
  int key = read_key();
  if (key == -2) return;
  if (key == EOF) {
    on_line(NULL);
    return;
  }
  E.pending = key;
  feed_keys();
}

/* Ctrl-C at the prompt drops what was typed and shows a new prompt. */
static void sigint_cb(uv_signal_t *h, int signum) {
  (void)h;
  (void)signum;
  if (E.done) return;
  R.rl_callback_handler_remove();
  fputs("^C\n", E.term);
  fflush(E.term);
  R.rl_callback_handler_install(E.prompt, on_line);
  E.shown = 1;
}

char *tulua__edit_read(const char *prompt) {
  E.prompt = prompt;
  E.line = NULL;
  E.done = 0;
  E.hidden = 0;
  R.rl_callback_handler_install(prompt, on_line);
  E.shown = 1;
  E.saved_out = stdout;
  E.saved_err = stderr;
  lua_State *L = tulua_state(E.rt);
  stdout = E.out;
  stderr = E.err;
  swap_io(L, "stdout", E.saved_out, E.out);
  swap_io(L, "stderr", E.saved_err, E.err);
  uv_poll_start(&E.poll, UV_READABLE, poll_cb);
  uv_signal_start(&E.sigint, sigint_cb, SIGINT);
  feed_keys(); /* a paste's next line, already there */
  while (!E.done) {
    uv_run(E.loop, UV_RUN_ONCE);
    if (!E.done) show_again();
  }
  uv_poll_stop(&E.poll);
  uv_signal_stop(&E.sigint);
  fflush(E.out);
  fflush(E.err);
  swap_io(L, "stdout", E.out, E.saved_out);
  swap_io(L, "stderr", E.err, E.saved_err);
  stdout = E.saved_out;
  stderr = E.saved_err;
  if (E.line == NULL) fputs("\n", E.term); /* Ctrl-D: end the prompt line */
  fflush(E.term);
  return E.line;
}

void tulua__edit_add_history(const char *line) {
  if (line[0] == '\0') return;
  R.add_history(line);
  if (E.history != NULL) R.write_history(E.history);
}

int tulua__edit_open(tulua_runtime *rt) {
  static const cookie_io_functions_t out_fns = {NULL, out_write, NULL, NULL};
  static const cookie_io_functions_t err_fns = {NULL, err_write, NULL, NULL};
  if (load_libedit() < 0) return -1;
  memset(&E, 0, sizeof E);
  E.pending = -1;
  E.rt = rt;
  E.thread = pthread_self();
  E.loop = tulua_loop(rt);
  int fd = dup(STDOUT_FILENO);
  E.term = fd < 0 ? NULL : fdopen(fd, "w");
  E.out = fopencookie(NULL, "w", out_fns);
  E.err = fopencookie(NULL, "w", err_fns);
  if (E.term == NULL || E.out == NULL || E.err == NULL ||
      uv_poll_init(E.loop, &E.poll, STDIN_FILENO) < 0) {
    if (E.term) fclose(E.term);
    if (E.out) fclose(E.out);
    if (E.err) fclose(E.err);
    return -1;
  }
  /* uv_poll_init made stdin non-blocking; the chunks' io.read needs it as
   * it was (epoll does not care) */
  int flags = fcntl(STDIN_FILENO, F_GETFL);
  if (flags >= 0) fcntl(STDIN_FILENO, F_SETFL, flags & ~O_NONBLOCK);
  setvbuf(E.out, NULL, _IOLBF, 0);
  setvbuf(E.err, NULL, _IONBF, 0);
  uv_signal_init(E.loop, &E.sigint);
  uv_unref((uv_handle_t *)&E.sigint);
  (*R.rl_catch_signals) = 0; /* Ctrl-C is the loop's (sigint_cb) */
  (*R.rl_getc_function) = getc_fn;
  (*R.rl_instream) = stdin;
  (*R.rl_outstream) = E.term;
  (*R.rl_readline_name) = "tulua"; /* for ~/.editrc: "tulua:bind ..." */
  R.rl_initialize();
  (*R.rl_attempted_completion_function) = complete;
  (*R.rl_completion_append_character) = '\0';
  /* '.' and ':' belong to the word: fs.re<TAB>, t:jo<TAB> */
  (*R.rl_basic_word_break_characters) = " \t\n\"\\'`@$><=;|&{(,+-*/%^~#[]";
  (*R.rl_completer_word_break_characters) =
      (char *)(*R.rl_basic_word_break_characters);
  R.stifle_history(HISTORY_MAX);
  const char *home = getenv("HOME");
  if (home != NULL && home[0] != '\0' &&
      (E.history = malloc(strlen(home) + sizeof HISTORY_FILE)) != NULL) {
    strcpy(E.history, home);
    strcat(E.history, HISTORY_FILE);
    R.read_history(E.history);
  }
  return 0;
}

void tulua__edit_close(void) {
  free_matches();
  /* static handles: the runtime's close runs the loop for their callbacks */
  uv_close((uv_handle_t *)&E.poll, NULL);
  uv_close((uv_handle_t *)&E.sigint, NULL);
  fclose(E.out);
  fclose(E.err);
  fclose(E.term);
  free(E.history);
  E.history = NULL;
}
