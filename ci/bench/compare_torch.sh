#!/usr/bin/env bash
# Side-by-side CPU speed of PyTorch and the harness on the two reference nets (ResNet-20 and
# VGG-small), in one go on the same machine, so that the noise of a shared machine hits both.
#
# Each round runs, per net, the PyTorch reference (shared/bench/torch_reference.py, its own
# `bench_net` measurement, one process per net so that peak memory is per net as for the harness)
# and `harness bench --model NET --json`. The table shows min/median/max over the rounds of each
# side's per-round median, and the ratios of the medians: harness/torch for throughput and memory
# (>1: we are faster / use more memory), torch/harness for latency (>1: we are faster).
#
# Environment:
#   ROUNDS       rounds (default 3)
#   THREADS      threads for both sides (default 2; RAYON_NUM_THREADS for the harness)
#   TORCH_PYTHON python with torch and numpy (default ~/.torchref/bin/python)
#   SHARED_DIR   folder holding bench/torch_reference.py (default ../shared from the repo root)
#   HARNESS      harness binary (default target/release/harness; build with
#                `cargo build --release -p harness`)
#   OUT_DIR      where the raw JSON of every run goes (default: a temporary folder, kept)
#   HARNESS_ARGS extra arguments for `harness bench` (e.g. --stock)
#   NUMERICS     the harness's numerics modes to time, each beside the same torch rounds
#                (default "fixed fast": the default, reproducible mode and the fast one, so the
#                table gives the cost of reproducibility; PROTBENCH_NUMERICS of each run)
#   PRECISION    f32 (default), or int8: PyTorch's own int8 model (ci/bench/torch_int8.py: the
#                same net after FX QAT with the x86 recipe, converted to its x86 quantized
#                backend) beside `harness bench --precision int8`, each side's int8 throughput at
#                batch 256 and batch-1 latency with its own f32 in the same process
#                (TORCH_INT8_ENGINE and ONEDNN_MAX_CPU_ISA reach the PyTorch side: see that
#                script)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
ROUNDS="${ROUNDS:-3}"
THREADS="${THREADS:-2}"
TORCH_PYTHON="${TORCH_PYTHON:-$HOME/.torchref/bin/python}"
SHARED_DIR="${SHARED_DIR:-$ROOT/../shared}"
HARNESS="${HARNESS:-$ROOT/target/release/harness}"
HARNESS_ARGS="${HARNESS_ARGS:-}"
PRECISION="${PRECISION:-f32}"
NUMERICS="${NUMERICS:-fixed fast}"
REFERENCE="$SHARED_DIR/bench/torch_reference.py"

if ! [[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]]; then
    echo "ROUNDS must be a positive integer, got '$ROUNDS'" >&2
    exit 2
fi
if [[ "$PRECISION" != f32 && "$PRECISION" != int8 ]]; then
    echo "PRECISION must be f32 or int8, got '$PRECISION'" >&2
    exit 2
fi
for mode in $NUMERICS; do
    if [[ "$mode" != fixed && "$mode" != fast ]]; then
        echo "NUMERICS must list fixed and/or fast, got '$NUMERICS'" >&2
        exit 2
    fi
done
if [[ "$PRECISION" == int8 ]]; then
    HARNESS_ARGS="$HARNESS_ARGS --precision int8"
fi
if [[ ! -f "$REFERENCE" ]]; then
    echo "cannot find $REFERENCE (set SHARED_DIR to the folder holding bench/torch_reference.py)" >&2
    exit 2
fi
if ! "$TORCH_PYTHON" -c 'import torch, numpy' >/dev/null 2>&1; then
    echo "PyTorch is not available to $TORCH_PYTHON. Install it (large download, once) with:" >&2
    echo "  python3 -m venv ~/.torchref && ~/.torchref/bin/pip install torch numpy" >&2
    echo "or point TORCH_PYTHON at a python that has torch and numpy." >&2
    exit 2
fi
if [[ ! -x "$HARNESS" ]]; then
    echo "cannot find the harness binary $HARNESS; build it with: cargo build --release -p harness" >&2
    exit 2
