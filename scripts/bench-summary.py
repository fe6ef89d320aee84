#!/usr/bin/env python3
"""Turns the JSON reports of scripts/bench (one per server and scenario) into markdown tables."""
import json
import os
import sys

out = sys.argv[1]
SERVERS = ["cortex", "nchan", "socketio"]


def load(server, scenario):
    path = os.path.join(out, f"{server}-{scenario}.json")
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def fmt(v, digits=0):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    return f"{v:,}"


def table(head, rows):
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def correctness(p):
    bad = p["lost"] + p["duplicates"] + p["out_of_order"] + p["misrouted"]
    if bad == 0:
        return "all delivered once, in order"
    return f"lost {p['lost']:,}, dup {p['duplicates']:,}, reordered {p['out_of_order']:,}, misrouted {p['misrouted']:,}"


if os.path.exists(os.path.join(out, "machine.txt")):
    print("```\n" + open(os.path.join(out, "machine.txt")).read().strip() + "\n```\n")

rows = []
for s in SERVERS:
    r = load(s, "idle")
    if r:
        c, m = r["connect"], r["memory"]
        rows.append([s, fmt(c["connected"]), fmt(c["failed"]), fmt(m["per_conn"]), fmt(m["rss_connected"] / 2**20, 1), fmt(c["per_sec"]), fmt(c["secs"], 2), fmt(c.get("server_cores"), 2), fmt(c.get("load_cores"), 2)])
if rows:
    print("### Idle connections (3 subscriptions each)\n")
    print(table(["server", "connected", "failed", "server RSS per connection (B)", "server RSS (MiB)", "connects+subscribes/s", "connect time (s)", "server cores", "load cores"], rows))
    print()

rows = []
for scenario, what in [("org10k", "org: 1 channel x 10,000"), ("org", "org: 1 channel x all"), ("project", "project: groups of 50"), ("agent", "agent: 1:1")]:
    for s in SERVERS:
        r = load(s, scenario)
        if r and r.get("publish"):
            p = r["publish"]
            rows.append([what, s, fmt(r["connect"]["connected"]), fmt(p["events_per_sec"]), fmt(p["deliveries_per_sec"]), fmt(p["server_us_per_delivery"], 2), fmt(p["server_cores"], 2), fmt(p["load_cores"], 2), p["bottleneck"], fmt(p["latency_us"]["p99"] / 1000, 1), correctness(p)])
if rows:
    print("### Fan-out at saturation\n")
    print(table(["shape", "server", "conns", "events/s", "deliveries/s", "server CPU per delivery (us)", "server cores", "load cores", "bottleneck", "p99 (ms)", "correctness"], rows))
    print()

rows = []
for scenario in ["lat-org", "lat-project", "lat-agent", "slow"]:
    for s in SERVERS:
        r = load(s, scenario)
        if r and r.get("publish"):
            p, l = r["publish"], r["publish"]["latency_us"]
            label = scenario.replace("lat-", "") if scenario != "slow" else "org, 1% not reading"
            rows.append([label, s, fmt(p["offered_rate"]), fmt(p["events_per_sec"]), fmt(l["p50"] / 1000, 2), fmt(l["p90"] / 1000, 2), fmt(l["p99"] / 1000, 2), fmt(l["p999"] / 1000, 2), fmt(l["max"] / 1000, 1), fmt(p["server_cores"], 2), fmt(p["load_cores"], 2), fmt(r["memory"]["rss_after_publish"] / 2**20, 1), correctness(p)])
if rows:
    print("### Latency at half of nchan's saturation rate (publish to receive, ms)\n")
    print(table(["shape", "server", "offered ev/s", "achieved ev/s", "p50", "p90", "p99", "p99.9", "max", "server cores", "load cores", "server RSS after (MiB)", "correctness"], rows))
    print()

rows = []
for s in SERVERS:
    r = load(s, "restart")
    if r and r.get("hold"):
        h = r["hold"]
        back = fmt(h["all_back_secs"], 2) if h["all_back_secs"] is not None else ("never" if h["dropped"] else "no drop")
        rows.append([s, fmt(r["connect"]["connected"]), fmt(h["min_connected"]), back, fmt(h.get("back_after_server_secs"), 2), fmt(h["reconnects"])])
if rows:
    print("### Server restart (clients reconnect with full-jitter backoff from 1 s)\n")
    print(table(["server", "connected", "fewest connected", "all back after first drop (s)", "all back after the first reconnect (s)", "reconnects"], rows))
    print()
