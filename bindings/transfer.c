/* transfer.c: the serializer of values between Lua states (no libuv
 * concept); backs the module 'tulua.transfer' and the thread and process
 * pools.
 *
 * One concern in one file, though it is over 1,500 lines: the format
 * below, written by the encoder and read by the decoder, which mirror each
 * other tag by tag and share its constants and its function blocks;
 * the fuzz target (tests/fuzz) builds this file alone, without the
 * runtime.
 *
 * Format, version 3 (all multi-byte integers little-endian; "uvar" is an
 * unsigned LEB128 of at most 10 bytes):
 *   header  "\x1bTLX" 0x03, a flags byte, uvar count, then count values,
 *           then nothing. Flags: F_REFS (1) if a T_REF follows, so that a
 *           decoder records the tables and functions met only then; the
 *           other bits are 0.
 *   value   one tag byte, then:
 *     T_NIL, T_FALSE, T_TRUE, T_GLOBALS  (nothing)
 *     T_INT    8 bytes, the lua_Integer
 *     T_FLOAT  8 bytes, the lua_Number's exact bits
 *     T_STR    uvar length, the bytes
 *     T_TABLE  uvar array length n, uvar pair count, then the values of
 *              the keys 1..n (none nil), then key, value for each other
 *              pair (version 2 had no array: every key was a pair's)
 *     T_FUNC   8 bytes, a fingerprint of the bytecode (any value decodes:
 *              it is only a hint); uvar length, lua_dump bytecode (not
 *              stripped); one byte with the upvalue count, then each
 *              upvalue as a value (the one named _ENV as T_GLOBALS)
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
 * container, built with TULUA_TRANSFER_NO_LOAD (see load_block). A
 * fingerprint is never trusted either: it only finds candidates in the
 * decoder's cache, whose bytes are then compared.
 *
 * Cost: a pool encodes and decodes a request and a reply per job, mostly a
 * cached function and a number or two, so the common cases skip the
 * general machinery. Encode writes values that need no reference map,
 * name map or dump (nil, booleans, numbers, strings) straight into a block
 * of the exact size, and a function it dumped before as one copy. Decode
 * pushes values that allocate nothing (nil, booleans, numbers, the
 * globals, functions it loaded before) without lua_pcall, since nothing
 * there can raise; at the first other value (a string: pushing one can
 * fail for memory) or error, the protected decoder carries on from there.
 *
 * Memory: encode grows its buffer and its map of the tables and functions
 * met in a userdata box (one per state, kept in the registry) whose __gc
 * frees them, so an error raised halfway leaks nothing; the next encode
 * reuses both. The decoder's cache of loaded functions is a userdata too,
 * bounded in entries and bytes. decode runs under lua_pcall unless the
 * values are plain (above). */
#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>

#include "byte_buffer.h"
#include "transfer.h"

#define LOADED_MT "tulua.transfer_loaded"

#define MAGIC     "\x1bTLX"
#define MAGIC_LEN 4
#define VERSION   TULUA_TRANSFER_FORMAT
#define F_REFS    1 /* the flag of messages that hold a T_REF */
#define ARRAY_PRESIZE                                                          \
  4096 /* the most array slots a decoded table gets at once */

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

/* Registry keys by address: looking one up allocates nothing, which the
 * decoder's unprotected path needs (a string key may have to be made, and
 * that can raise). */
static const char box_key = 'b';
static const char loaded_key = 'l';

/* Writes v as a uvar at w and returns its length (1 to 10). */
static size_t uvar_write(unsigned char *w, uint64_t v) {
  size_t n = 0;
  do {
    unsigned char c = v & 0x7f;
    v >>= 7;
    w[n++] = c | (v ? 0x80 : 0);
  } while (v);
  return n;
}

static size_t uvar_len(uint64_t v) {
  size_t n = 1;
  while (v >>= 7)
    n++;
  return n;
}

static void u64_write(unsigned char *w, uint64_t v) {
  for (int i = 0; i < 8; i++)
    w[i] = (unsigned char)(v >> (8 * i));
}

static uint64_t u64_read(const unsigned char *p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; i++)
    v |= (uint64_t)p[i] << (8 * i);
  return v;
}

/* A reader of encoded bytes. */
typedef struct {
  const unsigned char *p;
  size_t n; /* bytes remaining at p */
  int refs; /* the message has F_REFS: tables and functions are recorded */
  int nrefs;
  int depth;
} decoder;

enum { RD_OK, RD_TRUNCATED, RD_BAD };

/* Reads a uvar; never raises (the unprotected decoder uses it too). */
static int rd_uvar(decoder *d, uint64_t *v) {
  *v = 0;
  for (int i = 0; i < 10; i++) {
    if (d->n == 0) return RD_TRUNCATED;
    unsigned c = *d->p++;
    d->n--;
    if (i == 9 && c > 1) return RD_BAD;
    *v |= (uint64_t)(c & 0x7f) << (7 * i);
    if (!(c & 0x80)) return RD_OK;
  }
  return RD_BAD;
}

/* ---- encoding ---- */

/* Encoded values that need no encoder: the header, then nil, booleans,
 * numbers and strings. Their size is known before writing, so they go
 * straight into a block of that size. */

/* Returns the encoded size of the n values from first (absolute) if they
 * are all nil, booleans, numbers or strings, else 0. */
