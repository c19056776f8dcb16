/* alloc.c: the Lua allocator of a runtime (lua_Alloc), no libuv concept.
 *
 * Small blocks come from size classes carved out of 256 KiB pages, with no
 * header: Lua passes a block's size back when it frees or resizes it, so
 * the class is known. glibc's malloc spends 8 to 16 bytes on every block;
 * a suspended task is five blocks (thread, stack, call frames), so this
 * saves about 80 bytes per task and makes small allocations a list pop.
 * Freed blocks stay in their class for reuse; pages go back to the system
 * when the runtime closes. Blocks above SMALL_MAX go to malloc. One heap per
 * runtime, used from the runtime's thread only. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "runtime.h"

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/lsan_interface.h>
#define POISON(p, n)   ASAN_POISON_MEMORY_REGION((p), (n))
#define UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION((p), (n))
/* LeakSanitizer must see the pointers Lua keeps in mapped pages */
#define ROOT(p, n)   __lsan_register_root_region((p), (n))
#define UNROOT(p, n) __lsan_unregister_root_region((p), (n))
#else
#define POISON(p, n)   ((void)(p), (void)(n))
#define UNPOISON(p, n) ((void)(p), (void)(n))
#define ROOT(p, n)     ((void)(p), (void)(n))
#define UNROOT(p, n)   ((void)(p), (void)(n))
#endif

#define GRAIN     16
#define SMALL_MAX 2048
#define PAGE_SIZE (256 * 1024)

/* Pages (256 KiB, mapped) are aligned to their size, so that a block finds its
 * heap (and so its runtime) from its address: see tulua__heap_of. */
typedef struct page {
  struct page *next;
  tulua__heap *heap;
  /* blocks follow, GRAIN-aligned */
} page;

#define PAGE_HEAD ((sizeof(page) + GRAIN - 1) / GRAIN * GRAIN)

static size_t class_of(size_t n) {
  return (n + GRAIN - 1) / GRAIN - 1;
}

/* Maps a page aligned to its size: twice the size, trimmed at both ends
 * (malloc's aligned_alloc of this size costs an extra page of memory). */
static page *page_new(void) {
  char *p = mmap(NULL, 2 * PAGE_SIZE, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return NULL;
  uintptr_t a = ((uintptr_t)p + PAGE_SIZE - 1) & ~(uintptr_t)(PAGE_SIZE - 1);
  size_t head = a - (uintptr_t)p;
  if (head > 0) munmap(p, head);
  munmap((char *)a + PAGE_SIZE, PAGE_SIZE - head);
  ROOT((void *)a, PAGE_SIZE);
  return (page *)a;
}

void *tulua__heap_get(tulua__heap *h, size_t n) {
  size_t c = class_of(n), size = (c + 1) * GRAIN;
  void *p = h->free[c];
  if (p != NULL) {
    UNPOISON(p, sizeof(void *));
    h->free[c] = *(void **)p;
  } else {
    if ((size_t)(h->end - h->cur) < size) {
      page *pg = page_new();
      if (pg == NULL) return NULL;
      pg->heap = h;
      pg->next = h->pages;
      h->pages = pg;
      h->cur = (char *)pg + PAGE_HEAD;
      h->end = (char *)pg + PAGE_SIZE;
      POISON(h->cur, (size_t)(h->end - h->cur));
    }
    p = h->cur;
    h->cur += size;
  }
  UNPOISON(p, n);
  return p;
}

void tulua__heap_put(tulua__heap *h, void *p, size_t n) {
  size_t c = class_of(n);
  POISON(p, (c + 1) * GRAIN);
  UNPOISON(p, sizeof(void *));
  *(void **)p = h->free[c];
  POISON(p, sizeof(void *));
  h->free[c] = p;
}

void *tulua__alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  tulua__heap *h = ud;
  if (ptr == NULL) osize = 0; /* then osize is the kind of object */
  if (nsize == 0) {
    if (ptr == NULL) return NULL;
    if (osize <= SMALL_MAX)
      tulua__heap_put(h, ptr, osize);
    else
      free(ptr);
    return NULL;
  }
  if (ptr == NULL)
    return nsize <= SMALL_MAX ? tulua__heap_get(h, nsize) : malloc(nsize);
  if (osize > SMALL_MAX && nsize > SMALL_MAX) return realloc(ptr, nsize);
  if (osize <= SMALL_MAX && nsize <= SMALL_MAX &&
      class_of(osize) == class_of(nsize)) {
    UNPOISON(ptr, nsize);
    return ptr;
  }
  void *n = nsize <= SMALL_MAX ? tulua__heap_get(h, nsize) : malloc(nsize);
  if (n == NULL) return NULL; /* Lua keeps the old block */
  memcpy(n, ptr, osize < nsize ? osize : nsize);
  if (osize <= SMALL_MAX)
    tulua__heap_put(h, ptr, osize);
  else
    free(ptr);
  return n;
}

tulua__heap *tulua__heap_of(const void *block) {
  return ((const page *)((uintptr_t)block & ~(uintptr_t)(PAGE_SIZE - 1)))->heap;
}

void tulua__heap_free(tulua__heap *h) {
  page *pg = h->pages;
  while (pg != NULL) {
    page *next = pg->next;
    UNPOISON(pg, PAGE_SIZE);
    UNROOT(pg, PAGE_SIZE);
    munmap(pg, PAGE_SIZE);
    pg = next;
  }
  memset(h, 0, sizeof *h);
}
