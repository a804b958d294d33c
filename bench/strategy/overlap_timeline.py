#!/usr/bin/env python3
"""What an overlapped ps step's timeline shows (docs/parameter-server.md,
"Pushes overlapped with backward"), from one worker's Chrome trace of
`dtrain train ... --set distributed.ps.overlap=true --trace auto`:
when each request ("push" spans) leaves inside backward, and whether the
next forward's first layer began before that forward took server 1's reply
("pull_wait" with server 1). Medians over the traced steps.
Usage: bench/strategy/overlap_timeline.py OUTPUT/trace/rank-0.json"""
import json
import statistics as st
import sys


def main(path):
    events = json.load(open(path))
    events = events["traceEvents"] if isinstance(events, dict) else events
    spans = [(e["ts"], e["ts"] + e.get("dur", 0), e) for e in events if e.get("ph") == "X"]
    spans.sort(key=lambda s: s[0])

    def named(name):
        return [s for s in spans if s[2]["name"] == name]

    def inside(s, outer):
        return any(a <= s[0] < b for a, b, _ in outer)

    backward, forward, push, wait = named("backward"), named("forward"), named("push"), named("pull_wait")
    layers = [s for s in spans if s[2].get("cat") == "layer"]
    first_left = []
    for b0, b1, _ in backward:
        sent = [p for p in push if b0 <= p[0] < b1]
        if len(sent) >= 2:
            first_left.append((b1 - sent[0][0]) / max(b1 - b0, 1))
    taken, before, gaps = 0, 0, []
    for f0, f1, _ in forward:
        w1 = [w for w in wait if f0 <= w[0] < f1 and w[2].get("args", {}).get("server") == 1]
        first = [l for l in layers if f0 <= l[0] < f1]
        if not w1:
            continue
        taken += 1
        if first and first[0][0] < w1[0][0]:
            before += 1
            gaps.append(w1[0][1] - first[0][0])
    med = lambda xs: st.median(xs) if xs else float("nan")
    print(f"steps: {len(backward)}")
    print(f"first request leaves with {med(first_left):.2f} of backward still to run (median)")
    print(f"forwards taking server 1's reply: {taken}; first layer began before it: {before}; "
          f"first layer's start to the reply taken: {med(gaps):.0f} us")
    print(f"pull_wait inside forward: {med([w[1] - w[0] for w in wait if inside(w, forward)]):.0f} us; "
          f"outside (step end): {med([w[1] - w[0] for w in wait if not inside(w, forward)]):.0f} us")
    print(f"pull_copy inside forward: {med([c[1] - c[0] for c in named('pull_copy') if inside(c, forward)]):.0f} us")
    print(f"forward {med([b - a for a, b, _ in forward]):.0f} us, backward {med([b - a for a, b, _ in backward]):.0f} us")


if __name__ == "__main__":
    main(sys.argv[1])
