/* transfer.c: the serializer of values between Lua states (no libuv
 * concept); backs the module 'tulua.transfer' and the thread and process
 * pools.
 *
 * Format, version 1 (all multi-byte integers little-endian; "uvar" is an
 * unsigned LEB128 of at most 10 bytes):
 *   header  "\x1bTLX" 0x01, uvar count, then count values, then nothing
 *   value   one tag byte, then:
 *     T_NIL, T_FALSE, T_TRUE, T_GLOBALS  (nothing)
 *     T_INT    8 bytes, the lua_Integer
 *     T_FLOAT  8 bytes, the lua_Number's exact bits
 *     T_STR    uvar length, the bytes
 *     T_TABLE  uvar pair count, then key, value for each pair
 *     T_FUNC   uvar length, lua_dump bytecode (not stripped), one byte with
 *              the upvalue count, then each upvalue as a value (the one
 *              named _ENV as T_GLOBALS)
 *     T_REF    uvar index of a table or function met before (1-based, in
 *              the order they were first met): shares and cycles
 *     T_MODULE uvar length, name: package.loaded[name] (required if absent)
 *     T_FIELD  as T_MODULE, then uvar length, key: a field of that module
 * The receiving state's globals stand for the sender's, and so does a
 * function's upvalue named _ENV whatever it holds (a sandbox too). Metatables
 * and the sharing of upvalues between closures are not transferred.
 *
 * Trust: the container format is checked byte by byte against what
 * remains, with bounded nesting and counts, so any input is at worst an
 * error. The bytecode blocks inside are checked only by lua_load (with each
 * allocation capped): Lua bytecode is trusted between our own states and
 * processes. Malicious bytecode can misbehave when run, and fuzzing found
 * crafted chunks that crash Lua 5.4.4's loader itself (stock lua5.4 too).
 * The fuzz target (tests/fuzz/fuzz_transfer.c) therefore fuzzes the
 * container, built with TULUA_TRANSFER_NO_LOAD (see load_block).
 *
 * Memory: encode grows its buffer in a userdata box (one per state, kept
 * in the registry) whose __gc frees it, so an error raised halfway leaks
 * nothing; the next encode reuses the buffer. decode runs under lua_pcall. */
#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>

#include "transfer.h"

#define BUF_MT    "tulua.transfer_buffer"
#define DUMPS_KEY "tulua.transfer_dumps"

#define MAGIC     "\x1bTLX"
#define MAGIC_LEN 4
#define VERSION   1

enum {
  T_NIL,
  T_FALSE,
  T_TRUE,
  T_INT,
  T_FLOAT,
  T_STR,
  T_TABLE,
  T_FUNC,
  T_REF,
  T_GLOBALS,
  T_MODULE,
  T_FIELD
};

_Static_assert(sizeof(lua_Integer) == 8, "lua_Integer is 64 bits");
_Static_assert(sizeof(lua_Number) == 8, "lua_Number is a double");

/* ---- encoding ---- */

typedef struct {
  char *p; /* malloc'd; freed by __gc unless taken */
  size_t len, cap;
} xbuf;

enum { SEG_ARG, SEG_KEY, SEG_UPVAL };

/* One step of the path of the value being encoded. */
typedef struct {
  int kind;
  int arg; /* SEG_ARG: the argument number */
  int key; /* SEG_KEY: stack index of the key */
  const char *name; /* SEG_UPVAL: the upvalue's name (its function lives) */
} seg;

typedef struct {
  lua_State *L;
  xbuf *b;
  int refs; /* stack index: table or function -> its reference index */
  int names; /* stack index: value -> "module" or "module\0field" */
  int globals; /* stack index: the globals table */
  int dumps; /* stack index: function -> its bytecode (weak keys) */
  int fresh_names; /* names was built during this encode */
  int nrefs;
  int depth;
  int nsegs;
  seg path[TULUA_TRANSFER_MAX_DEPTH + 2];
} encoder;

static int buf_gc(lua_State *L) {
  xbuf *b = lua_touserdata(L, 1);
  free(b->p);
  b->p = NULL;
  return 0;
}

static void put(encoder *e, const void *p, size_t n) {
  xbuf *b = e->b;
  if (n > b->cap - b->len) {
    size_t cap = b->cap ? b->cap : 256;
    while (cap - b->len < n) {
      if (cap > SIZE_MAX / 2) luaL_error(e->L, "not enough memory");
      cap *= 2;
    }
    char *np = realloc(b->p, cap);
    if (np == NULL) luaL_error(e->L, "not enough memory");
    b->p = np;
    b->cap = cap;
  }
  memcpy(b->p + b->len, p, n);
  b->len += n;
}

