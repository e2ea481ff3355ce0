#!/usr/bin/env python3
"""Loads weights written by the Rust side into the PyTorch twins (ci/torch/models.py) with a strict
load_state_dict and checks that PyTorch reproduces the logits the Rust side computed.

Manual / optional check: CI has no torch. Run from the repository root:

    cargo test -p harness-core --test zoo export_for_torch_interop      # ResNet-20 only
    PROTBENCH_INTEROP_ALL=1 cargo test -p harness-core --test zoo export_for_torch_interop
    ~/.torchref/bin/python ci/torch/check_interop.py [DIR]   # DIR default target/tmp/interop

For every <arch>.safetensors in DIR (written by ParamStore::save) with its <arch>_io.safetensors
(input `x`, eval-mode `logits`), it builds models.build(arch), loads the file with
safetensors.torch.load_file + load_state_dict(strict=True), runs eval mode on `x` and compares.
Exit status 1 on any mismatch.
"""
import os
import sys

import torch
from safetensors.torch import load_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import models  # noqa: E402

TOL = 1e-4  # max abs difference relative to max(1, max |logits|)


def main():
    d = sys.argv[1] if len(sys.argv) > 1 else "target/tmp/interop"
    torch.set_num_threads(2)
    failed = checked = 0
    for arch in models.ARCHS:
        weights = os.path.join(d, f"{arch}.safetensors")
        io = os.path.join(d, f"{arch}_io.safetensors")
        if not (os.path.exists(weights) and os.path.exists(io)):
            continue
        checked += 1
        model = models.build(arch)
        state = load_file(weights)
        model.load_state_dict(state, strict=True)
        for name, t in model.state_dict().items():
            if name.endswith("num_batches_tracked"):
                assert t.dtype == torch.int64 and t.shape == (), f"{name}: {t.dtype} {tuple(t.shape)}"
        model.eval()
        data = load_file(io)
        with torch.no_grad():
            out = model(data["x"])
        want = data["logits"]
        diff = (out - want).abs().max().item()
        scale = max(1.0, want.abs().max().item())
        ok = diff <= TOL * scale
        failed += not ok
        counter = int(state[next(k for k in state if k.endswith("num_batches_tracked"))])
        print(f"{arch:14s} strict load ok, {len(state)} tensors, num_batches_tracked={counter}, "
              f"max abs diff {diff:.3e} (scale {scale:.3f}) {'OK' if ok else 'MISMATCH'}")
    if checked == 0:
        print(f"no <arch>.safetensors + <arch>_io.safetensors pairs in {d}", file=sys.stderr)
        sys.exit(2)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