static size_t scalars_size(lua_State *L, int first, int n) {
  if (n < 0) n = 0;
  size_t size = MAGIC_LEN + 2 + uvar_len((uint64_t)n);
  for (int i = 0; i < n; i++) {
    size_t len;
    switch (lua_type(L, first + i)) {
      case LUA_TNIL:
      case LUA_TBOOLEAN:
        size += 1;
        break;
      case LUA_TNUMBER:
        size += 9;
        break;
      case LUA_TSTRING:
        lua_tolstring(L, first + i, &len);
        if (len > SIZE_MAX - 11 - size) return 0; /* let put fail */
        size += 1 + uvar_len(len) + len;
        break;
      default:
        return 0;
    }
  }
  return size;
}

/* Writes the number at idx: its tag and 8 bytes. */
static void number_write(lua_State *L, int idx, unsigned char *w) {
  if (lua_isinteger(L, idx)) {
    *w = T_INT;
    u64_write(w + 1, (uint64_t)lua_tointeger(L, idx));
  } else {
    lua_Number x = lua_tonumber(L, idx);
    uint64_t bits;
    memcpy(&bits, &x, 8);
    *w = T_FLOAT;
    u64_write(w + 1, bits);
  }
}

/* Writes what scalars_size measured. */
static void scalars_write(lua_State *L, int first, int n, unsigned char *w) {
  if (n < 0) n = 0;
  memcpy(w, MAGIC, MAGIC_LEN);
  w += MAGIC_LEN;
  *w++ = VERSION;
  *w++ = 0; /* flags */
  w += uvar_write(w, (uint64_t)n);
  for (int i = 0; i < n; i++) {
    int idx = first + i;
    size_t len;
    const char *s;
    switch (lua_type(L, idx)) {
      case LUA_TNIL:
        *w++ = T_NIL;
        break;
      case LUA_TBOOLEAN:
        *w++ = lua_toboolean(L, idx) ? T_TRUE : T_FALSE;
        break;
      case LUA_TNUMBER:
        number_write(L, idx, w);
        w += 9;
        break;
      default: /* a string: scalars_size let nothing else through */
        s = lua_tolstring(L, idx, &len);
        *w++ = T_STR;
        w += uvar_write(w, len);
        memcpy(w, s, len);
        w += len;
    }
  }
}

/* One slot of the encoder's map of the tables and functions met, by
 * address (open addressing, at most half full). A slot is empty unless its
 * stamp is the current encode's: a new encode, after a failed one too,
 * empties the map by bumping the stamp, without a walk. The map anchors
 * nothing: all it holds is reachable from the arguments while the encode,
 * which runs no Lua code and changes no table, lasts, and what a weak table
 * loses meanwhile is never met again; so no address is reused by another
 * value met. */
typedef struct {
  const void *key; /* lua_topointer: unique among live tables and closures */
  uint32_t stamp;
  uint32_t index; /* its reference index, from 1 */
} refslot;

/* The encoder's box: one per state (encoding runs no Lua code, so it
 * never nests), kept in the registry; __gc frees both blocks. */
typedef struct {
  tulua__bytes out; /* the output, base[0..len) (pos stays 0) */
  refslot *refs; /* malloc'd; nslots is 0 or a power of 2 */
  size_t nslots;
  uint32_t stamp; /* the current encode's, never 0 */
} xbox;

/* Beyond these, a box lets go of its blocks after the encode that grew
 * them: one large message must not pin its memory for every later one. */
#define BOX_KEEP_BYTES ((size_t)64 << 10)
#define BOX_KEEP_SLOTS ((size_t)4096)

enum { SEG_ARG, SEG_KEY, SEG_UPVAL, SEG_INDEX };

/* One step of the path of the value being encoded. */
typedef struct {
  int kind;
  int arg; /* SEG_ARG: the argument number */
  int key; /* SEG_KEY: stack index of the key */
  const char *name; /* SEG_UPVAL: the upvalue's name (its function lives) */
  lua_Integer index; /* SEG_INDEX: the key, an index of the array */
} seg;

typedef struct {
  lua_State *L;
  xbox *b;
  int box; /* stack index of the box */
  int names; /* stack index: value -> "module" or "module\0field", or nil */
  int globals; /* stack index: the globals table */
  int dumps; /* stack index: function -> its fingerprint, length and
                bytecode as written (weak keys) */
  int fresh_names; /* names was built during this encode */
  const char *context; /* refusals read "<where>context: <path>: ...", or
                          NULL: "<path>: ..." */
  uint32_t nrefs;
  int depth;
  int nsegs;
  seg path[TULUA_TRANSFER_MAX_DEPTH + 2];
} encoder;

static int box_gc(lua_State *L) {
  xbox *b = lua_touserdata(L, 1);
  tulua__bytes_free(&b->out);
  free(b->refs);
  b->refs = NULL;
  b->nslots = 0;
  return 0;
}

/* Makes room for n more bytes and returns where they go; the caller writes
 * all n. */
static unsigned char *grow(encoder *e, size_t n) {
  xbox *b = e->b;
  if (tulua__bytes_reserve(&b->out, n) < 0)
    luaL_error(e->L, "not enough memory");
  unsigned char *w = (unsigned char *)b->out.base + b->out.len;
  b->out.len += n;
  return w;
}

static void put(encoder *e, const void *p, size_t n) {
  if (n > 0) memcpy(grow(e, n), p, n);
}

static void put_byte(encoder *e, int c) {
  *grow(e, 1) = (unsigned char)c;
}

static void put_uvar(encoder *e, uint64_t v) {
  unsigned char tmp[10];
  put(e, tmp, uvar_write(tmp, v));
}

static void put_lstr(encoder *e, const char *s, size_t n) {
  put_uvar(e, n);
  put(e, s, n);
}

static size_t ref_hash(const void *p) {
  uint64_t x = (uint64_t)(uintptr_t)p;
  x ^= x >> 33;
  x *= UINT64_C(0xff51afd7ed558ccd);
  x ^= x >> 33;
  return (size_t)x;
}