static void put_byte(encoder *e, int c) {
  unsigned char u = (unsigned char)c;
  put(e, &u, 1);
}

static void put_uvar(encoder *e, uint64_t v) {
  unsigned char tmp[10];
  size_t n = 0;
  do {
    unsigned char c = v & 0x7f;
    v >>= 7;
    tmp[n++] = c | (v ? 0x80 : 0);
  } while (v);
  put(e, tmp, n);
}

static void put_u64(encoder *e, uint64_t v) {
  unsigned char tmp[8];
  for (int i = 0; i < 8; i++)
    tmp[i] = (unsigned char)(v >> (8 * i));
  put(e, tmp, 8);
}

static void put_lstr(encoder *e, const char *s, size_t n) {
  put_uvar(e, n);
  put(e, s, n);
}

static int is_identifier(const char *s, size_t n) {
  if (n == 0 ||
      !(s[0] == '_' || ((s[0] | 0x20) >= 'a' && (s[0] | 0x20) <= 'z')))
    return 0;
  for (size_t i = 1; i < n; i++) {
    char c = s[i];
    if (!(c == '_' || (c >= '0' && c <= '9') ||
          ((c | 0x20) >= 'a' && (c | 0x20) <= 'z')))
      return 0;
  }
  return 1;
}

/* Raises "<path>: <what>" for the value being encoded. [-0, +0, v] */
static int refuse(encoder *e, const char *what) {
  lua_State *L = e->L;
  luaL_Buffer b;
  luaL_checkstack(L, 4, NULL);
  luaL_buffinit(L, &b);
  for (int i = 0; i < e->nsegs; i++) {
    const seg *s = &e->path[i];
    if (s->kind == SEG_ARG) {
      lua_pushfstring(L, "argument #%d", s->arg);
    } else if (s->kind == SEG_UPVAL) {
      lua_pushfstring(L, ".upvalue '%s'", s->name);
    } else if (lua_type(L, s->key) == LUA_TSTRING) {
      size_t n;
      const char *k = lua_tolstring(L, s->key, &n);
      if (is_identifier(k, n))
        lua_pushfstring(L, ".%s", k);
      else
        lua_pushliteral(L, "[string]");
    } else if (lua_isinteger(L, s->key)) {
      lua_pushfstring(L, "[%I]", (LUAI_UACINT)lua_tointeger(L, s->key));
    } else {
      lua_pushfstring(L, "[%s]", luaL_typename(L, s->key));
    }
    luaL_addvalue(&b);
  }
  lua_pushfstring(L, ": %s", what);
  luaL_addvalue(&b);
  luaL_pushresult(&b);
  return lua_error(L);
}

static void push_seg(encoder *e, seg s) {
  /* nesting is checked before any segment beyond depth + 1 is pushed */
  e->path[e->nsegs++] = s;
}

/* Builds the map of names: every module of package.loaded, and every C
 * function that is a field of one, by the function's value. Kept in the
 * encoder's box with the number of modules it was built from. */
static void build_names(encoder *e, lua_Integer nmods) {
  lua_State *L = e->L;
  luaL_checkstack(L, 8, NULL);
  lua_newtable(L);
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  /* stack: names, loaded */
  for (int pass = 0; pass < 2; pass++) {
    lua_pushnil(L);
    while (lua_next(L, -2)) { /* stack: names, loaded, name, mod */
      if (lua_type(L, -2) != LUA_TSTRING) {
        lua_pop(L, 1);
        continue;
      }
      if (pass == 1) { /* modules win over fields of _G */
        lua_pushvalue(L, -1);
        lua_pushvalue(L, -3);
        lua_rawset(L, -6);
      } else if (lua_type(L, -1) == LUA_TTABLE) {
        lua_pushnil(L);
        while (lua_next(L, -2)) { /* ..., name, mod, key, field */
          size_t kn;
          const char *k;
          if (lua_iscfunction(L, -1) && lua_type(L, -2) == LUA_TSTRING &&
              (k = lua_tolstring(L, -2, &kn), memchr(k, 0, kn) == NULL)) {
            lua_pushvalue(L, -1);
            lua_pushfstring(L, "%s%c%s", lua_tostring(L, -5), 0, k);
            lua_rawset(L, -8);
          }
          lua_pop(L, 1);
        }
      }
      lua_pop(L, 1);
    }
  }
  lua_pop(L, 1);
  lua_pushvalue(L, -1);
  lua_setiuservalue(L, e->refs - 1, 3);
  lua_pushinteger(L, nmods);
  lua_setiuservalue(L, e->refs - 1, 4);
  lua_replace(L, e->names);
  e->fresh_names = 1;
}

