"""Q1 peer: exactly py_asyncio.py, on uvloop's event loop."""
import asyncio

import uvloop

import py_asyncio  # the sibling peer file (the script's folder is on sys.path)

if __name__ == "__main__":
    uvloop.install()
    asyncio.run(py_asyncio.main())
