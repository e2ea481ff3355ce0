#!/usr/bin/env python3
"""Writes the PyTorch fixtures that harness/core/tests/quant.rs checks the fake quantization of
quantization-aware training against, bit for bit.

Usage (from the repository root; needs torch and safetensors; CI does not run this, the output is
committed):

    ~/.torchref/bin/python ci/torch/make_quant_fixtures.py [--out harness/core/tests/fixtures]

Everything goes through the modules of PyTorch's x86 QAT recipe,
`torch.ao.quantization.get_default_qat_qconfig("x86")`:
- activations: FusedMovingAvgObsFakeQuantize with a MovingAverageMinMaxObserver, quint8,
  per-tensor affine, reduce_range (quant range 0..127), averaging constant 0.01;
- weights: FusedMovingAvgObsFakeQuantize with a MovingAveragePerChannelMinMaxObserver, qint8,
  per-channel symmetric, -128..127, channel axis 0, averaging constant 0.01.

Writes quant.safetensors (torch.manual_seed(0)) with, for each case `act{i}` / `wt{i}`:
  {case}.x{s}       the s-th input of a sequence of steps (a module observes every step)
  {case}.y{s}       the module's output at step s (observer and fake quantization enabled)
  {case}.grad{s}    d(sum(y * g)) / dx at step s, g = {case}.g{s} (the straight-through mask)
  {case}.g{s}       the upstream gradient
  {case}.min{s}, {case}.max{s}, {case}.scale{s}, {case}.zp{s}  the observer's running min / max
                    and the quantization parameters after step s (zp as int64)
Steps 0..S-1 observe; in the last step (S) the observer is disabled (frozen), as after
`torch.ao.quantization.disable_observer`.
Also qparams.safetensors: rows of (min, max) pairs and the scale / zero point the fused op's
qparams choice gives for each, for the affine 0..127 and the symmetric -128..127 schemes,
including degenerate ranges (all zero, tiny, one-sided, huge).
"""
import argparse
import os

import torch
from safetensors.torch import save_file
from torch.ao.quantization import get_default_qat_qconfig


def c(t):
    return t.detach().contiguous().clone()


def sequence(name, module, shapes, scales, offsets, out):
    steps = len(shapes)
    for s, (shape, sc, off) in enumerate(zip(shapes, scales, offsets)):
        if s == steps - 1:
            module.disable_observer()
        x = (torch.randn(*shape) * sc + off).requires_grad_(True)
        y = module(x)
        g = torch.randn_like(y)
        (y * g).sum().backward()
        out[f"{name}.x{s}"] = c(x)
        out[f"{name}.y{s}"] = c(y)
        out[f"{name}.g{s}"] = c(g)
        out[f"{name}.grad{s}"] = c(x.grad)
        obs = module.activation_post_process
        out[f"{name}.min{s}"] = c(obs.min_val.reshape(-1))
        out[f"{name}.max{s}"] = c(obs.max_val.reshape(-1))
        out[f"{name}.scale{s}"] = c(module.scale.reshape(-1))
        out[f"{name}.zp{s}"] = c(module.zero_point.reshape(-1).to(torch.int64))
    out[f"{name}.steps"] = torch.tensor([steps], dtype=torch.int64)


def qparams_rows(qc, per_channel):
    mins, maxs = [], []
    specials = [(0.0, 0.0), (0.0, 1e-9), (-1e-9, 0.0), (-1e-7, 2e-7), (0.0, 5.0), (-3.0, 0.0),
                (-1.0, 1.0), (-0.25, 7.5), (-1e6, 1e6), (2.0, 3.0), (-3.0, -2.0), (-1e-30, 1e-30)]
    for a, b in specials:
        mins.append(a)
        maxs.append(b)
    for _ in range(500):
        e = float(torch.empty(1).uniform_(-8, 4))
        a = float(torch.randn(1)) * 10 ** e
        b = a + abs(float(torch.randn(1))) * 10 ** float(torch.empty(1).uniform_(-8, 4))
        mins.append(a)
        maxs.append(b)
    mins = torch.tensor(mins, dtype=torch.float32)
    maxs = torch.tensor(maxs, dtype=torch.float32)
    scales, zps = [], []
    for a, b in zip(mins, maxs):
        m = qc()
        # One observation of a tensor holding exactly [a, b] sets the running min / max to them.
        x = torch.stack([a, b]).reshape(1, 2) if per_channel else torch.stack([a, b])
        m(x)
        scales.append(float(m.scale.reshape(-1)[0]))
        zps.append(int(m.zero_point.reshape(-1)[0]))
    return mins, maxs, torch.tensor(scales, dtype=torch.float32), torch.tensor(zps, dtype=torch.int64)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="harness/core/tests/fixtures")
    args = ap.parse_args()
    torch.manual_seed(0)
    qconfig = get_default_qat_qconfig("x86")
    out = {}
    # Activations: per tensor, shapes of conv inputs, ranges moving over the steps.
    act_cases = [
        ([(4, 3, 5, 5)] * 4, [1.0, 1.5, 0.7, 1.2], [0.0, 0.3, -0.2, 0.1]),
        ([(2, 8, 4, 4)] * 3, [0.01, 0.02, 0.015], [0.5, 0.5, 0.5]),  # all positive (after ReLU)
        ([(3, 16)] * 3, [20.0, 10.0, 30.0], [0.0, -5.0, 5.0]),
    ]
    for i, (shapes, scales, offsets) in enumerate(act_cases):
        sequence(f"act{i}", qconfig.activation(), shapes, scales, offsets, out)
    # Weights: per output channel, conv and linear shapes.
    wt_cases = [
        ([(6, 3, 3, 3)] * 3, [0.2, 0.25, 0.22], [0.0, 0.01, -0.01]),
        ([(10, 16)] * 3, [0.05, 0.05, 0.06], [0.0, 0.0, 0.0]),
        ([(4, 1, 3, 3)] * 2, [1e-3, 1e-3], [0.0, 0.0]),
    ]
    for i, (shapes, scales, offsets) in enumerate(wt_cases):
        sequence(f"wt{i}", qconfig.weight(), shapes, scales, offsets, out)
    save_file(out, os.path.join(args.out, "quant.safetensors"))

    q = {}
    for name, qc, per_channel in [("affine", qconfig.activation, False),
                                  ("symmetric", qconfig.weight, True)]:
        mins, maxs, scales, zps = qparams_rows(qc, per_channel)
        q[f"{name}.min"] = mins
        q[f"{name}.max"] = maxs
        q[f"{name}.scale"] = scales
        q[f"{name}.zp"] = zps
    save_file(q, os.path.join(args.out, "qparams.safetensors"))
    print("torch", torch.__version__, "->", args.out)


if __name__ == "__main__":
    main()