/* Makes e->names the map of names, rebuilding the kept one only when
 * package.loaded has changed size (a module was required): building it
 * walks every module, far more than most encodes. [-0, +0, m] */
static void push_names(encoder *e, int force) {
  lua_State *L = e->L;
  lua_Integer nmods = 0;
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  lua_pushnil(L);
  while (lua_next(L, -2)) {
    lua_pop(L, 1);
    nmods++;
  }
  lua_pop(L, 1);
  int box = e->refs - 1;
  if (!force) {
    int same = lua_getiuservalue(L, box, 4) == LUA_TNUMBER &&
               lua_tointeger(L, -1) == nmods;
    lua_pop(L, 1);
    if (same && lua_getiuservalue(L, box, 3) == LUA_TTABLE) {
      lua_replace(L, e->names);
      return;
    }
    if (same) lua_pop(L, 1);
  }
  build_names(e, nmods);
}

/* Whether the name s (n bytes: "module" or "module\0field") still names the
 * value at idx. */
static int still_named(lua_State *L, const char *s, size_t n, int idx) {
  const char *dot = memchr(s, 0, n);
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  if (dot == NULL) {
    lua_pushlstring(L, s, n);
  } else {
    lua_pushlstring(L, s, (size_t)(dot - s));
    if (lua_rawget(L, -2) != LUA_TTABLE) {
      lua_pop(L, 2);
      return 0;
    }
    lua_remove(L, -2);
    lua_pushlstring(L, dot + 1, n - (size_t)(dot - s) - 1);
  }
  lua_rawget(L, -2);
  int same = lua_rawequal(L, -1, idx);
  lua_pop(L, 2);
  return same;
}

/* Writes T_MODULE or T_FIELD and returns 1 if the value at idx is named in
 * package.loaded, else returns 0. A name from the kept map is checked, and
 * a C function it lacks is looked up again in a fresh map. */
static int put_name(encoder *e, int idx) {
  lua_State *L = e->L;
  if (lua_isnil(L, e->names)) push_names(e, 0);
  for (;;) {
    lua_pushvalue(L, idx);
    lua_rawget(L, e->names);
    size_t n;
    const char *s = lua_tolstring(L, -1, &n);
    int ok = s != NULL && still_named(L, s, n, idx);
    if (!ok && !e->fresh_names && (s != NULL || lua_iscfunction(L, idx))) {
      lua_pop(L, 1);
      push_names(e, 1);
      continue;
    }
    if (!ok) {
      lua_pop(L, 1);
      return 0;
    }
    const char *dot = memchr(s, 0, n);
    if (dot == NULL) {
      put_byte(e, T_MODULE);
      put_lstr(e, s, n);
    } else {
      put_byte(e, T_FIELD);
      put_lstr(e, s, (size_t)(dot - s));
      put_lstr(e, dot + 1, n - (size_t)(dot - s) - 1);
    }
    lua_pop(L, 1);
    return 1;
  }
}

/* Writes T_REF and returns 1 if the value at idx was met before; else
 * records it and returns 0. */
static int put_ref(encoder *e, int idx) {
  lua_State *L = e->L;
  lua_pushvalue(L, idx);
  lua_rawget(L, e->refs);
  if (lua_isinteger(L, -1)) {
    put_byte(e, T_REF);
    put_uvar(e, (uint64_t)lua_tointeger(L, -1));
    lua_pop(L, 1);
    return 1;
  }
  lua_pop(L, 1);
  lua_pushvalue(L, idx);
  lua_pushinteger(L, ++e->nrefs);
  lua_rawset(L, e->refs);
  return 0;
}

static void enc_value(encoder *e, int idx);

static void enter(encoder *e) {
  if (++e->depth > TULUA_TRANSFER_MAX_DEPTH)
    refuse(e, "cannot transfer (nesting deeper than 200)");
  luaL_checkstack(e->L, 8, NULL);
}

static void enc_table(encoder *e, int idx) {
  lua_State *L = e->L;
  enter(e);
  uint64_t count = 0;
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    lua_pop(L, 1);
    count++;
  }
  put_byte(e, T_TABLE);
  put_uvar(e, count);
  lua_pushnil(L);
  while (lua_next(L, idx)) { /* stack: ..., key, value */
    int top = lua_gettop(L);
    push_seg(e, (seg){SEG_KEY, 0, top - 1, NULL});
    enc_value(e, top - 1);
    enc_value(e, top);
    e->nsegs--;
    lua_pop(L, 1);
  }
  e->depth--;
}

