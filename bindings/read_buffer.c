/* read_buffer.c: the unread bytes of a stream and the parsing of the read
 * requests (read, read_exactly, read_line, read_all, lines) shared by every
 * readable object: stream.c's streams and file_stream.c's file streams.
 *
 * A reader states its request (tulua__rbuf_request), its object fills the
 * buffer however it reads (uv_read_start, uv_fs_read) until
 * tulua__rbuf_satisfied says the request can be answered, and
 * tulua__rbuf_push answers it. So every stream type answers a read with the
 * same values and the same messages. */
#include <string.h>

#include "read_buffer.h"

#define READ_DEF     (64 * 1024) /* read()'s default most: stream.c's HWM */
#define KEEP_BUF     (16 * 1024) /* an emptied buffer bigger than this goes */
#define LINE_MAX_DEF (64 * 1024)

int tulua__rbuf_satisfied(tulua__rbuf *rb) {
  if (rb->eof || rb->err) return 1;
  size_t n = tulua__bytes_avail(&rb->b);
  switch (rb->mode) {
    case TULUA__R_ANY:
      return n > 0;
    case TULUA__R_EXACT:
      return n >= rb->want;
    case TULUA__R_ALL:
      return n > rb->want; /* past the most: an error */
    default: { /* TULUA__R_LINE */
      if (n >= rb->want + rb->seplen) return 1;
      /* a separator may straddle what was scanned and what came since */
      size_t from =
          rb->scanned >= rb->seplen ? rb->scanned - rb->seplen + 1 : 0;
      if (from < n && memmem(rb->b.base + rb->b.pos + from, n - from, rb->sep,
                             rb->seplen) != NULL)
        return 1;
      rb->scanned = n;
      return 0;
    }
  }
}

/* Drops n consumed bytes. An emptied buffer starts again at the front, and
 * a big one goes, unless a read writes into it (!may_free): then the bytes
 * must stay where they are. */
static void consume(tulua__rbuf *rb, size_t n, int may_free) {
  rb->scanned = 0;
  if (!may_free) {
    rb->b.pos += n;
    return;
  }
  tulua__bytes_consume(&rb->b, n);
  if (rb->b.len == 0 && rb->b.cap > KEEP_BUF) tulua__bytes_free(&rb->b);
}

static size_t check_size(lua_State *L, int idx, lua_Integer def) {
  lua_Integer n = luaL_optinteger(L, idx, def);
  luaL_argcheck(L, n > 0 && n <= 0x7fffffff, idx, "size out of range");
  return (size_t)n;
}

/* Reads read_line's options {sep=, max=} at idx into rb. */
static void line_opts(lua_State *L, tulua__rbuf *rb, int idx) {
  const char *sep = "\n";
  size_t seplen = 1;
  static const char *const known[] = {"sep", "max", NULL};
  rb->want = LINE_MAX_DEF;
  if (tulua__check_options(L, idx, known)) {
    if (lua_getfield(L, idx, "sep") != LUA_TNIL) {
      sep = lua_tolstring(L, -1, &seplen);
      luaL_argcheck(L, sep != NULL && seplen > 0 && seplen <= sizeof rb->sep,
                    idx, "'sep' must be a string of 1 to 8 bytes");
    }
    if (lua_getfield(L, idx, "max") != LUA_TNIL) {
      lua_Integer m = lua_tointeger(L, -1);
      luaL_argcheck(L, m > 0 && m <= 0x7fffffff, idx, "'max' out of range");
      rb->want = (size_t)m;
    }
  }
  memcpy(rb->sep, sep, seplen); /* sep is alive: in the table or a literal */
  rb->seplen = seplen;
}

