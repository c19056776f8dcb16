/* http.c: the C half of tulua.http as the internal module 'tulua._http':
 * an HTTP/1.1 parser over llhttp (Node's parser), the serialisation of
 * request and response heads, and a gzip/deflate inflater over zlib.
 *
 * Nothing here waits or touches a stream: lua/tulua/http.lua reads and
 * writes, and hands the bytes to these functions. Parsing and serialising
 * are in C because they run for every request; the Lua left per request is
 * a read, one execute, the handler and one write (the W7 benchmark).
 *
 * The parser pauses at the end of each message, so that pipelined requests
 * are handed out one at a time and the bytes after a message stay with the
 * caller. Header pieces that llhttp hands out in several spans (a head that
 * came in several reads) are gathered in byte buffers; the head table is
 * built at on_headers_complete. llhttp's callbacks run inside execute,
 * called from Lua, so they may use the Lua API (this is no libuv
 * callback); an allocation failure there unwinds through llhttp, which
 * holds no resources, and the parser's buffers stay owned by its
 * userdata. */
#include <ctype.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <lauxlib.h>
#include <llhttp.h>
#include <zlib.h>

#include "byte_buffer.h"
#include "common.h"

#define PARSER_MT   "tulua.http.parser"
#define INFLATER_MT "tulua.http.inflater"

typedef struct {
  llhttp_t p;
  lua_State *L; /* the state of the running execute */
  tulua__bytes url; /* target or reason phrase, gathered */
  tulua__bytes field; /* the header name being read */
  tulua__bytes value; /* its value */
  tulua__bytes body; /* body bytes of this execute */
  size_t head_bytes; /* bytes of the head so far */
  size_t max_head; /* bound on head_bytes (431 beyond) */
  int head_idx; /* stack index of the head table, 0 if none */
  int headers_idx; /* stack index of its headers table */
  int meta_idx; /* stack index of the metatable for heads */
  int complete; /* the message ended in this execute */
  int head_done; /* the head ended in this execute */
  int too_large; /* the head passed max_head */
  int no_body; /* the response answers a HEAD request */
  int oom; /* a buffer could not grow */
  const char *reason; /* why a callback of ours failed the message */
  llhttp_settings_t settings;
} parser;

static parser *check_parser(lua_State *L) {
  return luaL_checkudata(L, 1, PARSER_MT);
}

static int add_bytes(parser *ps, tulua__bytes *b, const char *at, size_t n) {
  ps->head_bytes += n;
  if (ps->head_bytes > ps->max_head) {
    ps->too_large = 1;
    return -1;
  }
  if (tulua__bytes_append(b, at, n) != 0) {
    ps->oom = 1;
    return -1;
  }
  return 0;
}

static int on_message_begin(llhttp_t *p) {
  parser *ps = (parser *)p;
  ps->head_bytes = 0;
  ps->url.pos = ps->url.len = 0;
  ps->field.pos = ps->field.len = 0;
  ps->value.pos = ps->value.len = 0;
  return 0;
}

static int on_url(llhttp_t *p, const char *at, size_t n) {
  parser *ps = (parser *)p;
  return add_bytes(ps, &ps->url, at, n);
}

static int on_header_field(llhttp_t *p, const char *at, size_t n) {
  parser *ps = (parser *)p;
  return add_bytes(ps, &ps->field, at, n);
}

static int on_header_value(llhttp_t *p, const char *at, size_t n) {
  parser *ps = (parser *)p;
  return add_bytes(ps, &ps->value, at, n);
}

/* Creates the head table (and its headers table) when the first header
 * value or the end of the head needs it. It is kept as the userdata's
 * second user value until the head ends, so that a head cut by the end of
 * data goes on in the next execute. */