static int dump_writer(lua_State *L, const void *p, size_t n, void *ud) {
  xbuf *b = ud; /* must not raise: grows by hand */
  (void)L;
  if (n > b->cap - b->len) {
    size_t cap = b->cap ? b->cap : 256;
    while (cap - b->len < n) {
      if (cap > SIZE_MAX / 2) return 1;
      cap *= 2;
    }
    char *np = realloc(b->p, cap);
    if (np == NULL) return 1;
    b->p = np;
    b->cap = cap;
  }
  memcpy(b->p + b->len, p, n);
  b->len += n;
  return 0;
}

static void enc_function(encoder *e, int idx) {
  lua_State *L = e->L;
  enter(e);
  put_byte(e, T_FUNC);
  lua_pushvalue(L, idx);
  if (lua_rawget(L, e->dumps) == LUA_TSTRING) { /* dumped before */
    size_t n;
    const char *s = lua_tolstring(L, -1, &n);
    put_lstr(e, s, n);
    lua_pop(L, 1);
  } else {
    lua_pop(L, 1);
    /* the bytecode's length, as a 10-byte uvar patched after the dump */
    put(e, "\x80\x80\x80\x80\x80\x80\x80\x80\x80\x00", 10);
    size_t at = e->b->len;
    lua_pushvalue(L, idx);
    int rc = lua_dump(L, dump_writer, e->b, 0); /* 0: keep line info */
    if (rc != 0) luaL_error(L, "not enough memory");
    uint64_t n = e->b->len - at;
    for (int i = 0; i < 10; i++)
      e->b->p[at - 10 + i] = (char)((n >> (7 * i) & 0x7f) | (i < 9 ? 0x80 : 0));
    lua_pushlstring(L, e->b->p + at, (size_t)n); /* function -> bytecode */
    lua_rawset(L, e->dumps);
  }
  int nups = 0;
  while (lua_getupvalue(L, idx, nups + 1) != NULL) {
    lua_pop(L, 1);
    nups++;
  }
  put_byte(e, nups); /* at most 255 in Lua */
  for (int i = 1; i <= nups; i++) {
    const char *name = lua_getupvalue(L, idx, i);
    if (strcmp(name, "_ENV") == 0) { /* whatever it holds: a sandbox too */
      put_byte(e, T_GLOBALS);
      lua_pop(L, 1);
      continue;
    }
    push_seg(e, (seg){SEG_UPVAL, 0, 0, name});
    enc_value(e, lua_gettop(L));
    e->nsegs--;
    lua_pop(L, 1);
  }
  e->depth--;
}

static void enc_value(encoder *e, int idx) {
  lua_State *L = e->L;
  switch (lua_type(L, idx)) {
    case LUA_TNIL:
      put_byte(e, T_NIL);
      return;
    case LUA_TBOOLEAN:
      put_byte(e, lua_toboolean(L, idx) ? T_TRUE : T_FALSE);
      return;
    case LUA_TNUMBER:
      if (lua_isinteger(L, idx)) {
        put_byte(e, T_INT);
        put_u64(e, (uint64_t)lua_tointeger(L, idx));
      } else {
        lua_Number x = lua_tonumber(L, idx);
        uint64_t bits;
        memcpy(&bits, &x, 8);
        put_byte(e, T_FLOAT);
        put_u64(e, bits);
      }
      return;
    case LUA_TSTRING: {
      size_t n;
      const char *s = lua_tolstring(L, idx, &n);
      put_byte(e, T_STR);
      put_lstr(e, s, n);
      return;
    }
    case LUA_TTABLE:
      if (lua_rawequal(L, idx, e->globals)) {
        put_byte(e, T_GLOBALS);
        return;
      }
      if (put_ref(e, idx)) return;
      if (put_name(e, idx)) {
        e->nrefs--; /* named values take no reference index */
        lua_pushvalue(L, idx);
        lua_pushnil(L);
        lua_rawset(L, e->refs);
        return;
      }
      enc_table(e, idx);
      return;
    case LUA_TFUNCTION:
      if (lua_iscfunction(L, idx)) {
        if (!put_name(e, idx)) refuse(e, "cannot transfer a C function");
        return;
      }
      if (!put_ref(e, idx)) enc_function(e, idx);
      return;
    default:
      lua_pushfstring(L, "cannot transfer a %s", luaL_typename(L, idx));
      refuse(e, lua_tostring(L, -1));
  }
}

/* Removes every pair of the table at idx (absolute). */
static void clear_table(lua_State *L, int idx) {
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    lua_pop(L, 1);
    lua_pushvalue(L, -1);
    lua_pushnil(L);
    lua_rawset(L, idx);
  }
}