fi
command -v python3 >/dev/null || { echo "python3 is needed to read the JSON" >&2; exit 2; }

OUT_DIR="${OUT_DIR:-$(mktemp -d -t compare_torch.XXXXXX)}"
mkdir -p "$OUT_DIR"

# Runs the reference's own measurement (`bench_net`) for one net in a fresh process and records
# the process's peak resident memory beside it (the reference does not measure memory).
torch_one() { # net-name class-name out.json
    if [[ "$PRECISION" == int8 ]]; then
        "$TORCH_PYTHON" "$ROOT/ci/bench/torch_int8.py" "$REFERENCE" "$THREADS" "$1" "$2" "$3" \
            2>"$3.err" || { echo "torch int8 $1 failed:" >&2; cat "$3.err" >&2; exit 1; }
        return
    fi
    "$TORCH_PYTHON" - "$REFERENCE" "$THREADS" "$1" "$2" "$3" <<'PY'
import importlib.util, json, resource, sys
script, threads, net, cls, out = sys.argv[1:6]
# The reference reads --threads from sys.argv when imported.
sys.argv = [script, "nets", "--threads", threads]
spec = importlib.util.spec_from_file_location("torch_reference", script)
ref = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ref)
res = ref.bench_net(net, getattr(ref, cls))
res["torch"] = ref.torch.__version__
res["threads"] = ref.torch.get_num_threads()
res["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
with open(out, "w") as f:
    json.dump(res, f, indent=1)
PY
}

harness_one() { # model out.json numerics
    # shellcheck disable=SC2086
    PROTBENCH_NUMERICS="$3" RAYON_NUM_THREADS="$THREADS" "$HARNESS" bench --model "$1" --json $HARNESS_ARGS \
        >"$2.log" 2>"$2.err" || { echo "harness bench --model $1 failed:" >&2; cat "$2.err" >&2; exit 1; }
    tail -n 1 "$2.log" >"$2"
}

echo "comparing on $(nproc) cores, $THREADS threads, $ROUNDS round(s); raw JSON in $OUT_DIR" >&2
for ((r = 1; r <= ROUNDS; r++)); do
    echo "round $r/$ROUNDS: torch resnet20" >&2
    torch_one resnet20 ResNet20 "$OUT_DIR/torch-resnet20-$r.json"
    for mode in $NUMERICS; do
        echo "round $r/$ROUNDS: harness ($mode numerics) resnet20" >&2
        harness_one resnet20 "$OUT_DIR/harness-$mode-resnet20-$r.json" "$mode"
    done
    echo "round $r/$ROUNDS: torch vgg-small" >&2
    torch_one vgg_small VGGSmall "$OUT_DIR/torch-vgg-small-$r.json"
    for mode in $NUMERICS; do
        echo "round $r/$ROUNDS: harness ($mode numerics) vgg-small" >&2
        harness_one vgg-small "$OUT_DIR/harness-$mode-vgg-small-$r.json" "$mode"
    done
done

python3 - "$OUT_DIR" "$ROUNDS" "$PRECISION" "$NUMERICS" <<'PY'
import json, statistics, sys
out_dir, rounds, precision = sys.argv[1], int(sys.argv[2]), sys.argv[3]
modes = sys.argv[4].split()

def load(side, net):
    return [json.load(open(f"{out_dir}/{side}-{net}-{r}.json")) for r in range(1, rounds + 1)]