static void ensure_head(parser *ps) {
  lua_State *L = ps->L;
  if (ps->head_idx != 0) return;
  lua_createtable(L, 0, 7);
  ps->head_idx = lua_gettop(L);
  lua_createtable(L, 0, 8);
  lua_pushvalue(L, -1);
  lua_setfield(L, ps->head_idx, "headers");
  ps->headers_idx = lua_gettop(L);
  lua_pushvalue(L, ps->head_idx);
  lua_setiuservalue(L, 1, 2);
}

/* One header into the headers table: the name in lower case; a repeated
 * name gets its values joined with ", " (RFC 9110's list form). */
static int on_header_value_complete(llhttp_t *p) {
  parser *ps = (parser *)p;
  lua_State *L = ps->L;
  size_t nlen = ps->field.len - ps->field.pos;
  if (nlen == 0) { /* llhttp lets ": x" through; no header has no name */
    ps->reason = "Empty header name";
    return HPE_USER;
  }
  ensure_head(ps);
  char *name = ps->field.base + ps->field.pos;
  for (size_t i = 0; i < nlen; i++)
    name[i] = (char)tolower((unsigned char)name[i]);
  const char *val = ps->value.base ? ps->value.base + ps->value.pos : "";
  size_t vlen = ps->value.len - ps->value.pos;
  /* llhttp keeps trailing blanks of a value; a header's value has none */
  while (vlen > 0 && (val[vlen - 1] == ' ' || val[vlen - 1] == '\t'))
    vlen--;
  lua_pushlstring(L, name, nlen);
  lua_pushvalue(L, -1);
  if (lua_rawget(L, ps->headers_idx) == LUA_TSTRING) {
    lua_pushliteral(L, ", ");
    lua_pushlstring(L, val, vlen);
    lua_concat(L, 3);
  } else {
    lua_pop(L, 1);
    lua_pushlstring(L, val, vlen);
  }
  lua_rawset(L, ps->headers_idx);
  ps->field.pos = ps->field.len = 0;
  ps->value.pos = ps->value.len = 0;
  return 0;
}

static int on_headers_complete(llhttp_t *p) {
  parser *ps = (parser *)p;
  lua_State *L = ps->L;
  ensure_head(ps);
  int h = ps->head_idx;
  const char *url = ps->url.base ? ps->url.base + ps->url.pos : "";
  size_t ulen = ps->url.len - ps->url.pos;
  if (llhttp_get_type(p) == HTTP_REQUEST) {
    lua_pushstring(L, llhttp_method_name(llhttp_get_method(p)));
    lua_setfield(L, h, "method");
    lua_pushlstring(L, url, ulen);
    lua_setfield(L, h, "target");
  } else {
    lua_pushinteger(L, llhttp_get_status_code(p));
    lua_setfield(L, h, "status");
    lua_pushlstring(L, url, ulen);
    lua_setfield(L, h, "reason");
  }
  lua_pushinteger(L, llhttp_get_http_minor(p));
  lua_setfield(L, h, "minor");
  lua_pushboolean(L, llhttp_should_keep_alive(p));
  lua_setfield(L, h, "keep_alive");
  /* always set: a missing field would cost the server a call to its
   * __index for every request */
  lua_pushboolean(L, llhttp_get_upgrade(p));
  lua_setfield(L, h, "upgrade");
  if (ps->meta_idx != 0) {
    lua_pushvalue(L, ps->meta_idx);
    lua_setmetatable(L, h);
  }
  ps->head_done = 1;
  /* 1: the response to a HEAD request has no body whatever it says */
  return ps->no_body && llhttp_get_type(p) == HTTP_RESPONSE ? 1 : 0;
}

static int on_body(llhttp_t *p, const char *at, size_t n) {
  parser *ps = (parser *)p;
  if (tulua__bytes_append(&ps->body, at, n) != 0) {
    ps->oom = 1;
    return -1;
  }
  return 0;
}

static int on_message_complete(llhttp_t *p) {
  parser *ps = (parser *)p;
  ps->complete = 1;
  return HPE_PAUSED;
}

/* _http.parser(kind, max_head [, meta]): kind "request" or "response";
 * max_head bounds the bytes of a head; meta, when given, becomes the
 * metatable of every head table. */
