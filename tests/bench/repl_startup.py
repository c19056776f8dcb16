#!/usr/bin/env python3
"""REPL start-up: time from spawning `lua5.4 -i` and `tulua -i` on a fresh
pseudo-terminal until the first prompt "> " shows on it.

    python3 tests/bench/repl_startup.py [--runs 20] [--tulua build/tulua] [--lua lua5.4]

Each run starts the program with its stdin, stdout and stderr on a new pty
(100x30, TERM=xterm), HOME set to a new empty directory (no history, no
~/.editrc or ~/.inputrc) and no LUA_INIT/LUA_PATH/LUA_CPATH, reads the pty
until "> " appears in the output (the measure: "prompt"), then types "1+1"
and Enter and reads until the result "2" shows ("first result": what the
prompt hid, such as work deferred until after it is drawn), then kills the
program. The two programs alternate run by run, after one warm-up run each,
so that drift in the machine's speed hits both alike. Prints each program's
median, min and max in milliseconds and the ratio of the medians; the target
is tulua's prompt within 2x of lua5.4's. Exit status 0 whatever the ratio, 2
if a program never showed its prompt or result (10 s).
"""
import argparse
import fcntl
import os
import pty
import re
import select
import shutil
import signal
import statistics
import struct
import tempfile
import termios
import time

PROMPT = re.compile(rb"> ")
RESULT = re.compile(rb"[\r\n]2\r\n")  # lua5.4's readline puts "\x1b[?2004l\r" before it
TIMEOUT = 10.0
DROP_ENV = ("LUA_INIT", "LUA_INIT_5_4", "LUA_PATH", "LUA_PATH_5_4", "LUA_CPATH",
            "LUA_CPATH_5_4", "EDITRC", "INPUTRC", "TULUA_DEBUG")


def read_until(fd, argv, out, want, deadline):
    """Reads the pty into out until the regular expression want matches in
    it (after the first len(out) bytes already read); returns out."""
    start = len(out)
    while not want.search(out, start):
        ready, _, _ = select.select([fd], [], [], max(deadline - time.monotonic(), 0))
        if not ready:
            raise TimeoutError(f"{argv[0]}: no {want.pattern!r} after {TIMEOUT} s; output: {out!r}")
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # EIO: the child closed the pty
            chunk = b""
        if not chunk:
            raise RuntimeError(f"{argv[0]}: ended before {want.pattern!r}; output: {out!r}")
        out += chunk
    return out


def time_to_prompt(argv):
    """Returns the seconds from fork until "> " was read from the pty, and
    until the result of a first line "1+1" was."""
    home = tempfile.mkdtemp(prefix="tulua-repl-startup.")
    env = {k: v for k, v in os.environ.items() if k not in DROP_ENV}
    env.update(HOME=home, TERM="xterm")
    t0 = time.monotonic()
    pid, fd = pty.fork()
    if pid == 0:  # the child: its controlling terminal is the pty
        try:
            fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
            os.execvpe(argv[0], argv, env)
        finally:
            os._exit(127)
    try:
        out = read_until(fd, argv, b"", PROMPT, t0 + TIMEOUT)
        t_prompt = time.monotonic() - t0
        os.write(fd, b"1+1\r")
        read_until(fd, argv, out, RESULT, t0 + TIMEOUT)
        return t_prompt, time.monotonic() - t0
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(fd)
        shutil.rmtree(home, ignore_errors=True)


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--tulua", default=os.environ.get("TULUA", os.path.join(here, "..", "..", "build", "tulua")))
    ap.add_argument("--lua", default=shutil.which("lua5.4") or "lua5.4")
    args = ap.parse_args()
    programs = {"lua5.4": [args.lua, "-i"], "tulua": [os.path.abspath(args.tulua), "-i"]}
    times = {name: [] for name in programs}
    results = {name: [] for name in programs}
    try:
        for argv in programs.values():  # warm-up: page cache, dynamic loader
            time_to_prompt(argv)
        for _ in range(args.runs):
            for name, argv in programs.items():
                t_prompt, t_result = time_to_prompt(argv)
                times[name].append(t_prompt)
                results[name].append(t_result)
    except (TimeoutError, RuntimeError) as e:
        print(f"repl_startup: {e}")
        return 2
    for what, table in (("prompt", times), ("first result", results)):
        med = {name: statistics.median(t) * 1000 for name, t in table.items()}
        for name, t in table.items():
            print(f"{what:12} {name:7} {' '.join(programs[name])}: median {med[name]:.2f} ms"
                  f" (min {min(t) * 1000:.2f}, max {max(t) * 1000:.2f}, {len(t)} runs)")
        ratio = med["tulua"] / med["lua5.4"]
        target = f" (target: within 2x: {'met' if ratio <= 2 else 'NOT met'})" if table is times else ""
        print(f"{what:12} ratio tulua/lua5.4: {ratio:.2f}x{target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
