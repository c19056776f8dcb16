"""Q1 peer: py_asyncio.py with an unbounded queue (MAXSIZE=0): the producer never waits."""
import asyncio
import sys

import py_asyncio  # the sibling peer file (the script's folder is on sys.path)

if __name__ == "__main__":
    asyncio.run(py_asyncio.main(maxsize=int(sys.argv[2]) if len(sys.argv) > 2 else 0))