/* Encodes the n values from first (absolute) and pushes the box holding
 * the result. [-0, +1, m] */
static xbuf *encode_to_box(lua_State *L, int first, int n) {
  encoder e;
  luaL_checkstack(L, 8, NULL);
  e.L = L;
  /* One box per state, made once: a pool encodes a job per submit, and a
   * userdata with __gc and two tables each time cost more than the job.
   * Encoding runs no Lua code, so it never nests. */
  if (lua_getfield(L, LUA_REGISTRYINDEX, BUF_MT) != LUA_TUSERDATA) {
    lua_pop(L, 1);
    xbuf *b = lua_newuserdatauv(L, sizeof(xbuf), 4);
    b->p = NULL;
    b->len = b->cap = 0;
    lua_createtable(L, 0, 1);
    lua_pushcfunction(L, buf_gc);
    lua_setfield(L, -2, "__gc");
    lua_setmetatable(L, -2);
    /* function -> its bytecode: a function's bytecode never changes, and a
     * pool that runs the same one again and again dumps it once */
    lua_newtable(L);
    lua_createtable(L, 0, 1);
    lua_pushliteral(L, "k");
    lua_setfield(L, -2, "__mode");
    lua_setmetatable(L, -2);
    lua_setiuservalue(L, -2, 1);
    lua_newtable(L);
    lua_setiuservalue(L, -2, 2);
    lua_pushvalue(L, -1);
    lua_setfield(L, LUA_REGISTRYINDEX, BUF_MT);
  }
  e.b = lua_touserdata(L, -1);
  e.b->len = 0; /* a buffer left by a failed encode is reused */
  if (e.b->p == NULL) e.b->cap = 0;
  lua_getiuservalue(L, -1, 2);
  e.refs = lua_gettop(L);
  clear_table(L, e.refs); /* what a failed encode left */
  lua_pushnil(L);
  e.names = lua_gettop(L);
  lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_GLOBALS);
  e.globals = lua_gettop(L);
  lua_getiuservalue(L, e.refs - 1, 1);
  e.dumps = lua_gettop(L);
  e.nrefs = e.depth = e.nsegs = e.fresh_names = 0;
  put(&e, MAGIC, MAGIC_LEN);
  put_byte(&e, VERSION);
  put_uvar(&e, (uint64_t)(n < 0 ? 0 : n));
  for (int i = 0; i < n; i++) {
    e.path[0] = (seg){SEG_ARG, i + 1, 0, NULL};
    e.nsegs = 1;
    enc_value(&e, first + i);
  }
  clear_table(L, e.refs); /* let go of what was encoded */
  lua_pop(L, 4);
  return e.b;
}

char *tulua__transfer_encode(lua_State *L, int first, int n, size_t *len) {
  xbuf *b = encode_to_box(L, lua_absindex(L, first), n);
  char *p = b->p; /* ours now: the box no longer frees it */
  b->p = NULL;
  *len = b->len;
  lua_pop(L, 1);
  return p;
}

/* ---- decoding ---- */

typedef struct {
  const unsigned char *p;
  size_t n; /* bytes remaining at p */
  int nrefs;
  int depth;
} decoder;

#ifndef TULUA_TRANSFER_NO_LOAD
/* The allocator in force while lua_load reads a bytecode block: the loader
 * allocates each vector at the size the block declares before reading it,
 * so a lying block could ask for gigabytes. A valid block never needs one
 * allocation of more than 16 times its length (a constant's TValue is 16
 * bytes for at least one byte of dump); the slack covers the state's own
 * growth (string table, stack) meanwhile. */
typedef struct {
  lua_Alloc f;
  void *ud;
  size_t limit;
} cap_alloc;

#define CAP_SLACK ((size_t)64 << 20)

static void *cap_alloc_fn(void *ud, void *ptr, size_t osize, size_t nsize) {
  cap_alloc *c = ud;
  if (nsize > c->limit && (ptr == NULL || nsize > osize)) return NULL;
  return c->f(c->ud, ptr, osize, nsize);
}

#endif

typedef struct {
  const char *p;
  size_t n;
} chunk;

#ifndef TULUA_TRANSFER_NO_LOAD
static const char *chunk_reader(lua_State *L, void *ud, size_t *size) {
  chunk *c = ud;
  (void)L;
  *size = c->n;
  c->n = 0;
  return *size ? c->p : NULL;
}

#endif

static int fail(lua_State *L, const char *what) {
  lua_pushfstring(L, "malformed transfer data (%s)", what);
  return lua_error(L);
}

static void need(lua_State *L, decoder *d, size_t k) {
  if (d->n < k) fail(L, "truncated");
}

