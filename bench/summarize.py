"""Summarizes a bench/run.sh log: medians over rounds, gateway and nginx relative to direct."""

import re
import statistics
import sys
from collections import defaultdict

log, conc = sys.argv[1], sys.argv[2]
rows = defaultdict(list)
for line in open(log):
    m = re.match(r"(\w+) c=(\d+) p50_us=(\d+) p99_us=(\d+) rps=([\d.]+) requests=(\d+) errors=(\d+) non2xx=(\d+)", line)
    if m:
        name, c, p50, p99, rps, n, err, non2xx = m.groups()
        rows[(name, int(c))].append((int(p50), int(p99), float(rps), int(err) + int(non2xx)))

def med(key, i):
    return statistics.median(r[i] for r in rows[key])

order = ["direct", "floor", "gateway", "before", "logged", "nginx", "dify", "claude", "messages", "responses", "validated", "plain4k", "private", "builtin", "embeddings", "nginxemb", "cached", "rcached", "unlimited", "limited", "rlimited", "abnew", "abold"]
names = sorted({k[0] for k in rows}, key=lambda n: order.index(n) if n in order else 9)
print(f"\n{'path':8} {'c=1 p50':>9} {'c=1 p99':>9} {'added p50':>10} {'added p99':>10} {'c=' + conc + ' rps':>10} {'rps ratio':>9} {'errors':>6}")
for n in names:
    p50, p99 = med((n, 1), 0), med((n, 1), 1)
    rps = med((n, int(conc)), 2)
    errs = sum(r[3] for k in rows if k[0] == n for r in rows[k])
    add50 = p50 - med(("direct", 1), 0)
    add99 = p99 - med(("direct", 1), 1)
    ratio = rps / med(("direct", int(conc)), 2)
    print(f"{n:8} {p50:>7}us {p99:>7}us {add50:>8}us {add99:>8}us {rps:>10.0f} {ratio:>9.2f} {errs:>6}")

if ("dify", int(conc)) in rows:
    ratio = med(("dify", int(conc)), 2) / med(("gateway", int(conc)), 2)
    print(f"\ndify translation max RPS / OpenAI passthrough max RPS (both through the gateway): {ratio:.2f}")

if ("claude", int(conc)) in rows:
    ratio = med(("claude", int(conc)), 2) / med(("gateway", int(conc)), 2)
    print(f"chat -> Anthropic mock max RPS / chat -> OpenAI mock max RPS: {ratio:.2f}")
if ("messages", int(conc)) in rows:
    ratio = med(("messages", int(conc)), 2) / med(("gateway", int(conc)), 2)
    print(f"/v1/messages -> OpenAI mock max RPS / chat -> OpenAI mock max RPS: {ratio:.2f}")
if ("responses", int(conc)) in rows:
    ratio = med(("responses", int(conc)), 2) / med(("gateway", int(conc)), 2)
    print(f"/v1/responses -> OpenAI mock max RPS / chat -> OpenAI mock max RPS: {ratio:.2f}")
if ("validated", int(conc)) in rows:
    ratio = med(("validated", int(conc)), 2) / med(("gateway", int(conc)), 2)
    print(f"structured output (validated) max RPS / chat -> OpenAI mock max RPS: {ratio:.2f}; "
          f"c=1 p50 {med(('validated', 1), 0)}us vs {med(('gateway', 1), 0)}us")

if ("private", 1) in rows:
    print(f"privacy (pseudonymize) on a 4 KB Chinese prompt at c=1: p50 {med(('private', 1), 0)}us vs the same prompt "
          f"without privacy {med(('plain4k', 1), 0)}us (added {med(('private', 1), 0) - med(('plain4k', 1), 0)}us); "
          f"max RPS {med(('private', int(conc)), 2):.0f} vs {med(('plain4k', int(conc)), 2):.0f}")

