#!/usr/bin/env python3
"""PyTorch's own int8 model beside its f32 model, for `compare_torch.sh` (PRECISION=int8).

The net is the reference script's (shared/bench/torch_reference.py), prepared for
quantization-aware training with the x86 recipe (`get_default_qat_qconfig_mapping("x86")`, FX
graph mode, so batch norm is fused and residual additions are quantized too), its observers
calibrated by a few training-mode forwards on random inputs (as `harness bench --precision int8`
does), then converted (`convert_fx`) to the x86 quantized backend (fbgemm / onednn kernels).
Measured as the reference measures f32: images per second at batch 256 (7 runs of 2 forwards)
and batch-1 latency (200 runs after 20 warm-up), both models interleaved per run so that the
noise of a shared machine hits both; the top-1 agreement of the int8 and f32 models on the
batch is reported too.

The quantized engine is `x86` unless TORCH_INT8_ENGINE names another (`fbgemm`, `onednn`).
On CPUs with AMX (Sapphire Rapids and later) oneDNN, behind `x86`, multiplies int8 tiles with
AMX; `ONEDNN_MAX_CPU_ISA=AVX512_CORE_VNNI` (or `AVX2`) keeps it to the instructions an older
CPU has, for a like-for-like comparison with the harness's kernels.

Usage: torch_int8.py REFERENCE THREADS NET CLASS OUT.json
"""
import os
import importlib.util
import json
import resource
import statistics
import sys
import time


def main():
    script, threads, net, cls, out = sys.argv[1:6]
    # The reference reads --threads from sys.argv when imported.
    sys.argv = [script, "nets", "--threads", threads]
    spec = importlib.util.spec_from_file_location("torch_reference", script)
    ref = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ref)
    torch = ref.torch
    from torch.ao.quantization import get_default_qat_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_qat_fx

    torch.backends.quantized.engine = os.environ.get("TORCH_INT8_ENGINE", "x86")
    model = getattr(ref, cls)()
    example = (torch.randn(32, 3, 32, 32),)
    model.train()
    prepared = prepare_qat_fx(model, get_default_qat_qconfig_mapping("x86"), example)
    with torch.no_grad():
        for _ in range(4):
            prepared(torch.randn(32, 3, 32, 32))
    prepared.eval()
    int8 = convert_fx(prepared)
    # The f32 side: the same architecture, unquantized (speed does not depend on the weights).
    float_model = getattr(ref, cls)().eval()

    res = {"net": net, "torch": torch.__version__, "threads": torch.get_num_threads(),
           "engine": torch.backends.quantized.engine,
           "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA")}
    xb = torch.randn(256, 3, 32, 32)
    x1 = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        for _ in range(3):
            int8(xb)
            float_model(xb)
        rates = {"int8": [], "f32": []}
        for _ in range(7):
            for name, m in (("int8", int8), ("f32", float_model)):
                t0 = time.perf_counter()
                for _ in range(2):
                    m(xb)
                rates[name].append(256 * 2 / (time.perf_counter() - t0))
        for _ in range(20):
            int8(x1)
            float_model(x1)
        lat = {"int8": [], "f32": []}
        for _ in range(200):
            for name, m in (("int8", int8), ("f32", float_model)):
                t0 = time.perf_counter()
                m(x1)
                lat[name].append((time.perf_counter() - t0) * 1e3)
        agree = (int8(xb).argmax(1) == prepared(xb).argmax(1)).float().mean().item()
    for name in ("int8", "f32"):
        res[f"{name}_infer_b256_img_s"] = statistics.median(rates[name])
        res[f"{name}_latency_b1_ms"] = statistics.median(lat[name])
    res["int8_fake_quant_agreement"] = agree
    res["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    with open(out, "w") as f:
        json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