static int parser_new(lua_State *L) {
  static const char *const kinds[] = {"request", "response", NULL};
  int kind = luaL_checkoption(L, 1, NULL, kinds);
  lua_Integer max = luaL_checkinteger(L, 2);
  luaL_argcheck(L, max > 0, 2, "must be positive");
  if (!lua_isnoneornil(L, 3)) luaL_checktype(L, 3, LUA_TTABLE);
  parser *ps = lua_newuserdatauv(L, sizeof *ps, 2);
  memset(ps, 0, sizeof *ps);
  ps->max_head = (size_t)max;
  llhttp_settings_init(&ps->settings);
  ps->settings.on_message_begin = on_message_begin;
  ps->settings.on_url = on_url;
  ps->settings.on_status = on_url;
  ps->settings.on_header_field = on_header_field;
  ps->settings.on_header_value = on_header_value;
  ps->settings.on_header_value_complete = on_header_value_complete;
  ps->settings.on_headers_complete = on_headers_complete;
  ps->settings.on_body = on_body;
  ps->settings.on_message_complete = on_message_complete;
  llhttp_init(&ps->p, kind == 0 ? HTTP_REQUEST : HTTP_RESPONSE, &ps->settings);
  luaL_setmetatable(L, PARSER_MT);
  if (!lua_isnoneornil(L, 3)) {
    lua_pushvalue(L, 3);
    lua_setiuservalue(L, -2, 1);
  }
  return 1;
}

/* Pushes nil, message, code for a parse error: code "431" when the head was
 * too large, "400" otherwise. */
static int parse_fail(lua_State *L, parser *ps) {
  lua_settop(L, 0);
  lua_pushnil(L);
  if (ps->too_large) {
    lua_pushliteral(L, "http: header section too large");
    lua_pushliteral(L, "431");
  } else if (ps->oom) {
    return luaL_error(L, "not enough memory");
  } else {
    lua_pushfstring(L, "http: %s (%s)",
                    ps->reason ? ps->reason : llhttp_get_error_reason(&ps->p),
                    llhttp_errno_name(llhttp_get_errno(&ps->p)));
    lua_pushliteral(L, "400");
  }
  return 3;
}

/* p:execute(data, pos [, no_body]) parses data from byte pos on, until the
 * end of a message or of data. Returns next_pos, head or false (a head that
 * ended in this call), body bytes or false, complete (the message ended);
 * or nil, message, code ("400", "431") on a malformed message, after which
 * the parser only fails. no_body: the response answers a HEAD request. */
static int parser_execute(lua_State *L) {
  parser *ps = check_parser(L);
  size_t len;
  const char *data = luaL_checklstring(L, 2, &len);
  lua_Integer pos = luaL_checkinteger(L, 3);
  luaL_argcheck(L, pos >= 1 && (size_t)pos <= len + 1, 3, "out of range");
  ps->no_body = lua_toboolean(L, 4);
  lua_settop(L, 2);
  lua_getiuservalue(L, 1, 1);
  ps->meta_idx = lua_istable(L, 3) ? 3 : 0;
  ps->head_idx = ps->headers_idx = 0;
  if (lua_getiuservalue(L, 1, 2) == LUA_TTABLE) {
    ps->head_idx = 4;
    lua_getfield(L, 4, "headers");
    ps->headers_idx = 5;
  }
  ps->L = L;
  ps->complete = 0;
  ps->head_done = 0;
  ps->body.pos = ps->body.len = 0;
  if (llhttp_get_errno(&ps->p) == HPE_PAUSED_UPGRADE) {
    /* after an upgrade the bytes are the new protocol's, never HTTP */
    lua_settop(L, 0);
    lua_pushnil(L);
    lua_pushliteral(L, "http: the connection was upgraded");
    lua_pushliteral(L, "400");
    return 3;
  }
  if (llhttp_get_errno(&ps->p) == HPE_PAUSED) llhttp_resume(&ps->p);
  const char *start = data + pos - 1;
  size_t n = len - (size_t)(pos - 1);
  llhttp_errno_t err = llhttp_execute(&ps->p, start, n);
  size_t used = n;
  if (err == HPE_PAUSED || err == HPE_PAUSED_UPGRADE) {
    used = (size_t)(llhttp_get_error_pos(&ps->p) - start);
    if (err == HPE_PAUSED_UPGRADE) ps->complete = 1;
  } else if (err != HPE_OK) {
    return parse_fail(L, ps);
  }
  ps->L = NULL;
  lua_pushinteger(L, pos + (lua_Integer)used);
  if (ps->head_done) {
    lua_pushvalue(L, ps->head_idx);
    lua_pushnil(L);
    lua_setiuservalue(L, 1, 2);
  } else {
    lua_pushboolean(L, 0);
  }
  if (ps->body.len > ps->body.pos)
    lua_pushlstring(L, ps->body.base + ps->body.pos,
                    ps->body.len - ps->body.pos);
  else
    lua_pushboolean(L, 0);
  lua_pushboolean(L, ps->complete);
  return 4;
}

