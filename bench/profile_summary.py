#!/usr/bin/env python3
"""Summarise a py-spy ``record --format raw`` file (collapsed stacks) as Markdown: where the samples go.

    profile_summary.py profile.collapsed [--top 25]

Each line of the input is ``frame;frame;...;leaf COUNT`` (root first). A frame is ``function (file:line)``;
lines are dropped here so one function is one row. "self" counts samples whose leaf is the function,
"inclusive" counts samples with the function anywhere on the stack (once per stack). Besides the top
functions, samples are put into coarse buckets by the first rule that matches the stack,
which is what docs/performance.md quotes (rules: BUCKETS below). Speedscope (https://www.speedscope.app) opens the same file.
"""

from __future__ import annotations

import argparse
import collections
import re
import sys

LINE = re.compile(r"^(.*) (\d+)$")
FRAME_LINE = re.compile(r":\d+\)$")

# (bucket, predicate on the whole stack, root first): the first rule that matches names the bucket. py-spy samples
# wall-clock stacks: threads blocked in C with the GIL released (fsync, SQLite's busy handler sleeping, select)
# are sampled too, so the table says where the threads' time goes, not only CPU.
IDLE = "idle: "


def _any(frames, *needles):
    return any(n in fr for fr in frames for n in needles)


BUCKETS = [
    (IDLE + "threads waiting for work (handler pools, HTTP threads, scheduler, main)",
     lambda st: st[-1].startswith(("Condition.wait", "Event.wait", "_worker ")) and not _any(st, "HL7Intake", "handle_find")),
    (IDLE + "event loops / listeners waiting for I/O",
     lambda st: st[-1].split(" ")[0].endswith((".select", ".poll")) or st[-1].startswith(("select ", "poll "))),
    ("handler threads waiting for their group commit (app/group_commit.py)",
     lambda st: st[-1].startswith(("Condition.wait", "Event.wait")) and _any(st, "GroupCommitter.run")),
    ("SQLite BEGIN IMMEDIATE: waiting for the write lock (busy handler)", lambda st: _any(st, "_sqlite_begin")),
    ("COMMIT (SQLite: WAL append + fsync)", lambda st: _any(st, "do_commit")),
    ("SQL statements (driver execute)", lambda st: st[-1].startswith(("DefaultDialect.do_execute", "execute ", "Cursor."))),
    ("HL7 parse: tokenizer, escapes, charsets, timestamps",
     lambda st: _any(st, "interfaces/hl7/tokenizer", "interfaces/hl7/escape", "interfaces/hl7/charsets",
                     "interfaces/hl7/timestamps")),
    ("HL7 ACK building", lambda st: _any(st, "interfaces/hl7/ack")),
    ("mapping profile -> commands", lambda st: _any(st, "(mappings/")),
    ("SQLAlchemy (ORM flush, compile, result handling: Python)", lambda st: _any(st, "sqlalchemy")),
    ("domain services (app/)", lambda st: _any(st, "(app/")),
    ("MLLP server: asyncio, framing", lambda st: _any(st, "interfaces/mllp", "asyncio")),
    ("pynetdicom / pydicom", lambda st: _any(st, "pynetdicom", "pydicom")),
    ("thread hand-off / locks", lambda st: _any(st, "threading.py", "concurrent/futures")),
]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("file")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--title", default="Where the engine's threads spend their time (py-spy wall-clock samples")
    a = ap.parse_args()
    self_c: collections.Counter = collections.Counter()
    incl_c: collections.Counter = collections.Counter()
    buckets: collections.Counter = collections.Counter()
    total = 0
    with open(a.file, encoding="utf-8", errors="replace") as f:
        for line in f:
            m = LINE.match(line.rstrip("\n"))
            if not m:
                continue
            stack, n = m.group(1), int(m.group(2))
            frames = [FRAME_LINE.sub(")", fr.strip()) for fr in stack.split(";") if fr.strip()]
            frames = [fr for fr in frames if not fr.startswith(("process ", "thread "))]
            if not frames:
                continue
            total += n
            self_c[frames[-1]] += n
            for fr in set(frames):
                incl_c[fr] += n
            buckets[next((b for b, pred in BUCKETS if pred(frames)), "other")] += n
    if not total:
        print("(no samples)")
        return 0
    pct = lambda n: f"{100.0 * n / total:.1f}%"  # noqa: E731
    busy = sum(n for b, n in buckets.items() if not b.startswith(IDLE)) or 1
    out = [f"### {a.title}: {total})\n",
           "| bucket (first matching rule) | share of samples | share of non-idle samples |", "|---|---|---|"]
    out += [f"| {b} | {pct(n)} | {'' if b.startswith(IDLE) else f'{100.0 * n / busy:.1f}%'} |"
            for b, n in buckets.most_common()]
    out += ["", f"Top {a.top} functions by self samples:\n", "| function | self | inclusive |", "|---|---|---|"]
    out += [f"| `{fr}` | {pct(n)} | {pct(incl_c[fr])} |" for fr, n in self_c.most_common(a.top)]
    out += ["", f"Top {a.top} functions by inclusive samples:\n", "| function | inclusive | self |", "|---|---|---|"]
    out += [f"| `{fr}` | {pct(n)} | {pct(self_c[fr])} |" for fr, n in incl_c.most_common(a.top)]
    print("\n".join(out) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