/* Returns the reference index of the value at address p, or 0 if this
 * encode has not met it. */
static uint32_t ref_find(const xbox *b, const void *p) {
  if (b->nslots == 0) return 0;
  size_t mask = b->nslots - 1;
  for (size_t i = ref_hash(p) & mask;; i = (i + 1) & mask) {
    const refslot *s = &b->refs[i];
    if (s->stamp != b->stamp) return 0;
    if (s->key == p) return s->index;
  }
}

static void ref_insert(refslot *refs, size_t nslots, refslot s) {
  size_t mask = nslots - 1, i = ref_hash(s.key) & mask;
  while (refs[i].stamp == s.stamp)
    i = (i + 1) & mask;
  refs[i] = s;
}

/* Gives the value at address p the next reference index. */
static void ref_add(encoder *e, const void *p) {
  xbox *b = e->b;
  if (e->nrefs == UINT32_MAX) luaL_error(e->L, "not enough memory");
  if ((size_t)e->nrefs + 1 > b->nslots / 2) {
    size_t n = b->nslots ? b->nslots * 2 : 16;
    if (n > SIZE_MAX / sizeof(refslot)) luaL_error(e->L, "not enough memory");
    refslot *refs = calloc(n, sizeof *refs); /* stamp 0: empty */
    if (refs == NULL) luaL_error(e->L, "not enough memory");
    for (size_t i = 0; i < b->nslots; i++)
      if (b->refs[i].stamp == b->stamp) ref_insert(refs, n, b->refs[i]);
    free(b->refs);
    b->refs = refs;
    b->nslots = n;
  }
  ref_insert(b->refs, b->nslots, (refslot){p, b->stamp, ++e->nrefs});
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
  if (e->context != NULL) { /* as luaL_error in the caller's C function */
    luaL_where(L, 1);
    luaL_addvalue(&b);
    lua_pushfstring(L, "%s: ", e->context);
    luaL_addvalue(&b);
  }
  for (int i = 0; i < e->nsegs; i++) {
    const seg *s = &e->path[i];
    if (s->kind == SEG_ARG) {
      lua_pushfstring(L, "argument #%d", s->arg);
    } else if (s->kind == SEG_UPVAL) {
      lua_pushfstring(L, ".upvalue '%s'", s->name);
    } else if (s->kind == SEG_INDEX) {
      lua_pushfstring(L, "[%I]", (LUAI_UACINT)s->index);
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
  lua_setiuservalue(L, e->box, 2);
  lua_pushinteger(L, nmods);
  lua_setiuservalue(L, e->box, 3);
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
  int box = e->box;
  if (!force) {
    int same = lua_getiuservalue(L, box, 3) == LUA_TNUMBER &&
               lua_tointeger(L, -1) == nmods;
    lua_pop(L, 1);
    if (same && lua_getiuservalue(L, box, 2) == LUA_TTABLE) {
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

/* Writes T_REF and returns 1 if this encode met the table or Lua function
 * at idx before, else returns 0. */
static int put_ref(encoder *e, int idx) {
  uint32_t i = ref_find(e->b, lua_topointer(e->L, idx));
  if (i == 0) return 0;
  put_byte(e, T_REF);
  put_uvar(e, i);
  e->b->out.base[MAGIC_LEN + 1] |= F_REFS;
  return 1;
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
  put_byte(e, T_TABLE);
  /* one byte each for the array's length and the pair count, widened
   * after the values if they are 128 or more: counting them first would
   * walk the table twice */
  size_t at = e->b->out.len;
  put(e, "\0\0", 2);
  /* the array, t[1] up to the first nil, as values alone: no keys to
   * write and read, and the decoder sizes the table's array at once */
  lua_Integer n = 0;
  while (lua_rawgeti(L, idx, n + 1) != LUA_TNIL) {
    n++;
    push_seg(e, (seg){SEG_INDEX, 0, 0, NULL, n});
    enc_value(e, lua_gettop(L));
    e->nsegs--;
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
  uint64_t count = 0;
  lua_pushnil(L);
  while (lua_next(L, idx)) { /* stack: ..., key, value */
    int top = lua_gettop(L);
    if (n > 0 && lua_isinteger(L, top - 1)) {
      lua_Integer k = lua_tointeger(L, top - 1);
      if (k >= 1 && k <= n) { /* in the array */
        lua_pop(L, 1);
        continue;
      }
    }
    push_seg(e, (seg){SEG_KEY, 0, top - 1, NULL, 0});
    enc_value(e, top - 1);
    enc_value(e, top);
    e->nsegs--;
    lua_pop(L, 1);
    count++;
  }
  size_t wn = uvar_len((uint64_t)n), wc = uvar_len(count);
  if (wn + wc > 2) {
    size_t body = e->b->out.len - at - 2;
    grow(e, wn + wc - 2);
    memmove(e->b->out.base + at + wn + wc, e->b->out.base + at + 2, body);
  }
  uvar_write((unsigned char *)e->b->out.base + at, (uint64_t)n);
  uvar_write((unsigned char *)e->b->out.base + at + wn, count);
  e->depth--;
}

static int dump_writer(lua_State *L, const void *p, size_t n, void *ud) {
  xbox *b = ud; /* must not raise */
  (void)L;
  return tulua__bytes_append(&b->out, p, n) < 0;
}

/* The fingerprint of a bytecode block: FNV-1a, then mixed so that its low
 * bits, which place it in the decoder's cache, depend on every byte.
 * Computed once per function, when it is dumped. */
static uint64_t fingerprint(const unsigned char *p, size_t n) {
  uint64_t h = UINT64_C(0xcbf29ce484222325);
  for (size_t i = 0; i < n; i++) {
    h ^= p[i];
    h *= UINT64_C(0x100000001b3);
  }
  h ^= h >> 33;
  h *= UINT64_C(0xc4ceb9fe1a85ec53);
  h ^= h >> 33;
  return h;
}

/* Whether the upvalues of the function at idx are only _ENV (or none):
 * then all of it is the same bytes every time. Sets *nups. */
static int env_only(lua_State *L, int idx, int *nups) {
  const char *name;
  int only = 1;
  *nups = 0;
  while ((name = lua_getupvalue(L, idx, *nups + 1)) != NULL) {
    only = only && strcmp(name, "_ENV") == 0;
    lua_pop(L, 1);
    ++*nups;
  }
  return only;
}

/* Returns the length of the fingerprint, length and bytecode at the
 * start of s, a cached dump of n bytes, or 0 if s is not one: the debug
 * library can reach the cache, and a bad entry is then dumped again. */
static size_t dump_head(const char *s, size_t n) {
  if (s == NULL || n < 9) return 0;
  decoder d = {(const unsigned char *)s + 8, n - 8, 0, 0, 0};
  uint64_t code;
  if (rd_uvar(&d, &code) != RD_OK || code > d.n) return 0;
  return n - d.n + (size_t)code;
}

/* Writes the function at idx. The cache of dumps keeps, per function, the
 * bytes from its fingerprint to its bytecode, and after them the upvalue
 * count and T_GLOBALS when _ENV is its only upvalue: a pool's job
 * function is then one copy, with no dump and no look at its upvalues. */
static void enc_function(encoder *e, int idx) {
  lua_State *L = e->L;
  enter(e);
  put_byte(e, T_FUNC);
  lua_pushvalue(L, idx);
  lua_rawget(L, e->dumps);
  size_t n;
  const char *s = lua_tolstring(L, -1, &n);
  size_t head = dump_head(s, n);
  if (head > 0) { /* dumped before */
    put(e, s, n);
    lua_pop(L, 1);
    if (n > head) { /* the upvalues came too */
      e->depth--;
      return;
    }
  } else {
    lua_pop(L, 1);
    /* the fingerprint and a 10-byte length go before the bytecode; both
     * are known after the dump, and the length then shrinks to its size */
    size_t at = e->b->out.len;
    grow(e, 18);
    lua_pushvalue(L, idx);
    int rc = lua_dump(L, dump_writer, e->b, 0); /* 0: keep line info */
    if (rc != 0) luaL_error(L, "not enough memory");
    unsigned char *p =
        (unsigned char *)e->b->out.base + at; /* the dump moved it */
    size_t len = e->b->out.len - at - 18;
    size_t w = uvar_len(len);
    u64_write(p, fingerprint(p + 18, len));
    memmove(p + 8 + w, p + 18, len);
    uvar_write(p + 8, len);
    e->b->out.len -= 10 - w;
    int nups, only = env_only(L, idx, &nups);
    if (only) {
      put_byte(e, nups);
      for (int i = 0; i < nups; i++)
        put_byte(e, T_GLOBALS);
    }
    /* stack: ..., function; function -> these bytes */
    lua_pushlstring(L, e->b->out.base + at, e->b->out.len - at);
    lua_rawset(L, e->dumps);
    if (only) {
      e->depth--;
      return;
    }
  }
  int nups;
  env_only(L, idx, &nups);
  put_byte(e, nups); /* at most 255 in Lua */
  for (int i = 1; i <= nups; i++) {
    const char *name = lua_getupvalue(L, idx, i);
    if (strcmp(name, "_ENV") == 0) { /* whatever it holds: a sandbox too */
      put_byte(e, T_GLOBALS);
      lua_pop(L, 1);
      continue;
    }
    push_seg(e, (seg){SEG_UPVAL, 0, 0, name, 0});
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
      number_write(L, idx, grow(e, 9));
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
      if (put_ref(e, idx) || put_name(e, idx)) return;
      ref_add(e, lua_topointer(L, idx)); /* named values take no index */
      enc_table(e, idx);
      return;
    case LUA_TFUNCTION:
      if (lua_iscfunction(L, idx)) {
        if (!put_name(e, idx)) refuse(e, "cannot transfer a C function");
        return;
      }
      if (put_ref(e, idx)) return;
      ref_add(e, lua_topointer(L, idx));
      enc_function(e, idx);
      return;
    default:
      lua_pushfstring(L, "cannot transfer a %s", luaL_typename(L, idx));
      refuse(e, lua_tostring(L, -1));
  }
}

/* Pushes this state's box, made on first use: a pool encodes a job per
 * submit, and a userdata with __gc and its tables each time cost more than
 * the job. [-0, +1, m] */
static xbox *push_box(lua_State *L) {
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &box_key) == LUA_TUSERDATA)
    return lua_touserdata(L, -1);
  lua_pop(L, 1);
  xbox *b = lua_newuserdatauv(L, sizeof(xbox), 3);
  memset(b, 0, sizeof *b);
  lua_createtable(L, 0, 1);
  lua_pushcfunction(L, box_gc);
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
  /* uservalues 2 and 3: the map of names and its module count */
  lua_pushvalue(L, -1);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &box_key);
  return b;
}

/* Encodes the n values from first (absolute) with the general encoder and
 * pushes the box holding the result. [-0, +1, m] */
static xbox *encode_to_box(lua_State *L, int first, int n,
                           const char *context) {
  encoder e;
  e.context = context;
  luaL_checkstack(L, 8, NULL);
  e.L = L;
  e.b = push_box(L);
  e.box = lua_gettop(L);
  xbox *b = e.b;
  b->out.len = 0; /* a buffer left by a failed encode is reused */
  if (b->out.cap > BOX_KEEP_BYTES) /* a large one (a failed encode's) */
    tulua__bytes_free(&b->out);
  if (b->nslots > BOX_KEEP_SLOTS) {
    free(b->refs);
    b->refs = NULL;
    b->nslots = 0;
  }
  if (++b->stamp == 0) { /* wrapped: old stamps could come back */
    if (b->refs != NULL) memset(b->refs, 0, b->nslots * sizeof *b->refs);
    b->stamp = 1;
  }
  lua_getiuservalue(L, e.box, 1);
  e.dumps = lua_gettop(L);
  lua_pushnil(L);
  e.names = lua_gettop(L);
  lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_GLOBALS);
  e.globals = lua_gettop(L);
  e.nrefs = 0;
  e.depth = e.nsegs = e.fresh_names = 0;
  put(&e, MAGIC, MAGIC_LEN);
  put_byte(&e, VERSION);
  put_byte(&e, 0); /* flags: F_REFS is set by the first T_REF */
  put_uvar(&e, (uint64_t)(n < 0 ? 0 : n));
  for (int i = 0; i < n; i++) {
    e.path[0] = (seg){SEG_ARG, i + 1, 0, NULL, 0};
    e.nsegs = 1;
    enc_value(&e, first + i);
  }
  if (b->nslots > BOX_KEEP_SLOTS) { /* as above, for a large success */
    free(b->refs);
    b->refs = NULL;
    b->nslots = 0;
  }
  lua_pop(L, 3);
  return b;
}

char *tulua__transfer_encode(lua_State *L, int first, int n, size_t *len) {
  first = lua_absindex(L, first);
  size_t size = scalars_size(L, first, n);
  if (size > 0) {
    char *p = malloc(size);
    if (p == NULL) luaL_error(L, "not enough memory");
    scalars_write(L, first, n, (unsigned char *)p);
    *len = size;
    return p;
  }
  xbox *b = encode_to_box(L, first, n, NULL);
  char *p;
  if (b->out.cap > BOX_KEEP_BYTES) { /* ours now: the box no longer frees it */
    p = b->out.base;
    b->out.base = NULL;
    b->out.cap = 0;
  } else { /* a copy of the exact size; the box keeps its buffer */
    p = malloc(b->out.len);
    if (p == NULL) luaL_error(L, "not enough memory");
    memcpy(p, b->out.base, b->out.len);
  }
  *len = b->out.len;
  lua_pop(L, 1);
  return p;
}

const char *tulua__transfer_encode_temp(lua_State *L, int first, int n,
                                        size_t *len, const char *context) {
  first = lua_absindex(L, first);
  size_t size = scalars_size(L, first, n);
  xbox *b;
  if (size > 0) {
    b = push_box(L);
    if (b->out.cap < size || b->out.cap > BOX_KEEP_BYTES) { /* as grow would */
      size_t cap = size > 256 ? size : 256;
      char *np = realloc(b->out.base, cap);
      if (np == NULL) luaL_error(L, "not enough memory");
      b->out.base = np;
      b->out.cap = cap;
    }
    scalars_write(L, first, n, (unsigned char *)b->out.base);
    b->out.len = size;
  } else {
    b = encode_to_box(L, first, n, context);
  }
  *len = b->out.len;
  lua_pop(L, 1); /* the registry keeps the box */
  return b->out.base;
}

const char *tulua__transfer_dump(lua_State *L, int idx, size_t *len) {
  idx = lua_absindex(L, idx);
  int nups;
  if (lua_type(L, idx) != LUA_TFUNCTION || lua_iscfunction(L, idx) ||
      !env_only(L, idx, &nups))
    return NULL;
  for (int tries = 0; tries < 2; tries++) {
    push_box(L);
    lua_getiuservalue(L, -1, 1);
    lua_pushvalue(L, idx);
    lua_rawget(L, -2);
    size_t n;
    const char *s = lua_tolstring(L, -1, &n);
    lua_pop(L, 3); /* the cache keeps s while the function lives */
    size_t head = dump_head(s, n);
    if (head > 0) { /* fingerprint, length, bytecode */
      decoder d = {(const unsigned char *)s + 8, n - 8, 0, 0, 0};
      uint64_t code;
      rd_uvar(&d, &code); /* dump_head checked it */
      *len = (size_t)code;
      return (const char *)d.p;
    }
    encode_to_box(L, idx, 1, NULL); /* dumps it into the cache */
    lua_pop(L, 1);
  }
  luaL_error(L, "cannot dump the function");
  return NULL;
}

/* ---- decoding ---- */

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

/* Functions without upvalues of their own (none, or only _ENV, which is
 * the receiver's globals) are immutable: a worker that gets the same one
 * job after job loads it once. The cache finds them by the fingerprint the
 * encoder sent, then compares the bytecode it kept: the fingerprint costs
 * the decoder nothing (the encoder made it once per function) and is
 * never trusted, so a collision, made on purpose or not, only costs a
 * load. Keyed by the bytecode as a Lua string instead, each decode would
 * make and hash a long string of all of it. The functions are anchored by
 * registry references; the cache, a userdata in the registry, frees its
 * copies of the bytecode when the state closes. It empties when it would
 * pass LOADED_MAX functions or LOADED_BYTES of bytecode. */
#define LOADED_MAX   256
#define LOADED_SLOTS 512 /* open addressing, at most half full */
#define LOADED_BYTES ((size_t)4 << 20)
#define LOADED_BIG   (LOADED_BYTES / 16) /* larger blocks: never kept */

typedef struct {
  uint64_t fp;
  char *code; /* malloc'd copy of the bytecode; NULL: a free slot */
  size_t len;
  int ref; /* the function, in the registry */
  int nups; /* as the message said: 0, or 1 for _ENV */
} loaded_fn;

typedef struct {
  int count;
  size_t bytes;
  loaded_fn slot[LOADED_SLOTS];
} loaded_cache;

static size_t loaded_slot(uint64_t fp) {
  return (size_t)(fp ^ (fp >> 32)) & (LOADED_SLOTS - 1);
}

/* Pushes the function loaded before from these bytes and returns 1, or
 * returns 0. Allocates nothing and never raises (the unprotected path
 * calls it); the caller has checked the stack for one slot. [-0, +(0|1),
 * -] */
static int loaded_push(lua_State *L, uint64_t fp, const char *p, size_t n,
                       int nups) {
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &loaded_key) != LUA_TUSERDATA) {
    lua_pop(L, 1);
    return 0;
  }
  const loaded_cache *c = lua_touserdata(L, -1);
  lua_pop(L, 1); /* the registry anchors it */
  for (size_t i = loaded_slot(fp); c->slot[i].code != NULL;
       i = (i + 1) & (LOADED_SLOTS - 1)) {
    const loaded_fn *f = &c->slot[i];
    if (f->fp == fp && f->len == n && f->nups == nups &&
        memcmp(f->code, p, n) == 0) {
      lua_rawgeti(L, LUA_REGISTRYINDEX, f->ref);
      return 1;
    }
  }
  return 0;
}

