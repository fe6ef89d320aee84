#!/usr/bin/env python3
"""Check the results of an Autobahn TestSuite fuzzingclient run against Cortex Realtime.

Usage: autobahn-check.py REPORTS_DIR [--max-message-bytes N] [--cases '1.*,2.*'] [--strict-close]

Reads REPORTS_DIR/index.json (and, for the over-limit 9.x cases, each case's own JSON report)
and exits 0 only if every case passed by the rules below; otherwise it lists the failing cases
and exits 1 (2 for an unusable report). docs/autobahn.md explains the rules.

Rules:
  * every case whose `behavior` in index.json is OK, NON-STRICT or INFORMATIONAL passes;
  * except the 9.x cases whose message is larger than --max-message-bytes (default 65536, the
    server's 64 KiB limit): the suite expects an echo there, which the server must refuse, so
    their `behavior`/`behaviorClose` (FAILED: no echo, "closed by the wrong endpoint") are
    ignored and the case's JSON report must show instead:
        remoteCloseCode == 1009   the server sent a Close frame with code 1009,
        closedByMe      == false  the server, not the suite, started the closing handshake,
        wasClean        == true   both Close frames were exchanged and the server then closed TCP,
        failedByMe      == false  the suite saw no protocol error from the server,
        droppedByMe     == false  the suite did not have to drop TCP itself;
    `localCloseCode` (the suite's reply, normally 1000) is reported but not checked;
  * each pattern of --cases must match at least one case (so a run that silently skipped a
    group fails), except "8.*": the suite has no section 8;
  * `behaviorClose` of the other cases is reported when it is not OK or INFORMATIONAL, and fails
    the check only with --strict-close.
"""

import argparse
import fnmatch
import json
import os
import sys
from collections import Counter

# Patterns that match no case of the suite: it has no section 8 (its sections are 1-7, 9, 10,
# 12, 13), but "8.*" is kept in the spec so that a future section 8 would run.
NO_CASES = {"8.*"}

PASSING = {"OK", "NON-STRICT", "INFORMATIONAL"}
CLOSE_PASSING = {"OK", "INFORMATIONAL"}

KIB = 2**10
MIB = 2**20
# Message sizes of the 9.x ("limits/performance") cases of autobahntestsuite 25.10.1 /
# 0.8.2, from autobahntestsuite/case/case9_*.py. 9.7.x/9.8.x send many small messages.
SIZES_9 = {}
for _n, _size in enumerate([64 * KIB, 256 * KIB, 1 * MIB, 4 * MIB, 8 * MIB, 16 * MIB], 1):
    SIZES_9["9.1.%d" % _n] = _size  # one text frame
    SIZES_9["9.2.%d" % _n] = _size  # one binary frame
for _n in range(1, 10):
    SIZES_9["9.3.%d" % _n] = 4 * MIB  # text message fragmented into 64 B .. 4 MiB frames
    SIZES_9["9.4.%d" % _n] = 4 * MIB  # binary message, same
for _n in range(1, 7):
    SIZES_9["9.5.%d" % _n] = 1 * MIB  # one text frame written in 64 .. 2048 octet chops
    SIZES_9["9.6.%d" % _n] = 1 * MIB  # one binary frame, same
for _n, _size in enumerate([0, 16, 64, 256, 1 * KIB, 4 * KIB], 1):
    SIZES_9["9.7.%d" % _n] = _size  # 1000 text messages round trip
    SIZES_9["9.8.%d" % _n] = _size  # 1000 binary messages round trip


def case_key(case_id):
    return tuple(int(p) if p.isdigit() else p for p in case_id.split("."))