/* p:finish(): the peer closed; returns true when that ended a message (a
 * response delimited by the end of the connection), false when no message
 * was under way, or nil, message, "400" when one was cut short. */
static int parser_finish(lua_State *L) {
  parser *ps = check_parser(L);
  lua_settop(L, 1);
  ps->L = L;
  ps->complete = 0;
  ps->head_idx = ps->headers_idx = ps->meta_idx = 0;
  if (llhttp_get_errno(&ps->p) == HPE_PAUSED) llhttp_resume(&ps->p);
  llhttp_errno_t err = llhttp_finish(&ps->p);
  ps->L = NULL;
  if (err != HPE_OK && err != HPE_PAUSED) return parse_fail(L, ps);
  lua_pushboolean(L, ps->complete);
  return 1;
}

static int parser_gc(lua_State *L) {
  parser *ps = luaL_checkudata(L, 1, PARSER_MT);
  tulua__bytes_free(&ps->url);
  tulua__bytes_free(&ps->field);
  tulua__bytes_free(&ps->value);
  tulua__bytes_free(&ps->body);
  return 0;
}

/* ---- serialisation ----
 * Heads are written into one scratch buffer per Lua state (an upvalue of
 * the functions, freed by its __gc), so that a raise in the middle (a bad
 * header) leaks nothing and no call pays for a fresh allocation. */

#define SCRATCH_MT "tulua.http.scratch"

static tulua__bytes *scratch(lua_State *L) {
  tulua__bytes *b = lua_touserdata(L, lua_upvalueindex(1));
  b->pos = b->len = 0;
  return b;
}

static void put(lua_State *L, tulua__bytes *b, const char *s, size_t n) {
  if (tulua__bytes_append(b, s, n) != 0) luaL_error(L, "not enough memory");
}

static void puts_(lua_State *L, tulua__bytes *b, const char *s) {
  put(L, b, s, strlen(s));
}

static int scratch_gc(lua_State *L) {
  tulua__bytes_free(luaL_checkudata(L, 1, SCRATCH_MT));
  return 0;
}

