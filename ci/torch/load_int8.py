#!/usr/bin/env python3
"""Loads an int8 weights file written by the Rust side (ParamStore::save of a store whose
convolution and linear weights were quantised) into the PyTorch twin of the model
(ci/torch/models.py) and checks that PyTorch reproduces the logits the Rust side computed.

Manual / optional check: CI has no torch. Run from the repository root:

    cargo test -p harness-core --test int8 export_int8_for_torch
    ~/.torchref/bin/python ci/torch/load_int8.py [DIR]   # DIR default target/tmp/int8

The file convention (harness/core/src/params/safetensors_io.rs): an int8 tensor is stored under
the parameter's name with dtype I8, with `<name>.scale` (F32, shape [channels], or [] per tensor)
and `<name>.zero_point` (I64, same shape) beside it; the channel axis of a per-channel tensor is
`<name>.axis` (I64 scalar), written only when it is not 0.

For resnet20_int8.safetensors in DIR it
1. rebuilds every int8 tensor as a PyTorch qint8 tensor (torch._make_per_channel_quantized_tensor
   / _make_per_tensor_quantized_tensor) and dequantises it, checking the result against the
   plain formula (q - zero_point) * scale;
2. checks that torch.quantize_per_channel of the f32 weights (resnet20_f32.safetensors, the same
   model before quantisation) with the file's scales gives the file's int8 values bit for bit,
   and that the scales are max|w| / 127 per channel (at least float32 eps);
3. loads the dequantised state dict into models.build("resnet20") with a strict load_state_dict,
   runs eval mode on the stored input and compares with the stored logits
   (resnet20_int8_io.safetensors).
Exit status 1 on any mismatch, 2 when the files are missing.
"""
import os
import sys

import torch
from safetensors import safe_open
from safetensors.torch import load_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import models  # noqa: E402

TOL = 1e-4  # max abs difference relative to max(1, max |logits|)


def read_int8_file(path):
    """The file's tensors as a state dict of float tensors (int8 ones dequantised), plus the
    int8 tensors as PyTorch quantized tensors by name."""
    with safe_open(path, framework="pt") as f:
        raw = {name: f.get_tensor(name) for name in f.keys()}
    int8 = {name for name, t in raw.items() if t.dtype == torch.int8}
    state, quantized = {}, {}
    for name, t in raw.items():
        base = name.rsplit(".", 1)[0]
        if name.endswith((".scale", ".zero_point", ".axis")) and base in int8:
            continue
        if name not in int8:
            state[name] = t
            continue
        if f"{name}.scale" not in raw or f"{name}.zero_point" not in raw:
            raise ValueError(f"int8 tensor {name} has no .scale / .zero_point beside it")
        scale, zero_point = raw[f"{name}.scale"], raw[f"{name}.zero_point"]
        assert scale.dtype == torch.float32 and zero_point.dtype == torch.int64, name
        if scale.dim() == 0:
            q = torch._make_per_tensor_quantized_tensor(t, float(scale), int(zero_point))
            manual = (t.to(torch.float32) - zero_point.to(torch.float32)) * scale
        else:
            axis = int(raw[f"{name}.axis"]) if f"{name}.axis" in raw else 0
            q = torch._make_per_channel_quantized_tensor(t, scale.double(), zero_point, axis)
            view = [1] * t.dim()
            view[axis] = -1
            zero = zero_point.view(view).to(torch.float32)
            manual = (t.to(torch.float32) - zero) * scale.view(view)
        deq = q.dequantize()
        if not torch.equal(deq, manual):
            raise ValueError(f"{name}: dequantize() and (q - zero_point) * scale differ")
        quantized[name] = q
        state[name] = deq
    return state, quantized


def main():
    d = sys.argv[1] if len(sys.argv) > 1 else "target/tmp/int8"
    weights = os.path.join(d, "resnet20_int8.safetensors")
    original = os.path.join(d, "resnet20_f32.safetensors")
    io = os.path.join(d, "resnet20_int8_io.safetensors")
    if not all(os.path.exists(p) for p in (weights, original, io)):
        print(f"no resnet20_int8 / resnet20_f32 / resnet20_int8_io files in {d}", file=sys.stderr)
        sys.exit(2)
    torch.set_num_threads(2)
    failed = 0

    state, quantized = read_int8_file(weights)
    f32 = load_file(original)
    eps = torch.finfo(torch.float32).eps
    mismatched = []
    for name, q in quantized.items():
        w = f32[name]
        if q.qscheme() == torch.per_tensor_affine:
            want_scale = torch.clamp(w.abs().max() / 127, min=eps)
            scales = torch.tensor(q.q_scale(), dtype=torch.float32)
            redo = torch.quantize_per_tensor(w, q.q_scale(), q.q_zero_point(), torch.qint8)
        else:
            axis = q.q_per_channel_axis()
            dims = [i for i in range(w.dim()) if i != axis]
            want_scale = torch.clamp(w.abs().amax(dim=dims) / 127, min=eps)
            scales = q.q_per_channel_scales().to(torch.float32)
            redo = torch.quantize_per_channel(
                w, q.q_per_channel_scales(), q.q_per_channel_zero_points(), axis, torch.qint8)
        if not torch.equal(scales, want_scale) or not torch.equal(redo.int_repr(), q.int_repr()):
            mismatched.append(name)
    failed += bool(mismatched)
    print(f"{len(quantized)} int8 tensors: torch.quantize_per_channel gives the same int8 values "
          f"and scales: {'OK' if not mismatched else 'MISMATCH ' + ', '.join(mismatched)}")

    model = models.build("resnet20")
    model.load_state_dict(state, strict=True)
    model.eval()
    data = load_file(io)
    with torch.no_grad():
        out = model(data["x"])
    want = data["logits"]
    diff = (out - want).abs().max().item()
    scale = max(1.0, want.abs().max().item())
    ok = diff <= TOL * scale
    failed += not ok
    print(f"resnet20 int8: strict load ok, {len(state)} tensors ({len(quantized)} dequantised), "
          f"max abs diff {diff:.3e} (scale {scale:.3f}) {'OK' if ok else 'MISMATCH'}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