/* Empties the cache. Raises nothing (luaL_unref writes existing slots). */
static void loaded_clear(lua_State *L, loaded_cache *c) {
  for (size_t i = 0; i < LOADED_SLOTS; i++) {
    if (c->slot[i].code == NULL) continue;
    free(c->slot[i].code);
    luaL_unref(L, LUA_REGISTRYINDEX, c->slot[i].ref);
  }
  memset(c, 0, sizeof *c);
}

/* At lua_close: the registry and its references go with the state. */
static int loaded_gc(lua_State *L) {
  loaded_cache *c = luaL_checkudata(L, 1, LOADED_MT);
  for (size_t i = 0; i < LOADED_SLOTS; i++) {
    free(c->slot[i].code);
    c->slot[i].code = NULL;
  }
  c->count = 0;
  return 0;
}

/* #cache: how many functions it holds (for the tests). */
static int loaded_len(lua_State *L) {
  const loaded_cache *c = luaL_checkudata(L, 1, LOADED_MT);
  lua_pushinteger(L, c->count);
  return 1;
}

/* Keeps the function on top as loaded from the bytes of c, unless they
 * are too big or memory is short (then it is only not kept). [-0, +0, m]
 */
static void loaded_add(lua_State *L, uint64_t fp, const chunk *c, int nups) {
  if (c->n > LOADED_BIG) return;
  loaded_cache *lc;
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &loaded_key) == LUA_TUSERDATA) {
    lc = lua_touserdata(L, -1);
  } else {
    lua_pop(L, 1);
    lc = lua_newuserdatauv(L, sizeof *lc, 0);
    memset(lc, 0, sizeof *lc);
    if (luaL_newmetatable(L, LOADED_MT)) {
      lua_pushcfunction(L, loaded_gc);
      lua_setfield(L, -2, "__gc");
      lua_pushcfunction(L, loaded_len);
      lua_setfield(L, -2, "__len");
    }
    lua_setmetatable(L, -2);
    lua_pushvalue(L, -1);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &loaded_key);
  }
  /* stack: function, cache */
  if (lc->count >= LOADED_MAX || c->n > LOADED_BYTES - lc->bytes)
    loaded_clear(L, lc);
  lua_pushvalue(L, -2);
  int ref = luaL_ref(L, LUA_REGISTRYINDEX); /* may raise: before the copy */
  char *copy = malloc(c->n > 0 ? c->n : 1);
  if (copy == NULL) {
    luaL_unref(L, LUA_REGISTRYINDEX, ref);
    lua_pop(L, 1);
    return;
  }
  memcpy(copy, c->p, c->n);
  size_t i = loaded_slot(fp);
  while (lc->slot[i].code != NULL)
    i = (i + 1) & (LOADED_SLOTS - 1);
  lc->slot[i] = (loaded_fn){fp, copy, c->n, ref, nups};
  lc->count++;
  lc->bytes += c->n;
  lua_pop(L, 1);
}

