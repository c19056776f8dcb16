#!/usr/bin/env python3
"""The ruler's tools/summarize.py, plus the table of tulua's own workloads.

Usage (as the ruler's): summarize.py WORKLOAD RESULTS_DIR

tests/bench/run.sh puts the ruler's file next to this one as
ruler_summarize.py; this adds the columns of the workloads that live in
tests/bench/peers/ only (q1_queue) and runs its main() unchanged.
"""
import ruler_summarize  # the ruler's summarize.py (copied beside this file by run.sh)

# q1_queue: the queue's maxsize is in the peer's name (*_unbounded: 0; others: 100)
# and in its raw RESULT lines.
ruler_summarize.COLUMNS.setdefault("q1_queue", ("items_per_s", True, [
    ("items_per_s", "items/s"), ("seconds", "wall s")]))

if __name__ == "__main__":
    ruler_summarize.main()