static const char *reason_of(int status) {
  switch (status) {
    case 100:
      return "Continue";
    case 101:
      return "Switching Protocols";
    case 200:
      return "OK";
    case 201:
      return "Created";
    case 202:
      return "Accepted";
    case 204:
      return "No Content";
    case 206:
      return "Partial Content";
    case 301:
      return "Moved Permanently";
    case 302:
      return "Found";
    case 303:
      return "See Other";
    case 304:
      return "Not Modified";
    case 307:
      return "Temporary Redirect";
    case 308:
      return "Permanent Redirect";
    case 400:
      return "Bad Request";
    case 401:
      return "Unauthorized";
    case 403:
      return "Forbidden";
    case 404:
      return "Not Found";
    case 405:
      return "Method Not Allowed";
    case 408:
      return "Request Timeout";
    case 409:
      return "Conflict";
    case 411:
      return "Length Required";
    case 413:
      return "Content Too Large";
    case 414:
      return "URI Too Long";
    case 415:
      return "Unsupported Media Type";
    case 417:
      return "Expectation Failed";
    case 426:
      return "Upgrade Required";
    case 429:
      return "Too Many Requests";
    case 431:
      return "Request Header Fields Too Large";
    case 500:
      return "Internal Server Error";
    case 501:
      return "Not Implemented";
    case 502:
      return "Bad Gateway";
    case 503:
      return "Service Unavailable";
    case 504:
      return "Gateway Timeout";
    default:
      return "Unknown";
  }
}

/* The Date header's value, formatted at most once a second. */
static const char *http_date(void) {
  static time_t last;
  static char buf[40];
  time_t now = time(NULL);
  if (now != last) {
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(buf, sizeof buf, "%a, %d %b %Y %H:%M:%S GMT", &tm);
    last = now;
  }
  return buf;
}

static int name_is(const char *k, size_t n, const char *lower) {
  return n == strlen(lower) && strncasecmp(k, lower, n) == 0;
}

/* Adds "name: value\r\n" after checking both: the name is a token and the
 * value holds no CR, LF or NUL, so that a script's header can never end the
 * head or start another one (response splitting). Raises for bad ones. */
static void add_header(lua_State *L, tulua__bytes *b, const char *k, size_t kn,
                       const char *v, size_t vn) {
  if (kn == 0) luaL_error(L, "http: empty header name");
  for (size_t i = 0; i < kn; i++) {
    unsigned char c = (unsigned char)k[i];
    if (c <= ' ' || c >= 127 || strchr("()<>@,;:\\\"/[]?={}", c) != NULL)
      luaL_error(L, "http: invalid character in header name '%s'", k);
  }
  for (size_t i = 0; i < vn; i++)
    if (v[i] == '\r' || v[i] == '\n' || v[i] == '\0')
      luaL_error(L, "http: CR, LF or NUL in the value of header '%s'", k);
  put(L, b, k, kn);
  put(L, b, ": ", 2);
  put(L, b, v, vn);
  put(L, b, "\r\n", 2);
}

enum {
  SEEN_DATE = 1,
  SEEN_CLOSE = 2,
  SEEN_HOST = 4,
  SEEN_AGENT = 8,
  SEEN_ENCODING = 16,
  SEEN_CONNECTION = 32,
  SEEN_EXPECT = 64
};

/* Adds the headers of the table at idx: string keys; string or number
 * values, or a list of them for a repeated header. The framing headers
 * (Content-Length, Transfer-Encoding) are the serialiser's and skipped.
 * Returns which of the headers the caller may add itself were there. */
static int add_headers(lua_State *L, tulua__bytes *b, int idx) {
  int seen = 0;
  lua_pushnil(L);
  while (lua_next(L, idx) != 0) {
    if (lua_type(L, -2) != LUA_TSTRING)
      luaL_error(L, "http: header names must be strings, got %s",
                 luaL_typename(L, -2));
    size_t kn;
    const char *k = lua_tolstring(L, -2, &kn);
    if (name_is(k, kn, "content-length") ||
        name_is(k, kn, "transfer-encoding")) {
      lua_pop(L, 1);
      continue;
    }
    if (name_is(k, kn, "date"))
      seen |= SEEN_DATE;
    else if (name_is(k, kn, "host"))
      seen |= SEEN_HOST;
    else if (name_is(k, kn, "user-agent"))
      seen |= SEEN_AGENT;
    else if (name_is(k, kn, "accept-encoding"))
      seen |= SEEN_ENCODING;
    else if (name_is(k, kn, "expect"))
      seen |= SEEN_EXPECT;
    int list = lua_istable(L, -1);
    lua_Integer count = list ? (lua_Integer)lua_rawlen(L, -1) : 1;
    for (lua_Integer i = 1; i <= count; i++) {
      if (list) lua_rawgeti(L, -1, i);
      int t = lua_type(L, -1);
      if (t != LUA_TSTRING && t != LUA_TNUMBER)
        luaL_error(L, "http: header '%s' must be a string, got %s", k,
                   luaL_typename(L, -1));
      size_t vn;
      const char *v = lua_tolstring(L, -1, &vn);
      if (name_is(k, kn, "connection")) {
        seen |= SEEN_CONNECTION;
        if (name_is(v, vn, "close")) seen |= SEEN_CLOSE;
      }
      add_header(L, b, k, kn, v, vn);
      if (list) lua_pop(L, 1);
    }
    lua_pop(L, 1);
  }
  return seen;
}

