#!/usr/bin/env python3
"""Markdown tables of a selective-encryption run from its records.jsonl (no dependencies).

    python3 ci/summaries/levels_table.py RESULTS/RUN/records.jsonl

Prints, per defence entry: the masked share of conv parameters, the quality (accuracy, or PSNR
for a denoiser) at every access level (level 0 = no licence = the weights as stolen), with the
full licence (= the owner's model), the ranking / encryption / decryption times and the licence
size; then, when the run has attacks, each attack's accuracy and theft gain against the no-theft
reference. Every number is read from the records; the only arithmetic is means over seeds and
the theft gain (attacker accuracy minus the no-theft reference, as the harness's summary does).
"""
import collections
import json
import re
import sys


def main(path):
    rows = [json.loads(line) for line in open(path) if line.strip()]
    ok = [r for r in rows if r.get("status", "ok") == "ok"]
    cells = collections.defaultdict(lambda: collections.defaultdict(list))
    for r in ok:
        cells[(r["defence"], r["attack"])][r["metric"]].append(r["value"])

    def mean(values):
        return sum(values) / len(values) if values else None

    def get(d, a, m):
        return mean(cells[(d, a)].get(m, []))

    defences = sorted({d for d, a in cells if a == "-"}, key=sort_key)
    psnr = any("owner-psnr" in cells[(d, "-")] for d in defences)
    quality, unit = ("psnr", " dB") if psnr else ("accuracy", "")
    levels = sorted(
        {m.split(":", 1)[1] for d in defences for m in cells[(d, "-")] if m.startswith(f"level-{quality}:")},
        key=lambda s: int(re.sub(r"\D", "", s) or 0),
    )
    fmt = (lambda v: f"{v:.2f}") if psnr else (lambda v: f"{v:.3f}")
    show = lambda v: "-" if v is None else fmt(v)
    head = ["defence", "masked conv params"] + [f"{l}{' (no licence)' if l == 'level-0' else ''}" for l in levels]
    head += ["full licence", "ranking s", "encrypt s", "decrypt s", "licence bytes"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for d in defences:
        frac = get(d, "-", "encrypted-conv-fraction")
        line = [d, "-" if frac is None else f"{100 * frac:.1f} %"]
        line += [show(get(d, "-", f"level-{quality}:{l}")) for l in levels]
        line.append(show(get(d, "-", f"owner-{quality}")))
        for m, digits in (("rank-seconds", 1), ("encrypt-seconds", 3), ("decrypt-seconds", 3)):
            v = get(d, "-", m)
            line.append("-" if v is None else f"{v:.{digits}f}")
        lic = get(d, "-", "licence-bytes")
        line.append("-" if lic is None else str(int(lic)))
        print("| " + " | ".join(line) + " |")
    if psnr:
        noisy = get(defences[0], "-", "noisy-psnr") if defences else None
        print(f"\nNoisy input (the do-nothing reference): {show(noisy)}{unit}.")

    attacks = sorted({a for d, a in cells if a not in ("-",) and d != "*"})
    if attacks:
        scratch = get("*", "scratch", "attacker-accuracy")
        print(f"\nNo-theft reference (scratch, the attacker's data alone): {show(scratch)}\n")
        print("| defence | " + " | ".join(f"{a}: acc / gain" for a in attacks) + " |")
        print("|---|" + "---|" * len(attacks))
        for d in defences:
            if not any((d, a) in cells for a in attacks):
                continue
            line = [d]
            for a in attacks:
                acc = get(d, a, "attacker-accuracy")
                if acc is None:
                    line.append("-")
                elif scratch is None:
                    line.append(fmt(acc))
                else:
                    line.append(f"{fmt(acc)} / {acc - scratch:+.3f}")
            print("| " + " | ".join(line) + " |")


RANKINGS = ["pss", "random", "l1", "mean"]


def sort_key(name):
    """`none` first, then by ratio, then PSS before the cheap rankings."""
    m = re.match(r"([a-z][a-z0-9]*)-(\d+)$", name)
    if name == "none":
        return (0, 0, 0, name)
    if m:
        rank = RANKINGS.index(m.group(1)) if m.group(1) in RANKINGS else len(RANKINGS)
        return (1, int(m.group(2)), rank, name)
    return (2, 0, 0, name)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: levels_table.py RESULTS/RUN/records.jsonl")
    main(sys.argv[1])
