#!/usr/bin/env python3
"""Reads an int8 deployment file written by the Rust side (`Int8Model::save`: every convolution
and linear layer as int8 weights with per-channel scales, the folded bias, and the layer input's
scale and zero point) into the PyTorch twin of ResNet-20 (ci/torch/models.py) and checks that
PyTorch reproduces the logits the integer kernels computed.

Manual / optional check: CI has no torch. Run from the repository root:

    cargo test -p harness-core --test int8 export_int8_deployment_for_torch
    ~/.torchref/bin/python ci/torch/load_int8_deployment.py [DIR]   # DIR default target/tmp/int8

PyTorch computes each layer as the deployment defines it, in float: the input fake-quantized
with the file's scale and zero point (`torch.fake_quantize_per_tensor_affine`, range 0..127),
times the dequantized int8 weights (`torch._make_per_channel_quantized_tensor(...).dequantize()`),
plus the folded bias; batch norms are gone (folded), residual additions, pooling and ReLU stay
float. The Rust side sums the integer products exactly and scales once, so the two differ by
float rounding only, except where that rounding moves a value across a quantization step of the
next layer's input. The check: the same top-1 for every image and logits within 1% of their
largest magnitude. Exit status 1 on a mismatch, 2 when the files are missing.
"""
import os
import sys

import torch
import torch.nn as nn
from safetensors import safe_open
from safetensors.torch import load_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import models  # noqa: E402

TOL = 1e-2  # max abs difference relative to max(1, max |logits|)


def main():
    d = sys.argv[1] if len(sys.argv) > 1 else "target/tmp/int8"
    weights = os.path.join(d, "resnet20_deployment.safetensors")
    io = os.path.join(d, "resnet20_deployment_io.safetensors")
    if not all(os.path.exists(p) for p in (weights, io)):
        print(f"no resnet20_deployment / resnet20_deployment_io files in {d}", file=sys.stderr)
        sys.exit(2)
    torch.set_num_threads(2)
    with safe_open(weights, framework="pt") as f:
        raw = {name: f.get_tensor(name) for name in f.keys()}

    model = models.build("resnet20")
    model.eval()
    # Batch norms are folded into the layers before them: drop them.
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.BatchNorm2d):
                setattr(module, child_name, nn.Identity())
    layers = {n: m for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    used = set()
    for name, layer in layers.items():
        w, scale, zp = (raw[f"{name}.weight"], raw[f"{name}.weight.scale"],
                        raw[f"{name}.weight.zero_point"])
        assert w.dtype == torch.int8 and bool((zp == 0).all()), name
        q = torch._make_per_channel_quantized_tensor(w, scale.double(), zp, 0)
        with torch.no_grad():
            layer.weight.copy_(q.dequantize())
            layer.bias = nn.Parameter(raw[f"{name}.bias"].clone())
        s, z = float(raw[f"{name}.input_scale"]), int(raw[f"{name}.input_zero_point"])
        assert 0 <= z <= 127 and s > 0, name

        def quantize_input(_module, args, s=s, z=z):
            return (torch.fake_quantize_per_tensor_affine(args[0], s, z, 0, 127),)

        layer.register_forward_pre_hook(quantize_input)
        used |= {f"{name}.{t}" for t in ("weight", "weight.scale", "weight.zero_point", "bias",
                                         "input_scale", "input_zero_point")}
    extra = sorted(set(raw) - used)
    if extra:
        print(f"tensors the twin does not use: {extra}", file=sys.stderr)
        sys.exit(1)

    data = load_file(io)
    with torch.no_grad():
        out = model(data["x"])
    want = data["logits"]
    diff = (out - want).abs().max().item()
    scale = max(1.0, want.abs().max().item())
    same_top1 = bool((out.argmax(1) == want.argmax(1)).all())
    ok = diff <= TOL * scale and same_top1
    print(f"resnet20 int8 deployment: {len(layers)} integer layers, {len(raw)} tensors, "
          f"max abs logit diff {diff:.3e} (scale {scale:.3f}), same top-1: {same_top1} "
          f"{'OK' if ok else 'MISMATCH'}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