/* Adds the decimal digits of n >= 0 (no printf on the hot path). */
static void add_decimal(lua_State *L, tulua__bytes *b, lua_Integer n) {
  char digits[24];
  size_t i = sizeof digits;
  do {
    digits[--i] = (char)('0' + n % 10);
    n /= 10;
  } while (n > 0);
  put(L, b, digits + i, sizeof digits - i);
}

static void add_length(lua_State *L, tulua__bytes *b, lua_Integer n) {
  put(L, b, "Content-Length: ", 16);
  add_decimal(L, b, n);
  put(L, b, "\r\n", 2);
}

/* _http.response(status, headers, body, keep_alive, head_only) returns the
 * response's head (and body, when a string and not head_only) as one
 * string, and whether the script's headers asked to close. keep_alive
 * false sends "Connection: close"; a string is sent as the Connection
 * value (HTTP/1.0's "keep-alive"); true sends none (HTTP/1.1's default). body
 * nil: the head of a chunked body, whose chunks follow. Date, Content-Length or
 * Transfer-Encoding, and Connection are set here. Raises for a bad header
 * name or value. */
static int response(lua_State *L) {
  lua_Integer status = luaL_checkinteger(L, 1);
  luaL_argcheck(L, status >= 100 && status <= 999, 1,
                "status must be 100 to 999");
  if (!lua_isnoneornil(L, 2)) luaL_checktype(L, 2, LUA_TTABLE);
  size_t blen = 0;
  const char *body =
      lua_isnoneornil(L, 3) ? NULL : luaL_checklstring(L, 3, &blen);
  int keep_alive = lua_toboolean(L, 4);
  int head_only = lua_toboolean(L, 5);
  tulua__bytes *b = scratch(L);
  put(L, b, "HTTP/1.1 ", 9);
  add_decimal(L, b, status);
  put(L, b, " ", 1);
  puts_(L, b, reason_of((int)status));
  put(L, b, "\r\n", 2);
  int seen = lua_istable(L, 2) ? add_headers(L, b, 2) : 0;
  if (!(seen & SEEN_DATE)) {
    put(L, b, "Date: ", 6);
    puts_(L, b, http_date());
    put(L, b, "\r\n", 2);
  }
  /* 1xx, 204 and 304 carry no body and no framing */
  int bodiless = status < 200 || status == 204 || status == 304;
  if (!bodiless) {
    if (body != NULL)
      add_length(L, b, (lua_Integer)blen);
    else
      puts_(L, b, "Transfer-Encoding: chunked\r\n");
  }
  if (!(seen & SEEN_CONNECTION)) {
    if (!keep_alive)
      puts_(L, b, "Connection: close\r\n");
    else if (lua_type(L, 4) == LUA_TSTRING)
      add_header(L, b, "Connection", 10, lua_tostring(L, 4), lua_rawlen(L, 4));
  }
  put(L, b, "\r\n", 2);
  if (body != NULL && !head_only && !bodiless) put(L, b, body, blen);
  lua_pushlstring(L, b->base + b->pos, b->len - b->pos);
  lua_pushboolean(L, (seen & SEEN_CLOSE) != 0);
  return 2;
}