static uint64_t get_uvar(lua_State *L, decoder *d) {
  uint64_t v = 0;
  for (int i = 0; i < 10; i++) {
    need(L, d, 1);
    unsigned c = *d->p++;
    d->n--;
    if (i == 9 && c > 1) fail(L, "bad integer");
    v |= (uint64_t)(c & 0x7f) << (7 * i);
    if (!(c & 0x80)) return v;
  }
  return fail(L, "bad integer");
}

static uint64_t get_u64(lua_State *L, decoder *d) {
  need(L, d, 8);
  uint64_t v = 0;
  for (int i = 0; i < 8; i++)
    v |= (uint64_t)d->p[i] << (8 * i);
  d->p += 8;
  d->n -= 8;
  return v;
}

/* Reads a length and returns the bytes it covers. */
static const char *get_bytes(lua_State *L, decoder *d, size_t *len) {
  uint64_t n = get_uvar(L, d);
  if (n > d->n) fail(L, "truncated");
  const char *s = (const char *)d->p;
  d->p += n;
  d->n -= (size_t)n;
  *len = (size_t)n;
  return s;
}

/* Pushes package.loaded[name], requiring it if absent, and returns 1;
 * returns 0 and pushes nothing if require fails. [-0, +(0|1), e] */
static int push_module(lua_State *L, const char *name) {
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  lua_getfield(L, -1, name); /* _LOADED is a plain table: raw enough */
  lua_remove(L, -2);
  if (!lua_isnil(L, -1)) return 1;
  lua_pop(L, 1);
  lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_GLOBALS);
  lua_getfield(L, -1, "require");
  lua_remove(L, -2);
  lua_pushstring(L, name);
  if (lua_pcall(L, 1, 1, 0) == LUA_OK && !lua_isnil(L, -1)) return 1;
  lua_pop(L, 1);
  return 0;
}

static int cannot_find(lua_State *L, const char *what) {
  lua_pushfstring(L, "cannot find '%s'", what);
  return lua_error(L);
}

static void dec_value(lua_State *L, decoder *d);

/* Records the table or function on top as the next reference (slot 2
 * holds the reference table once one is needed). [-1, +0, m] */
static void add_ref(lua_State *L, decoder *d) {
  if (lua_isnil(L, 2)) {
    lua_newtable(L);
    lua_replace(L, 2);
  }
  lua_rawseti(L, 2, ++d->nrefs);
}

static void dec_enter(lua_State *L, decoder *d) {
  if (++d->depth > TULUA_TRANSFER_MAX_DEPTH) fail(L, "nesting deeper than 200");
  if (!lua_checkstack(L, 8)) fail(L, "too many values");
}

static void dec_table(lua_State *L, decoder *d) {
  dec_enter(L, d);
  uint64_t count = get_uvar(L, d);
  if (count > d->n / 2) fail(L, "truncated"); /* a pair takes 2 bytes */
  /* presize a little only: nested tables each claiming the rest of the
   * input would otherwise reserve depth times its size */
  lua_createtable(L, 0, count < 64 ? (int)count : 64);
  lua_pushvalue(L, -1);
  add_ref(L, d);
  for (uint64_t i = 0; i < count; i++) {
    dec_value(L, d);
    dec_value(L, d);
    /* stack: table, key, value */
    if (lua_isnil(L, -2) ||
        (lua_type(L, -2) == LUA_TNUMBER && !lua_isinteger(L, -2) &&
         lua_tonumber(L, -2) != lua_tonumber(L, -2)))
      fail(L, "bad table key");
    lua_rawset(L, -3);
  }
  d->depth--;
}

#ifdef TULUA_TRANSFER_NO_LOAD
static int placeholder(lua_State *L) {
  return luaL_error(L, "placeholder of a transferred function");
}
#endif

/* Pushes the function of a bytecode block with nups upvalues (all nil, or
 * _ENV the globals) or raises. */
static void load_block(lua_State *L, chunk *c, int nups) {
#ifdef TULUA_TRANSFER_NO_LOAD
  /* The fuzz target's build: Lua 5.4's own loader crashes on some crafted
   * chunks (lua5.4 itself segfaults on them: binary chunks are trusted),
   * so fuzzing it would only rediscover that. The container around the
   * block is what this build fuzzes; a C closure stands for the function. */
  if (c->n < 4 || memcmp(c->p, LUA_SIGNATURE, 4) != 0)
    fail(L, "bad bytecode: not a binary chunk");
  if (!lua_checkstack(L, nups)) fail(L, "too many values");
  for (int i = 0; i < nups; i++)
    lua_pushnil(L);
  lua_pushcclosure(L, placeholder, nups);
#else
  (void)nups;
  cap_alloc cap;
  cap.f = lua_getallocf(L, &cap.ud);
  cap.limit =
      c->n > (SIZE_MAX - CAP_SLACK) / 16 ? SIZE_MAX : 16 * c->n + CAP_SLACK;
  lua_setallocf(L, cap_alloc_fn, &cap);
  int rc = lua_load(L, chunk_reader, c, "=transfer", "b"); /* never run */
  lua_setallocf(L, cap.f, cap.ud);
  if (rc != LUA_OK) {
    const char *msg = lua_tostring(L, -1);
    lua_pushfstring(L, "bad bytecode: %s", msg ? msg : "?");
    fail(L, lua_tostring(L, -1));
  }
#endif
}