if ("cached", 1) in rows:
    floor = ""
    if ("floor", 1) in rows:
        floor = f" (pingora floor p50 {med(('floor', 1), 0)}us, {med(('floor', int(conc)), 2):.0f} RPS)"
    print(f"cache hit at c=1: p50 {med(('cached', 1), 0)}us vs direct-to-mock p50 {med(('direct', 1), 0)}us; "
          f"hits max RPS {med(('cached', int(conc)), 2):.0f} vs direct {med(('direct', int(conc)), 2):.0f}{floor}")

if ("logged", 1) in rows:
    print(f"JSON access log on (to a file): c=1 p50 {med(('logged', 1), 0)}us p99 {med(('logged', 1), 1)}us vs "
          f"off p50 {med(('gateway', 1), 0)}us p99 {med(('gateway', 1), 1)}us; max RPS {med(('logged', int(conc)), 2):.0f} "
          f"vs {med(('gateway', int(conc)), 2):.0f}")

if ("limited", 1) in rows:
    print(f"client limits (rpm+tpm+budget) at c=1: p50 {med(('limited', 1), 0)}us p99 {med(('limited', 1), 1)}us "
          f"vs the same requests without limits p50 {med(('unlimited', 1), 0)}us p99 {med(('unlimited', 1), 1)}us; "
          f"max RPS {med(('limited', int(conc)), 2):.0f} vs {med(('unlimited', int(conc)), 2):.0f}")

if ("embeddings", 1) in rows:
    c = int(conc)
    print(f"embeddings relay vs nginx (same call, same mock): c=1 p50 {med(('embeddings', 1), 0)}us vs {med(('nginxemb', 1), 0)}us; "
          f"max RPS {med(('embeddings', c), 2):.0f} vs {med(('nginxemb', c), 2):.0f} "
          f"(ratio {med(('embeddings', c), 2) / med(('nginxemb', c), 2):.2f})")

if ("rlimited", 1) in rows:
    c = int(conc)
    add50 = med(("rlimited", 1), 0) - med(("limited", 1), 0)
    add99 = med(("rlimited", 1), 1) - med(("limited", 1), 1)
    ratio = med(("rlimited", c), 2) / med(("limited", c), 2)
    print(f"limited client, state in Redis vs in memory: c=1 p50 {med(('rlimited', 1), 0)}us vs {med(('limited', 1), 0)}us "
          f"(added {add50}us), p99 {med(('rlimited', 1), 1)}us vs {med(('limited', 1), 1)}us (added {add99}us); "
          f"max RPS {med(('rlimited', c), 2):.0f} vs {med(('limited', c), 2):.0f} (ratio {ratio:.2f})")

if ("rcached", 1) in rows:
    c = int(conc)
    print(f"cache hit from Redis (L1 miss) vs from the L1: c=1 p50 {med(('rcached', 1), 0)}us vs {med(('cached', 1), 0)}us, "
          f"p99 {med(('rcached', 1), 1)}us vs {med(('cached', 1), 1)}us; max RPS {med(('rcached', c), 2):.0f} vs "
          f"{med(('cached', c), 2):.0f}")

if ("before", 1) in rows:
    print(f"this build vs BASELINE_BIN (same config, interleaved): c=1 p50 {med(('gateway', 1), 0)}us vs "
          f"{med(('before', 1), 0)}us, p99 {med(('gateway', 1), 1)}us vs {med(('before', 1), 1)}us; max RPS "
          f"{med(('gateway', int(conc)), 2):.0f} vs {med(('before', int(conc)), 2):.0f}")

if ("abnew", 1) in rows:
    print(f"ABBA-ordered, this build vs BASELINE_BIN: c=1 p50 {med(('abnew', 1), 0)}us vs {med(('abold', 1), 0)}us, "
          f"p99 {med(('abnew', 1), 1)}us vs {med(('abold', 1), 1)}us; max RPS {med(('abnew', int(conc)), 2):.0f} vs "
          f"{med(('abold', int(conc)), 2):.0f}")