/* The unprotected decoder: values that allocate nothing, hence cannot
 * raise. It knows no errors: anything else, malformed or not, is left to
 * the protected decoder, which reports errors as it always has. */

/* Pushes one such value and returns 1, or returns 0 (having pushed
 * nothing, maybe having read part of the value). [-0, +(1|0), -] */
static int push_plain(lua_State *L, decoder *d) {
  if (d->n == 0) return 0;
  int tag = *d->p++;
  d->n--;
  uint64_t u, len;
  lua_Number x;
  switch (tag) {
    case T_NIL:
      lua_pushnil(L);
      return 1;
    case T_FALSE:
    case T_TRUE:
      lua_pushboolean(L, tag == T_TRUE);
      return 1;
    case T_INT:
    case T_FLOAT:
      if (d->n < 8) return 0;
      u = u64_read(d->p);
      d->p += 8;
      d->n -= 8;
      if (tag == T_INT) {
        lua_pushinteger(L, (lua_Integer)u);
      } else {
        memcpy(&x, &u, 8);
        lua_pushnumber(L, x);
      }
      return 1;
    case T_GLOBALS:
      lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_GLOBALS);
      return 1;
    case T_FUNC: { /* only one that the cache holds */
      if (d->n < 8) return 0;
      uint64_t fp = u64_read(d->p);
      d->p += 8;
      d->n -= 8;
      if (rd_uvar(d, &len) != RD_OK || len >= d->n) return 0;
      const char *code = (const char *)d->p;
      d->p += len;
      d->n -= (size_t)len;
      int nups = *d->p++;
      d->n--;
      if (nups == 1) {
        if (d->n == 0 || *d->p != T_GLOBALS) return 0;
        d->p++;
        d->n--;
      } else if (nups != 0) {
        return 0;
      }
      return loaded_push(L, fp, code, (size_t)len, nups);
    }
    default:
      return 0;
  }
}