/* Functions without upvalues of their own (none, or only _ENV, which is
 * the receiver's globals) are immutable: a worker that gets the same one
 * job after job loads it once. The cache maps the bytecode to the loaded
 * function and is emptied when it grows past LOADED_MAX. */
#define LOADED_KEY "tulua.transfer_loaded"
#define LOADED_MAX 256

/* Pushes the cache and the bytecode as a string. [-0, +2, m] */
static void push_loaded_key(lua_State *L, const chunk *c) {
  if (lua_getfield(L, LUA_REGISTRYINDEX, LOADED_KEY) != LUA_TTABLE) {
    lua_pop(L, 1);
    lua_createtable(L, 0, 1);
    lua_pushvalue(L, -1);
    lua_setfield(L, LUA_REGISTRYINDEX, LOADED_KEY);
  }
  lua_pushlstring(L, c->p, c->n);
}

static void dec_function(lua_State *L, decoder *d) {
  dec_enter(L, d);
  chunk c;
  c.p = get_bytes(L, d, &c.n);
  need(L, d, 1);
  int nups = *d->p++;
  d->n--;
  int shared = nups == 0 || (nups == 1 && d->n > 0 && *d->p == T_GLOBALS);
  if (shared) {
    push_loaded_key(L, &c);
    if (lua_rawget(L, -2) == LUA_TFUNCTION) {
      lua_remove(L, -2);
      if (nups == 1) { /* its _ENV: already the globals */
        d->p++;
        d->n--;
      }
      lua_pushvalue(L, -1);
      add_ref(L, d);
      d->depth--;
      return;
    }
    lua_pop(L, 2);
  }
  chunk key = c; /* the loader's reader consumes c */
  load_block(L, &c, nups);
  lua_pushvalue(L, -1);
  add_ref(L, d);
  if ((nups > 0 && lua_getupvalue(L, -1, nups) == NULL) ||
      lua_getupvalue(L, -1 - (nups > 0), nups + 1) != NULL)
    fail(L, "upvalue count mismatch");
  if (nups > 0) lua_pop(L, 1);
  for (int i = 1; i <= nups; i++) {
    dec_value(L, d);
    lua_setupvalue(L, -2, i);
  }
  if (shared) {
    push_loaded_key(L, &key);
    lua_Integer n = 0; /* the cache's size: counted, not stored */
    lua_pushnil(L);
    while (n <= LOADED_MAX && lua_next(L, -3)) {
      lua_pop(L, 1);
      n++;
    }
    if (n > LOADED_MAX) {
      if (n == LOADED_MAX + 1) lua_pop(L, 1); /* lua_next's key */
      lua_pop(L, 2);
      lua_createtable(L, 0, 1);
      lua_pushvalue(L, -1);
      lua_setfield(L, LUA_REGISTRYINDEX, LOADED_KEY);
      lua_pushlstring(L, key.p, key.n);
    }
    lua_pushvalue(L, -3);
    lua_rawset(L, -3);
    lua_pop(L, 1);
  }
  d->depth--;
}

