#!/usr/bin/env python3
"""Markdown tables of a `ci/divqat.toml` run from its records.jsonl (no dependencies).

    python3 ci/summaries/divqat_table.py RESULTS/RUN/records.jsonl

Prints:
1. per defence entry: owner accuracy (the int8 deployment's), fake-quant accuracy, int8
   agreement and accuracy change, divergence, model bytes, paired batch-1 latency ratio to the
   f32 victim, protection time;
2. per attack and defence entry: attacker accuracy and fidelity;
3. the paper's three claims, each as paired differences over seeds (the same seed shares the
   victim and the data, so its cells are compared with each other) with a 95% t-interval:
   - no accuracy cost: owner accuracy of `divqat-*` minus `qat`;
   - worse substitutes: attacker accuracy against `divqat-*` minus against `qat`, per
     extraction attack;
   - better when stacked: the same for `divqat-*+P` minus `qat+P`.
   A claim "holds" when the interval lies on its side of zero (for "no accuracy cost": when the
   interval lies above -0.01, one point), "fails" when it lies on the other side, and is
   "undecided" otherwise. With one seed there is no interval: every verdict is undecided.

Every number is read from the records; the only arithmetic is means, paired differences and
their intervals.
"""
import collections
import json
import math
import statistics
import sys

# Two-sided 95% Student t quantiles by degrees of freedom.
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
       9: 2.262, 10: 2.228}


def interval(values):
    """Mean and 95% t-interval half-width (None with fewer than two values)."""
    m = statistics.mean(values)
    if len(values) < 2:
        return m, None
    t = T95.get(len(values) - 1, 1.96)
    return m, t * statistics.stdev(values) / math.sqrt(len(values))


def fmt(values, digits=3):
    if not values:
        return "-"
    m, h = interval(values)
    if h is None:
        return f"{m:.{digits}f}"
    return f"{m:.{digits}f} ± {h:.{digits}f}"


def main(path):
    rows = [json.loads(line) for line in open(path) if line.strip()]
    ok = [r for r in rows if r.get("status", "ok") == "ok"]
    failed = {(r["defence"], r["attack"], r["seed"]) for r in rows if r.get("status") == "error"}
    # (defence, attack, metric) -> {seed: value}
    v = collections.defaultdict(dict)
    for r in ok:
        v[(r["defence"], r["attack"], r["metric"])][r["seed"]] = r["value"]
    seeds = sorted({r["seed"] for r in ok})
    defences = sorted({r["defence"] for r in ok if r["attack"] == "-"},
                      key=lambda d: (d.split("+")[0] != "none", d.split("+")[0] != "qat", d))
    attacks = sorted({r["attack"] for r in ok if r["attack"] != "-"})

    def vals(d, a, m):
        return list(v.get((d, a, m), {}).values())

    print(f"Records: {path}; seeds {seeds}; {len(failed)} failed cells.\n")
    print("| defence | owner acc | fake-quant acc | int8 agreement | int8 - fake acc | divergence "
          "| model bytes | b1 latency / f32 | protect s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for d in defences:
        cells = [fmt(vals(d, "-", "owner-accuracy")), fmt(vals(d, "-", "fake-quant-accuracy")),
                 fmt(vals(d, "-", "int8-agreement"), 4), fmt(vals(d, "-", "int8-accuracy-change"), 4),
                 fmt(vals(d, "-", "divergence"), 4)]
        mb = vals(d, "-", "model-bytes")
        cells.append(f"{statistics.mean(mb):,.0f}" if mb else "-")
        lr = vals(d, "-", "latency-ratio")
        cells.append(f"{statistics.median(lr):.2f}" if lr else "-")
        ps = vals(d, "-", "protect-seconds")
        cells.append(f"{statistics.mean(ps):.0f}" if ps else "-")
        print(f"| {d} | " + " | ".join(cells) + " |")

    print("\nAttacker accuracy / fidelity (mean ± 95% t-interval over seeds):\n")
    print("| attack | defence | attacker acc | fidelity | seeds |")
    print("|---|---|---|---|---|")
    for a in attacks:
        for d in sorted({d for (d, aa, m) in v if aa == a}):
            acc = vals(d, a, "attacker-accuracy")
            print(f"| {a} | {d} | {fmt(acc)} | {fmt(vals(d, a, 'fidelity'))} | {len(acc)} |")

    def paired(d1, a1, d0, a0, metric):
        x1, x0 = v.get((d1, a1, metric), {}), v.get((d0, a0, metric), {})
        return [x1[s] - x0[s] for s in sorted(set(x1) & set(x0))]

    def verdict(diffs, want_below, margin=0.0):
        m, h = interval(diffs) if diffs else (None, None)
        if h is None:
            return "undecided (fewer than two seeds)"
        lo, hi = m - h, m + h
        if want_below:
            return "holds" if hi < -margin else ("fails" if lo > -margin else "undecided")
        return "holds" if lo > -margin else ("fails" if hi < -margin else "undecided")

    alphas = [d for d in defences if d.startswith("divqat") and "+" not in d]
    extractions = [a for a in attacks if a.startswith("extract")]
    print("\nClaims (paired over seeds: divqat entry minus qat, same seed):\n")
    print("| claim | comparison | difference (mean ± 95% t) | seeds | verdict |")
    print("|---|---|---|---|---|")
    for d in alphas:
        diffs = paired(d, "-", "qat", "-", "owner-accuracy")
        print(f"| 1. no accuracy cost (within 1 point) | owner acc {d} - qat | {fmt(diffs)} | "
              f"{len(diffs)} | {verdict(diffs, False, 0.01)} |")
    for a in extractions:
        for d in alphas:
            diffs = paired(d, a, "qat", a, "attacker-accuracy")
            if diffs:
                print(f"| 2. worse substitutes | {a}: attacker acc {d} - qat | {fmt(diffs)} | "
                      f"{len(diffs)} | {verdict(diffs, True)} |")
    for a in extractions:
        for d in [d for d in {dd for (dd, aa, m) in v if aa == a} if "+" in d and d.startswith("divqat")]:
            base, pert = d.split("+", 1)
            diffs = paired(d, a, f"qat+{pert}", a, "attacker-accuracy")
            if diffs:
                print(f"| 3. better when stacked | {a}: attacker acc {d} - qat+{pert} | "
                      f"{fmt(diffs)} | {len(diffs)} | {verdict(diffs, True)} |")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
