/* test_queue.c: the intrusive queue of host/queue.h, which every FIFO of the
 * scheduler and the bindings is built on. */
#include "queue.h"
#include "check.h"

typedef struct {
  int value;
  tulua__queue node;
} item;

/* Writes the values of the queue headed by h into out; returns how many. */
static int values(tulua__queue *h, int *out, int max) {
  int n = 0;
  tulua__queue *q;
  tulua__queue_foreach(q, h) {
    if (n == max) return -1;
    out[n++] = tulua__container_of(q, item, node)->value;
  }
  return n;
}

static int test_empty(void) {
  tulua__queue h;
  tulua__queue_init(&h);
  CHECK(tulua__queue_empty(&h));
  CHECK(tulua__queue_head(&h) == NULL);
  CHECK(tulua__queue_pop(&h) == NULL);
  CHECK(!tulua__queue_linked(&h));
  return 0;
}

static int test_fifo_order(void) {
  tulua__queue h;
  item it[4] = {{1, {0, 0}}, {2, {0, 0}}, {3, {0, 0}}, {4, {0, 0}}};
  tulua__queue_init(&h);
  for (int i = 0; i < 3; i++)
    tulua__queue_insert_tail(&h, &it[i].node);
  tulua__queue_insert_head(&h, &it[3].node);
  int v[8];
  CHECK_EQ(4, values(&h, v, 8));
  CHECK_EQ(4, v[0]);
  CHECK_EQ(1, v[1]);
  CHECK_EQ(3, v[3]);
  CHECK_EQ(4, tulua__container_of(tulua__queue_pop(&h), item, node)->value);
  CHECK_EQ(1, tulua__container_of(tulua__queue_pop(&h), item, node)->value);
  CHECK(!tulua__queue_linked(&it[0].node));
  CHECK(tulua__queue_linked(&it[1].node));
  return 0;
}

static int test_remove_middle_twice(void) {
  tulua__queue h;
  item it[3] = {{1, {0, 0}}, {2, {0, 0}}, {3, {0, 0}}};
  tulua__queue_init(&h);
  for (int i = 0; i < 3; i++)
    tulua__queue_insert_tail(&h, &it[i].node);
  tulua__queue_remove(&it[1].node);
  tulua__queue_remove(&it[1].node); /* unlinked: nothing happens */
  int v[8];
  CHECK_EQ(2, values(&h, v, 8));
  CHECK_EQ(1, v[0]);
  CHECK_EQ(3, v[1]);
  tulua__queue_remove(&it[0].node);
  tulua__queue_remove(&it[2].node);
  CHECK(tulua__queue_empty(&h));
  return 0;
}

static int test_move(void) {
  tulua__queue a, b;
  item it[4] = {{1, {0, 0}}, {2, {0, 0}}, {3, {0, 0}}, {4, {0, 0}}};
  tulua__queue_init(&a);
  tulua__queue_init(&b);
  tulua__queue_move(&a, &b); /* empty onto empty */
  CHECK(tulua__queue_empty(&b));
  tulua__queue_insert_tail(&b, &it[0].node);
  tulua__queue_insert_tail(&a, &it[1].node);
  tulua__queue_insert_tail(&a, &it[2].node);
  tulua__queue_move(&a, &b);
  CHECK(tulua__queue_empty(&a));
  tulua__queue_insert_tail(&b, &it[3].node); /* b's tail still right */
  int v[8];
  CHECK_EQ(4, values(&b, v, 8));
  for (int i = 0; i < 4; i++)
    CHECK_EQ(i + 1, v[i]);
  return 0;
}

int main(int argc, char **argv) {
  static const check_case cases[] = {
      {"empty", test_empty},
      {"fifo_order", test_fifo_order},
      {"remove_middle_twice", test_remove_middle_twice},
      {"move", test_move},
      {NULL, NULL}};
  return check_run(cases, argc > 1 ? argv[1] : NULL);
}