/* _http.request(method, target, headers, host, length, extra) returns a
 * request head. headers: the script's table or nil; host: the Host value,
 * sent unless the script set one; length: the body's size, -1 for a chunked
 * body, nil for none; extra: a table of headers sent unless the script set
 * them (user-agent, accept-encoding, connection), or nil. Raises for a bad
 * header name or value, or a method that is no token. */
static int request(lua_State *L) {
  size_t mn, tn, hn;
  const char *method = luaL_checklstring(L, 1, &mn);
  const char *target = luaL_checklstring(L, 2, &tn);
  if (!lua_isnoneornil(L, 3)) luaL_checktype(L, 3, LUA_TTABLE);
  const char *host = luaL_checklstring(L, 4, &hn);
  int has_length = !lua_isnoneornil(L, 5);
  lua_Integer length = has_length ? luaL_checkinteger(L, 5) : 0;
  if (!lua_isnoneornil(L, 6)) luaL_checktype(L, 6, LUA_TTABLE);
  for (size_t i = 0; i < mn; i++)
    if (!isalpha((unsigned char)method[i]) && method[i] != '-')
      return luaL_argerror(L, 1, "invalid method");
  for (size_t i = 0; i < tn; i++)
    if ((unsigned char)target[i] <= ' ' || target[i] == 127)
      return luaL_argerror(L, 2, "invalid character in the target");
  tulua__bytes *b = scratch(L);
  put(L, b, method, mn);
  put(L, b, " ", 1);
  put(L, b, target, tn);
  put(L, b, " HTTP/1.1\r\n", 11);
  int seen = lua_istable(L, 3) ? add_headers(L, b, 3) : 0;
  if (!(seen & SEEN_HOST)) add_header(L, b, "Host", 4, host, hn);
  if (lua_istable(L, 6)) {
    static const struct {
      const char *name;
      int flag;
    } extra[] = {{"user-agent", SEEN_AGENT},
                 {"accept-encoding", SEEN_ENCODING},
                 {"connection", SEEN_CONNECTION}};

    for (size_t i = 0; i < sizeof extra / sizeof extra[0]; i++) {
      if (seen & extra[i].flag) continue;
      if (lua_getfield(L, 6, extra[i].name) == LUA_TSTRING) {
        size_t vn;
        const char *v = lua_tolstring(L, -1, &vn);
        add_header(L, b, extra[i].name, strlen(extra[i].name), v, vn);
      }
      lua_pop(L, 1);
    }
  }
  if (has_length && length >= 0)
    add_length(L, b, length);
  else if (has_length)
    puts_(L, b, "Transfer-Encoding: chunked\r\n");
  put(L, b, "\r\n", 2);
  lua_pushlstring(L, b->base + b->pos, b->len - b->pos);
  lua_pushboolean(L, (seen & SEEN_CLOSE) != 0);
  lua_pushboolean(L, (seen & SEEN_EXPECT) != 0);
  return 3;
}

/* _http.chunk(data) returns data framed as one chunk of a chunked body;
 * "" gives the last chunk, "0\r\n\r\n". */
static int chunk(lua_State *L) {
  size_t n;
  const char *data = luaL_checklstring(L, 1, &n);
  tulua__bytes *b = scratch(L);
  char line[32];
  int len = snprintf(line, sizeof line, "%zx\r\n", n);
  put(L, b, line, (size_t)len);
  put(L, b, data, n);
  put(L, b, "\r\n", n == 0 ? 0 : 2);
  if (n == 0) put(L, b, "\r\n", 2);
  lua_pushlstring(L, b->base + b->pos, b->len - b->pos);
  return 1;
}

/* ---- gzip and deflate bodies ---- */

typedef struct {
  z_stream z;
  int live; /* inflateInit2 succeeded and inflateEnd is still due */
  int ended;
} inflater;

/* _http.inflater(): a decoder of a gzip or zlib body (the window bits make
 * zlib detect which). */
