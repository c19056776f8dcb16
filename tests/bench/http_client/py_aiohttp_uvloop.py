# HTTP client peer (Python): N sequential GETs of URL with aiohttp's client
# on uvloop, one ClientSession (its keep-alive pool); checks every answer;
# prints one RESULT line.
import asyncio, sys, time
import aiohttp, uvloop

async def main(url, n):
    async with aiohttp.ClientSession() as s:
        async with s.get(url) as r:  # warm-up: the connection is made here
            assert r.status == 200 and await r.text() == "Hello, World!"
        t0 = time.monotonic()
        for _ in range(n):
            async with s.get(url) as r:
                body = await r.read()
                if r.status != 200 or body != b"Hello, World!":
                    raise SystemExit("bad answer: %d" % r.status)
        secs = time.monotonic() - t0
    print("RESULT requests=%d seconds=%.4f rps=%.1f" % (n, secs, n / secs))

uvloop.install()
asyncio.run(main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 10000))