# (label, torch getter, harness getter, ratio direction, format)
METRICS = [
    ("train img/s (b128)", lambda t: t["train_img_s"]["median"],
     lambda h: h["train_images_per_second"], "h/t", "{:.0f}"),
    ("infer img/s (b256)", lambda t: t["infer_b256_img_s"]["median"],
     lambda h: h["infer_images_per_second"], "h/t", "{:.0f}"),
    ("latency b1 p50 (ms)", lambda t: t["latency_b1_ms"]["median"],
     lambda h: h["latency_ms_p50"], "t/h", "{:.3f}"),
    ("latency b1 p99 (ms)", lambda t: t["latency_b1_ms"]["p99"],
     lambda h: h["latency_ms_p99"], "t/h", "{:.3f}"),
    ("peak RSS (MiB)", lambda t: t["peak_rss_bytes"] / 2**20,
     lambda h: h["peak_rss_bytes"] / 2**20, "h/t", "{:.0f}"),
]
if precision == "int8":
    # Each side's int8 model, and its int8 / f32 ratios measured in the same process.
    METRICS = [
        ("int8 infer img/s (b256)", lambda t: t["int8_infer_b256_img_s"],
         lambda h: h["int8_infer_images_per_second"], "h/t", "{:.0f}"),
        ("int8 / f32 img/s (b256)",
         lambda t: t["int8_infer_b256_img_s"] / t["f32_infer_b256_img_s"],
         lambda h: h["int8_infer_images_per_second"] / h["infer_images_per_second"], "h/t",
         "{:.2f}"),
        ("int8 latency b1 p50 (ms)", lambda t: t["int8_latency_b1_ms"],
         lambda h: h["int8_latency_ms_p50"], "t/h", "{:.3f}"),
        ("int8 / f32 latency b1", lambda t: t["int8_latency_b1_ms"] / t["f32_latency_b1_ms"],
         lambda h: h["int8_latency_ratio"], "t/h", "{:.2f}"),
    ]

def mmm(xs, fmt):
    return "/".join(fmt.format(v) for v in (min(xs), statistics.median(xs), max(xs)))

first_t = load("torch", "resnet20")[0]
first_h = load(f"harness-{modes[0]}", "resnet20")[0]
prov = first_h.get("provenance", {})
print(f"torch {first_t.get('torch')} ({first_t.get('threads')} threads) vs harness "
      f"{prov.get('harness_version')} {prov.get('git')} ({first_h.get('threads')} threads, "
      f"numerics {', '.join(modes)}, "
      f"{first_h.get('kernels')} kernels, int8 kernel {first_h.get('int8_kernel')}"
      + (f"; torch int8 engine {first_t.get('engine')}, oneDNN ISA cap "
         f"{first_t.get('onednn_max_cpu_isa')}" if precision == "int8" else "")
      + f", cpu {','.join(prov.get('cpu_features', []))}); "
      f"{rounds} round(s), min/median/max of per-round medians")
rows = []
for net in ("resnet20", "vgg-small"):
    ts = load("torch", net)
    hs = {m: load(f"harness-{m}", net) for m in modes}
    for label, tget, hget, direction, fmt in METRICS:
        tv = [tget(t) for t in ts]
        tm = statistics.median(tv)
        row = [net, label, mmm(tv, fmt)]
        medians = {}
        for m in modes:
            hv = [hget(h) for h in hs[m]]
            medians[m] = statistics.median(hv)
            row.append(mmm(hv, fmt))
        for m in modes:
            hm = medians[m]
            if direction == "h/t":
                ratio = hm / tm if tm else float("nan")
            else:
                ratio = tm / hm if hm else float("nan")
            row.append(f"{ratio:.2f} ({direction})")
        if "fixed" in medians and "fast" in medians:
            # The cost of reproducibility, in the direction where >1 means fixed is better.
            fx, fs = medians["fixed"], medians["fast"]
            better = fx / fs if direction == "h/t" else fs / fx
            row.append(f"{better:.2f}")
        rows.append(tuple(row))

head = ["net", "measurement", "torch min/med/max"]
head += [f"harness {m} min/med/max" for m in modes]
head += [f"ratio {m}" for m in modes]
if "fixed" in modes and "fast" in modes:
    head.append("fixed vs fast")
head = tuple(head)
widths = [max(len(str(r[i])) for r in rows + [head]) for i in range(len(head))]
line = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths))
print(line(head))
print("  ".join("-" * w for w in widths))
for r in rows:
    print(line(r))
print("ratios: h/t = harness/torch (throughput: >1 we are faster; memory: >1 we use more); "
      "t/h = torch/harness (latency: >1 we are faster); fixed vs fast: fixed's throughput "
      "(or inverse latency, or memory) over fast's, <1 = what reproducibility costs")
PY
