"""Q1 peer: py_asyncio_unbounded.py (MAXSIZE=0), on uvloop's event loop."""
import asyncio
import sys

import uvloop

import py_asyncio  # the sibling peer file (the script's folder is on sys.path)

if __name__ == "__main__":
    uvloop.install()
    asyncio.run(py_asyncio.main(maxsize=int(sys.argv[2]) if len(sys.argv) > 2 else 0))