def fmt_size(n):
    if n >= MIB and n % MIB == 0:
        return "%d MiB" % (n // MIB)
    if n >= KIB and n % KIB == 0:
        return "%d KiB" % (n // KIB)
    return "%d B" % n


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("reports", help="the fuzzingclient outdir (holds index.json)")
    ap.add_argument("--max-message-bytes", type=int, default=64 * KIB,
                    help="the server's frame/message limit (default 65536)")
    ap.add_argument("--cases", default="",
                    help="comma-separated case patterns that were run; each must match a case")
    ap.add_argument("--agent", default=None, help="agent name in index.json (default: the only one)")
    ap.add_argument("--strict-close", action="store_true",
                    help="also fail cases whose behaviorClose is not OK/INFORMATIONAL")
    args = ap.parse_args()

    index_path = os.path.join(args.reports, "index.json")
    try:
        with open(index_path) as f:
            index = json.load(f)
    except (OSError, ValueError) as e:
        print("autobahn-check: cannot read %s: %s" % (index_path, e), file=sys.stderr)
        return 2
    if args.agent is None:
        if len(index) != 1:
            print("autobahn-check: index.json has agents %s; pass --agent" % sorted(index),
                  file=sys.stderr)
            return 2
        args.agent = next(iter(index))
    cases = index.get(args.agent)
    if not cases:
        print("autobahn-check: no cases for agent %r in %s" % (args.agent, index_path),
              file=sys.stderr)
        return 2

    counts = Counter()          # raw `behavior` per case, as Autobahn reports it
    verdicts = Counter()        # our verdict
    failures = []               # (case id, reason)
    close_warnings = []         # (case id, behaviorClose, remoteCloseCode)
    limit_cases = []

    for cid in sorted(cases, key=case_key):
        c = cases[cid]
        behavior = c.get("behavior")
        counts[behavior] += 1
        size = SIZES_9.get(cid)
        if cid.startswith("9.") and size is None:
            failures.append((cid, "unknown 9.x case: add its message size to SIZES_9 in %s"
                             % os.path.basename(__file__)))
            verdicts["FAIL"] += 1
            continue
        if size is not None and size > args.max_message_bytes:
            limit_cases.append(cid)
            report_path = os.path.join(args.reports, c.get("reportfile", ""))
            try:
                with open(report_path) as f:
                    r = json.load(f)
            except (OSError, ValueError) as e:
                failures.append((cid, "cannot read case report %s: %s" % (report_path, e)))
                verdicts["FAIL"] += 1
                continue
            want = {"remoteCloseCode": 1009, "closedByMe": False, "wasClean": True,
                    "failedByMe": False, "droppedByMe": False}
            wrong = ["%s=%s (want %s)" % (k, json.dumps(r.get(k)), json.dumps(v))
                     for k, v in want.items() if r.get(k) != v]
            if wrong:
                detail = ", ".join(wrong)
                if r.get("wasNotCleanReason"):
                    detail += "; wasNotCleanReason: %s" % r["wasNotCleanReason"]
                failures.append((cid, "%s message over the limit must get a clean close 1009 "
                                 "from the server: %s" % (fmt_size(size), detail)))
                verdicts["FAIL"] += 1
            else:
                verdicts["CLOSED 1009 (over limit)"] += 1
            continue
        if behavior in PASSING:
            verdicts[behavior] += 1
            bc = c.get("behaviorClose")
            if bc not in CLOSE_PASSING:
                close_warnings.append((cid, bc, c.get("remoteCloseCode")))
                if args.strict_close:
                    failures.append((cid, "behaviorClose %s (remoteCloseCode %s)"
                                     % (bc, c.get("remoteCloseCode"))))
                    verdicts["FAIL"] += 1
                    verdicts[behavior] -= 1
        else:
            verdicts["FAIL"] += 1
            failures.append((cid, "behavior %s, behaviorClose %s, remoteCloseCode %s (see %s)"
                             % (behavior, c.get("behaviorClose"), c.get("remoteCloseCode"),
                                c.get("reportfile"))))

    for pattern in [p.strip() for p in args.cases.split(",") if p.strip()]:
        if pattern in NO_CASES:
            continue
        if not any(fnmatch.fnmatchcase(cid, pattern) for cid in cases):
            failures.append((pattern, "no case of this pattern was run"))

    total = len(cases)
    print("Autobahn results for agent %r: %d cases" % (args.agent, total))
    print("  as reported by the suite (behavior): " +
          ", ".join("%s %d" % (k, v) for k, v in sorted(counts.items(), key=lambda kv: str(kv[0]))))
    print("  verdict: " + ", ".join("%s %d" % (k, v) for k, v in sorted(verdicts.items()) if v))
    print("  over the %s limit, expected close 1009: %d cases (%s)"
          % (fmt_size(args.max_message_bytes), len(limit_cases),
             " ".join(limit_cases) if limit_cases else "none"))
    if close_warnings:
        print("  behaviorClose not OK on %d passing cases%s:" %
              (len(close_warnings), "" if args.strict_close else " (not fatal without --strict-close)"))
        for cid, bc, code in close_warnings:
            print("    %s: behaviorClose %s, remoteCloseCode %s" % (cid, bc, code))
    if failures:
        print("FAILED: %d case(s):" % len(failures))
        for cid, why in failures:
            print("  %s: %s" % (cid, why))
        print("Reports: %s (open index.html)" % os.path.abspath(args.reports))
        print("autobahn: %d passed, %d failed" % (total - verdicts["FAIL"], len(failures)))
        return 1
    print("autobahn: %d passed, 0 failed" % total)
    return 0


if __name__ == "__main__":
    sys.exit(main())