/* Where the protected decoder starts: at the header, or at the value
 * where the unprotected one stopped (the values before it pushed). */
typedef struct {
  const unsigned char *p; /* the header, or the first value not pushed */
  size_t n; /* bytes from p on */
  uint64_t left; /* values from p on */
  int resume; /* 0: p is the header */
} start;

/* Pushes the values of buf and returns their count if all are plain and
 * buf is valid. Else returns -1 and fills *st: either it stopped at the
 * header, having pushed nothing, or at a value that is not plain (a
 * string, a table...) or not valid, having pushed those before it; the
 * protected decoder carries on from there without reading them again.
 * [-0, +(n|k), -] */
static int decode_plain(lua_State *L, const char *buf, size_t len, start *st) {
  decoder d = {(const unsigned char *)buf, len, 0, 0, 0};
  uint64_t n;
  st->p = d.p;
  st->n = d.n;
  st->resume = 0;
  /* a message with references goes to the protected decoder whole: it
   * counts every table and function from the start */
  if (len < MAGIC_LEN + 2 || memcmp(buf, MAGIC, MAGIC_LEN) != 0 ||
      d.p[MAGIC_LEN] != VERSION || d.p[MAGIC_LEN + 1] != 0)
    return -1;
  d.p += MAGIC_LEN + 2;
  d.n -= MAGIC_LEN + 2;
  /* + 3: loaded_push's lookup, then lua_pcall's function and argument */
  if (rd_uvar(&d, &n) != RD_OK || n > d.n || n > INT_MAX - 16 ||
      !lua_checkstack(L, (int)n + 3))
    return -1;
  st->resume = 1;
  for (uint64_t i = 0; i < n; i++) {
    st->p = d.p; /* push_plain may stop halfway through the value */
    st->n = d.n;
    if (!push_plain(L, &d)) {
      st->left = n - i;
      return -1;
    }
  }
  if (d.n != 0) { /* the protected decoder reports the trailing bytes */
    st->p = d.p;
    st->n = d.n;
    st->left = 0;
    return -1;
  }
  return (int)n;
}

