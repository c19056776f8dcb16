/* queue.h: the one intrusive queue and container_of of host/ and bindings/.
 *
 * A queue is a circular doubly linked list through a tulua__queue embedded
 * in each element, with a tulua__queue of its own as the head (the shape of
 * libuv's queue.h). Elements are found back with tulua__container_of.
 * Nothing here allocates, and an unlinked node points at itself, so that
 * removing a node twice is harmless and tulua__queue_linked tells whether a
 * node is in some queue. */
#ifndef TULUA_QUEUE_H
#define TULUA_QUEUE_H

#include <stddef.h>

/* Returns the struct of the given type whose member is at ptr. */
#define tulua__container_of(ptr, type, member)                                 \
  ((type *)((char *)(ptr)-offsetof(type, member)))

typedef struct tulua__queue {
  struct tulua__queue *next, *prev;
} tulua__queue;

/* Makes q an empty queue head, or an unlinked node. */
static inline void tulua__queue_init(tulua__queue *q) {
  q->next = q->prev = q;
}

/* Returns 1 if the queue headed by h has no element. */
static inline int tulua__queue_empty(const tulua__queue *h) {
  return h->next == h;
}

/* Returns 1 if the node q (initialised) is in a queue. */
static inline int tulua__queue_linked(const tulua__queue *q) {
  return q->next != q;
}

/* Returns the first node of the queue headed by h, or NULL if it is empty. */
static inline tulua__queue *tulua__queue_head(const tulua__queue *h) {
  return h->next == h ? NULL : h->next;
}

/* Appends the unlinked node q to the queue headed by h. */
static inline void tulua__queue_insert_tail(tulua__queue *h, tulua__queue *q) {
  q->next = h;
  q->prev = h->prev;
  h->prev->next = q;
  h->prev = q;
}

/* Puts the unlinked node q first in the queue headed by h. */
static inline void tulua__queue_insert_head(tulua__queue *h, tulua__queue *q) {
  q->prev = h;
  q->next = h->next;
  h->next->prev = q;
  h->next = q;
}

/* Takes q out of its queue and leaves it unlinked; a no-op if it is. */
static inline void tulua__queue_remove(tulua__queue *q) {
  q->prev->next = q->next;
  q->next->prev = q->prev;
  q->next = q->prev = q;
}

/* Removes and returns the first node of the queue headed by h, or NULL. */
static inline tulua__queue *tulua__queue_pop(tulua__queue *h) {
  tulua__queue *q = tulua__queue_head(h);
  if (q != NULL) tulua__queue_remove(q);
  return q;
}

/* Moves every node of the queue headed by from to the end of the one
 * headed by to, in order; from is left empty. */
static inline void tulua__queue_move(tulua__queue *from, tulua__queue *to) {
  if (tulua__queue_empty(from)) return;
  from->next->prev = to->prev;
  to->prev->next = from->next;
  from->prev->next = to;
  to->prev = from->prev;
  tulua__queue_init(from);
}

/* Visits every node q of the queue headed by h, first to last. The body
 * must not remove q (save q->next first to do that). */
#define tulua__queue_foreach(q, h)                                             \
  for ((q) = (h)->next; (q) != (h); (q) = (q)->next)

#endif