int tulua__rbuf_request(lua_State *L, tulua__rbuf *rb, int mode) {
  tulua__rbuf opts;
  size_t want = 0;
  lua_Integer n;
  switch (mode) {
    case TULUA__R_ANY:
      want = check_size(L, 2, READ_DEF);
      break;
    case TULUA__R_EXACT:
      n = luaL_checkinteger(L, 2);
      luaL_argcheck(L, n >= 0 && n <= 0x7fffffff, 2, "size out of range");
      if (n == 0) {
        lua_pushliteral(L, "");
        return 0;
      }
      want = (size_t)n;
      break;
    case TULUA__R_ALL:
      n = luaL_optinteger(L, 2, 0x7ffffffe);
      luaL_argcheck(L, n > 0 && n < 0x7fffffff, 2, "size out of range");
      want = (size_t)n;
      break;
    default: /* TULUA__R_LINE: parsed aside, so that a bad argument
              * leaves rb as it was */
      line_opts(L, &opts, 2);
      memcpy(rb->sep, opts.sep, sizeof rb->sep);
      rb->seplen = opts.seplen;
      want = opts.want;
  }
  lua_settop(L, 1);
  rb->mode = (unsigned char)mode;
  rb->want = want;
  rb->scanned = 0;
  return 1;
}

int tulua__rbuf_push(lua_State *L, tulua__rbuf *rb, const char *what,
                     const char *subject, int may_free) {
  size_t n = tulua__bytes_avail(&rb->b);
  const char *p = rb->b.base + rb->b.pos;
  switch (rb->mode) {
    case TULUA__R_ANY:
      if (n == 0) break;
      if (n > rb->want) n = rb->want;
      lua_pushlstring(L, p, n);
      consume(rb, n, may_free);
      return 1;
    case TULUA__R_EXACT:
      if (n >= rb->want) {
        lua_pushlstring(L, p, rb->want);
        consume(rb, rb->want, may_free);
        return 1;
      }
      if (rb->eof && !rb->err) { /* the partial data stays readable */
        lua_pushnil(L);
        lua_pushfstring(L, "%s: end of stream after %d of %d bytes", what,
                        (int)n, (int)rb->want);
        lua_pushliteral(L, "EOF");
        return 3;
      }
      break;
    case TULUA__R_ALL:
      if (n > rb->want) {
        lua_pushnil(L);
        lua_pushfstring(L, "%s: more than %d bytes", what, (int)rb->want);
        lua_pushliteral(L, "ENOBUFS");
        return 3;
      }
      if (rb->eof && !rb->err) {
        lua_pushlstring(L, n ? p : "", n);
        consume(rb, n, may_free);
        return 1;
      }
      break;
    default: { /* TULUA__R_LINE */
      const char *at = n ? memmem(p, n, rb->sep, rb->seplen) : NULL;
      if (at != NULL && (size_t)(at - p) <= rb->want) {
        size_t line = (size_t)(at - p);
        lua_pushlstring(L, p, line);
        consume(rb, line + rb->seplen, may_free);
        return 1;
      }
      if (n > rb->want) {
        lua_pushnil(L);
        lua_pushfstring(L, "%s: line longer than %d bytes", what,
                        (int)rb->want);
        lua_pushliteral(L, "ENOBUFS");
        return 3;
      }
      if (rb->eof && n > 0 && !rb->err) { /* the last line, unended */
        lua_pushlstring(L, p, n);
        consume(rb, n, may_free);
        return 1;
      }
      break;
    }
  }
  if (rb->err && rb->err_msg != NULL) {
    lua_pushnil(L);
    lua_pushstring(L, rb->err_msg);
    lua_pushstring(L, rb->err_code);
    return 3;
  }
  if (rb->err) return push_fail(L, subject, rb->err);
  lua_pushnil(L); /* the end of the stream */
  return 1;
}

/* lines(): an iterator of the object's read_line; raises on a failure.
 * Upvalues: the stream, and the options (or nil). */
static int lines_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  (void)ctx;
  if (lua_gettop(L) >= 3 && lua_isnil(L, -3) && lua_isstring(L, -2))
    return luaL_error(L, "%s", lua_tostring(L, -2));
  return 1;
}

static int lines_next(lua_State *L) {
  lua_settop(L, 0);
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_getfield(L, 1, "read_line");
  lua_insert(L, 1);
  lua_pushvalue(L, lua_upvalueindex(2));
  lua_callk(L, 2, LUA_MULTRET, 0, lines_k);
  return lines_k(L, LUA_OK, 0);
}

int tulua__rbuf_lines(lua_State *L) {
  luaL_checkany(L, 1);
  if (!lua_isnoneornil(L, 2)) luaL_checktype(L, 2, LUA_TTABLE);
  lua_settop(L, 2);
  lua_pushcclosure(L, lines_next, 2);
  return 1;
}