/* The protected decoder, under lua_pcall: every check raises its error. */

static int fail(lua_State *L, const char *what) {
  lua_pushfstring(L, "malformed transfer data (%s)", what);
  return lua_error(L);
}

static void need(lua_State *L, decoder *d, size_t k) {
  if (d->n < k) fail(L, "truncated");
}

static uint64_t get_uvar(lua_State *L, decoder *d) {
  uint64_t v;
  int rc = rd_uvar(d, &v);
  if (rc == RD_TRUNCATED) fail(L, "truncated");
  if (rc == RD_BAD) fail(L, "bad integer");
  return v;
}

static uint64_t get_u64(lua_State *L, decoder *d) {
  need(L, d, 8);
  uint64_t v = u64_read(d->p);
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

/* Records the table or function on top as the next reference, if the
 * message has any (slot 2 holds the reference table once one is needed):
 * most have none, and then no table is made. [-0, +0, m] */
static void add_ref(lua_State *L, decoder *d) {
  if (!d->refs) return;
  if (lua_isnil(L, 2)) {
    lua_newtable(L);
    lua_replace(L, 2);
  }
  lua_pushvalue(L, -1);
  lua_rawseti(L, 2, ++d->nrefs);
}

/* Every case of dec_value uses at most 8 slots (T_FIELD) and leaves one;
 * the API does not check, so a missing slot would write past the stack.
 * decode_main checks for all the values at once; a table or function
 * checks for itself, a key and a value. */
static void dec_enter(lua_State *L, decoder *d) {
  if (++d->depth > TULUA_TRANSFER_MAX_DEPTH) fail(L, "nesting deeper than 200");
  if (!lua_checkstack(L, 10)) fail(L, "too many values");
}

static void dec_table(lua_State *L, decoder *d) {
  dec_enter(L, d);
  uint64_t n = get_uvar(L, d);
  uint64_t count = get_uvar(L, d);
  /* a value takes a byte, a pair 2 */
  if (n > d->n || count > (d->n - n) / 2) fail(L, "truncated");
  /* presize a little only: nested tables each claiming the rest of the
   * input would otherwise reserve depth times its size */
  lua_createtable(L, n < ARRAY_PRESIZE ? (int)n : ARRAY_PRESIZE,
                  count < 64 ? (int)count : 64);
  add_ref(L, d);
  for (uint64_t i = 1; i <= n; i++) {
    dec_value(L, d);
    if (lua_isnil(L, -1)) fail(L, "nil in an array");
    lua_rawseti(L, -2, (lua_Integer)i);
  }
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

static void dec_function(lua_State *L, decoder *d) {
  dec_enter(L, d);
  uint64_t fp = get_u64(L, d);
  chunk c;
  c.p = get_bytes(L, d, &c.n);
  need(L, d, 1);
  int nups = *d->p++;
  d->n--;
  int shared = nups == 0 || (nups == 1 && d->n > 0 && *d->p == T_GLOBALS);
  if (shared && loaded_push(L, fp, c.p, c.n, nups)) {
    if (nups == 1) { /* its _ENV: already the globals */
      d->p++;
      d->n--;
    }
    add_ref(L, d);
    d->depth--;
    return;
  }
  chunk code = c; /* the loader's reader consumes c */
  load_block(L, &c, nups);
  add_ref(L, d);
  if ((nups > 0 && lua_getupvalue(L, -1, nups) == NULL) ||
      lua_getupvalue(L, -1 - (nups > 0), nups + 1) != NULL)
    fail(L, "upvalue count mismatch");
  if (nups > 0) lua_pop(L, 1);
  for (int i = 1; i <= nups; i++) {
    dec_value(L, d);
    lua_setupvalue(L, -2, i);
  }
  if (shared) loaded_add(L, fp, &code, nups);
  d->depth--;
}

static void dec_value(lua_State *L, decoder *d) {
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

/* Under lua_pcall: arg 1 is a start. Slot 2 holds the reference table,
 * values follow. */
static int decode_main(lua_State *L) {
  const start *st = lua_touserdata(L, 1);
  decoder d = {st->p, st->n, 0, 0, 0};
  if (st->resume) {
    lua_pushnil(L); /* no references (F_REFS starts at the header) */
    if (!lua_checkstack(L, (int)st->left + 10)) fail(L, "too many values");
    for (uint64_t i = 0; i < st->left; i++)
      dec_value(L, &d);
    if (d.n != 0) fail(L, "trailing bytes");
    return (int)st->left;
  }
  if (d.n < MAGIC_LEN + 1 || memcmp(d.p, MAGIC, MAGIC_LEN) != 0)
    fail(L, "bad header");
  if (d.p[MAGIC_LEN] != VERSION) {
    lua_pushfstring(L, "unsupported version %d", (int)d.p[MAGIC_LEN]);
    fail(L, lua_tostring(L, -1));
  }
  d.p += MAGIC_LEN + 1;
  d.n -= MAGIC_LEN + 1;
  need(L, &d, 1);
  if (*d.p & ~F_REFS) {
    lua_pushfstring(L, "unsupported flags %d", (int)*d.p);
    fail(L, lua_tostring(L, -1));
  }
  d.refs = *d.p & F_REFS;
  d.p++;
  d.n--;
  lua_pushnil(L); /* the reference table, made by the first table met */
  uint64_t n = get_uvar(L, &d);
  if (n > d.n || n > INT_MAX - 16) fail(L, "truncated"); /* a value: 1 byte */
  if (!lua_checkstack(L, (int)n + 10)) fail(L, "too many values");
  for (uint64_t i = 0; i < n; i++)
    dec_value(L, &d);
  if (d.n != 0) fail(L, "trailing bytes");
  return (int)n;
}

int tulua__transfer_decode(lua_State *L, const char *buf, size_t len) {
  int base = lua_gettop(L);
  start st;
  int n = decode_plain(L, buf, len, &st);
  if (n >= 0) return n;
  lua_pushcfunction(L, decode_main);
  lua_pushlightuserdata(L, &st);
  if (lua_pcall(L, 1, LUA_MULTRET, 0) != LUA_OK) {
    if (lua_type(L, -1) != LUA_TSTRING) {
      lua_pop(L, 1);
      lua_pushliteral(L, "malformed transfer data (error object)");
    }
    if (lua_gettop(L) > base + 1) { /* values of decode_plain below it */
      lua_replace(L, base + 1);
      lua_settop(L, base + 1);
    }
    return -1;
  }
  return lua_gettop(L) - base;
}

/* Under lua_pcall: arg 1 a chunk; pushes its function, loaded once per
 * state (the cache of functions without upvalues of their own). */
static int load_main(lua_State *L) {
  chunk c = *(const chunk *)lua_touserdata(L, 1);
  uint64_t fp = fingerprint((const unsigned char *)c.p, c.n);
  if (loaded_push(L, fp, c.p, c.n, 1) || loaded_push(L, fp, c.p, c.n, 0))
    return 1;
  chunk code = c; /* the loader's reader consumes c */
  load_block(L, &c, 1); /* its first upvalue, if any, is the globals */
  int nups = lua_getupvalue(L, -1, 1) != NULL;
  if (nups) lua_pop(L, 1);
  if (lua_getupvalue(L, -1, 2) != NULL) fail(L, "more upvalues than _ENV");
  loaded_add(L, fp, &code, nups);
  return 1;
}

int tulua__transfer_load(lua_State *L, const char *code, size_t len) {
  chunk c = {code, len};
  lua_pushcfunction(L, load_main);
  lua_pushlightuserdata(L, &c);
  if (lua_pcall(L, 1, 1, 0) == LUA_OK) return 0;
  if (lua_type(L, -1) != LUA_TSTRING) {
    lua_pop(L, 1);
    lua_pushliteral(L, "cannot load the function (error object)");
  }
  return -1;
}

/* ---- the module ---- */

/* transfer.encode(...) -> string */
static int transfer_encode(lua_State *L) {
  int n = lua_gettop(L);
  size_t size = scalars_size(L, 1, n);
  if (size > 0) {
    luaL_Buffer B;
    char *w = luaL_buffinitsize(L, &B, size);
    scalars_write(L, 1, n, (unsigned char *)w);
    luaL_pushresultsize(&B, size);
    return 1;
  }
  xbox *b = encode_to_box(L, 1, n, NULL);
  lua_pushlstring(L, b->out.base,
                  b->out.len); /* on error, the box still owns it */
  if (b->out.cap > BOX_KEEP_BYTES) tulua__bytes_free(&b->out);
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