static int inflater_new(lua_State *L) {
  inflater *f = lua_newuserdatauv(L, sizeof *f, 0);
  memset(f, 0, sizeof *f);
  luaL_setmetatable(L, INFLATER_MT);
  if (inflateInit2(&f->z, 15 + 32) != Z_OK)
    return luaL_error(L, "zlib: inflateInit2 failed");
  f->live = 1;
  return 1;
}

/* f:inflate(data, max) returns the decoded bytes of data, and whether the
 * compressed stream ended; nil, message when it is corrupt or would decode
 * to more than max bytes in this call (a zip bomb stops there). */
static int inflater_inflate(lua_State *L) {
  inflater *f = luaL_checkudata(L, 1, INFLATER_MT);
  size_t n;
  const char *data = luaL_checklstring(L, 2, &n);
  lua_Integer max = luaL_checkinteger(L, 3);
  if (!f->live) return luaL_error(L, "attempt to use a finished inflater");
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  f->z.next_in = (Bytef *)(uintptr_t)data;
  f->z.avail_in = (uInt)n;
  lua_Integer total = 0;
  while (!f->ended) {
    char *out = luaL_prepbuffsize(&b, 16384);
    f->z.next_out = (Bytef *)out;
    f->z.avail_out = 16384;
    int rc = inflate(&f->z, Z_NO_FLUSH);
    size_t got = 16384 - f->z.avail_out;
    luaL_addsize(&b, got);
    total += (lua_Integer)got;
    if (total > max) {
      lua_pushnil(L);
      lua_pushliteral(L, "http: decoded body larger than max_body");
      return 2;
    }
    if (rc == Z_STREAM_END) {
      f->ended = 1;
      break;
    }
    if (rc == Z_BUF_ERROR || (rc == Z_OK && f->z.avail_in == 0 && got < 16384))
      break;
    if (rc != Z_OK) {
      lua_pushnil(L);
      lua_pushfstring(L, "http: corrupt compressed body (%s)",
                      f->z.msg ? f->z.msg : "zlib error");
      return 2;
    }
  }
  luaL_pushresult(&b);
  lua_pushboolean(L, f->ended);
  return 2;
}

static int inflater_gc(lua_State *L) {
  inflater *f = luaL_checkudata(L, 1, INFLATER_MT);
  if (f->live) inflateEnd(&f->z);
  f->live = 0;
  return 0;
}

int luaopen_tulua_http_core(lua_State *L) {
  static const luaL_Reg parser_meta[] = {{"__gc", parser_gc}, {NULL, NULL}};
  static const luaL_Reg parser_methods[] = {
      {"execute", parser_execute}, {"finish", parser_finish}, {NULL, NULL}};
  static const luaL_Reg inflater_meta[] = {{"__gc", inflater_gc}, {NULL, NULL}};
  static const luaL_Reg inflater_methods[] = {{"inflate", inflater_inflate},
                                              {NULL, NULL}};
  static const luaL_Reg scratch_meta[] = {{"__gc", scratch_gc}, {NULL, NULL}};
  static const luaL_Reg plain[] = {
      {"parser", parser_new}, {"inflater", inflater_new}, {NULL, NULL}};
  static const luaL_Reg with_scratch[] = {{"response", response},
                                          {"request", request},
                                          {"chunk", chunk},
                                          {NULL, NULL}};
  tulua__new_class(L, PARSER_MT, parser_meta, parser_methods);
  tulua__new_class(L, INFLATER_MT, inflater_meta, inflater_methods);
  tulua__new_class(L, SCRATCH_MT, scratch_meta, NULL);
  luaL_newlib(L, plain);
  tulua__bytes *b = lua_newuserdatauv(L, sizeof *b, 0);
  memset(b, 0, sizeof *b);
  luaL_setmetatable(L, SCRATCH_MT);
  luaL_setfuncs(L, with_scratch, 1);
  return 1;
}