static void dec_value(lua_State *L, decoder *d) {
  /* every case below uses at most 8 slots before recursing (T_FIELD); the
   * API does not check, so a missing slot would write past the stack */
  if (!lua_checkstack(L, 10)) fail(L, "too many values");
  need(L, d, 1);
  int tag = *d->p++;
  d->n--;
  switch (tag) {
    case T_NIL:
      lua_pushnil(L);
      return;
    case T_FALSE:
    case T_TRUE:
      lua_pushboolean(L, tag == T_TRUE);
      return;
    case T_INT: {
      uint64_t u = get_u64(L, d);
      lua_Integer i;
      memcpy(&i, &u, 8);
      lua_pushinteger(L, i);
      return;
    }
    case T_FLOAT: {
      uint64_t u = get_u64(L, d);
      lua_Number x;
      memcpy(&x, &u, 8);
      lua_pushnumber(L, x);
      return;
    }
    case T_STR: {
      size_t n;
      const char *s = get_bytes(L, d, &n);
      lua_pushlstring(L, s, n);
      return;
    }
    case T_TABLE:
      dec_table(L, d);
      return;
    case T_FUNC:
      dec_function(L, d);
      return;
    case T_REF: {
      uint64_t i = get_uvar(L, d);
      if (i < 1 || i > (uint64_t)d->nrefs) fail(L, "bad reference");
      lua_rawgeti(L, 2, (lua_Integer)i);
      return;
    }
    case T_GLOBALS:
      lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_GLOBALS);
      return;
    case T_MODULE: {
      size_t n;
      const char *s = get_bytes(L, d, &n);
      lua_pushlstring(L, s, n);
      if (!push_module(L, lua_tostring(L, -1)))
        cannot_find(L, lua_tostring(L, -1));
      lua_remove(L, -2);
      return;
    }
    case T_FIELD: {
      size_t n, kn;
      const char *s = get_bytes(L, d, &n);
      const char *k = get_bytes(L, d, &kn);
      lua_pushlstring(L, s, n);
      lua_pushlstring(L, k, kn);
      lua_pushfstring(L, "%s.%s", lua_tostring(L, -2), lua_tostring(L, -1));
      if (!push_module(L, lua_tostring(L, -3)))
        cannot_find(L, lua_tostring(L, -1));
      /* stack: name, key, full name, module */
      if (lua_type(L, -1) == LUA_TTABLE) {
        lua_pushvalue(L, -3);
        lua_rawget(L, -2);
      } else {
        lua_pushnil(L);
      }
      if (lua_isnil(L, -1)) cannot_find(L, lua_tostring(L, -3));
      lua_replace(L, -5);
      lua_pop(L, 3);
      return;
    }
    default:
      lua_pushfstring(L, "unknown tag %d", tag);
      fail(L, lua_tostring(L, -1));
  }
}

/* Under lua_pcall: arg 1 is a chunk. Slot 2 holds the reference table,
 * values follow. */
static int decode_main(lua_State *L) {
  const chunk *c = lua_touserdata(L, 1);
  decoder d = {(const unsigned char *)c->p, c->n, 0, 0};
  if (d.n < MAGIC_LEN + 1 || memcmp(d.p, MAGIC, MAGIC_LEN) != 0)
    fail(L, "bad header");
  if (d.p[MAGIC_LEN] != VERSION) {
    lua_pushfstring(L, "unsupported version %d", (int)d.p[MAGIC_LEN]);
    fail(L, lua_tostring(L, -1));
  }
  d.p += MAGIC_LEN + 1;
  d.n -= MAGIC_LEN + 1;
  lua_pushnil(L); /* the reference table, made by the first table met */
  uint64_t n = get_uvar(L, &d);
  if (n > d.n || n > INT_MAX) fail(L, "truncated"); /* a value: 1 byte */
  for (uint64_t i = 0; i < n; i++) {
    if (!lua_checkstack(L, 8)) fail(L, "too many values");
    dec_value(L, &d);
  }
  if (d.n != 0) fail(L, "trailing bytes");
  return (int)n;
}

int tulua__transfer_decode(lua_State *L, const char *buf, size_t len) {
  chunk c = {buf, len};
  int base = lua_gettop(L);
  lua_pushcfunction(L, decode_main);
  lua_pushlightuserdata(L, &c);
  if (lua_pcall(L, 1, LUA_MULTRET, 0) != LUA_OK) {
    if (lua_type(L, -1) != LUA_TSTRING) {
      lua_pop(L, 1);
      lua_pushliteral(L, "malformed transfer data (error object)");
    }
    return -1;
  }
  return lua_gettop(L) - base;
}

/* ---- the module ---- */

/* transfer.encode(...) -> string */
static int transfer_encode(lua_State *L) {
  xbuf *b = encode_to_box(L, 1, lua_gettop(L));
  lua_pushlstring(L, b->p, b->len); /* on error, the box frees b->p */
  free(b->p);
  b->p = NULL;
  return 1;
}

/* transfer.decode(s) -> ...; raises the decode error */
static int transfer_decode(lua_State *L) {
  size_t len;
  const char *s = luaL_checklstring(L, 1, &len);
  int n = tulua__transfer_decode(L, s, len);
  if (n < 0) return lua_error(L);
  return n;
}

int luaopen_tulua_transfer(lua_State *L) {
  static const luaL_Reg funcs[] = {
      {"encode", transfer_encode}, {"decode", transfer_decode}, {NULL, NULL}};
  luaL_newlib(L, funcs);
  return 1;
}
