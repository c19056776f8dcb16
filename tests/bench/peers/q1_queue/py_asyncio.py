"""Q1 peer: ITEMS integers through an asyncio.Queue(MAXSIZE), one producer task, one consumer task.

The producer puts 1..ITEMS (await queue.put), the consumer gets ITEMS items
(await queue.get) and sums them; asyncio.gather waits for both. With the
default MAXSIZE=100 the producer really waits whenever the queue is full;
MAXSIZE=0 is an unbounded queue (the producer never waits).
Usage: python3 py_asyncio.py [ITEMS=1000000] [MAXSIZE=100]
Prints: RESULT items=N maxsize=M seconds=<first task created to both done> items_per_s=<N/seconds>
"""
import asyncio
import sys
import time

ITEMS = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
MAXSIZE = int(sys.argv[2]) if len(sys.argv) > 2 else 100


async def producer(queue, n):
    for i in range(1, n + 1):
        await queue.put(i)


async def consumer(queue, n):
    total = 0
    for _ in range(n):
        total += await queue.get()
    return total


async def main(items=ITEMS, maxsize=MAXSIZE):
    queue = asyncio.Queue(maxsize)
    t0 = time.perf_counter()
    prod = asyncio.create_task(producer(queue, items))
    cons = asyncio.create_task(consumer(queue, items))
    _, total = await asyncio.gather(prod, cons)
    dt = time.perf_counter() - t0
    assert total == items * (items + 1) // 2, total
    assert queue.empty()
    print(f"RESULT items={items} maxsize={maxsize} seconds={dt:.4f} items_per_s={items / dt:.0f}")


if __name__ == "__main__":
    asyncio.run(main())
