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
Also qat_layers.safetensors (see qat_layers) and qparams.safetensors: rows of (min, max) pairs and the scale / zero point the fused op's
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
    torch.manual_seed(1)
    qat_layers(args.out)
    print("torch", torch.__version__, "->", args.out)


def qat_layers(out_dir):
    """qat_layers.safetensors: single fused QAT layers of the x86 recipe with a fake-quantized
    input (an activation FakeQuantize before the layer, where harness_core::quant::Qat puts it),
    over a few training steps, then with observers and batch norm frozen, then in eval mode:

      {case}.w, {case}.b (if any), {case}.gamma, {case}.beta, {case}.rm, {case}.rv   initial
      {case}.x{s}, {case}.g{s}          input and upstream gradient of step s
      {case}.y{s}, {case}.dx{s}, {case}.dw{s}, {case}.dgamma{s}   output and gradients
      {case}.rm{s}, {case}.rv{s}        running statistics after step s
      {case}.in_scale{s}, {case}.in_zp{s}, {case}.w_scale{s}, {case}.w_zp{s}  parameters after s
    Steps 0-2 train; step 3 trains with observers disabled and batch norm frozen; step 4 is eval.
    """
    import torch.nn as nn
    import torch.ao.nn.intrinsic as nni
    import torch.ao.nn.intrinsic.qat as nniqat
    import torch.ao.nn.qat as nnqat

    qconfig = get_default_qat_qconfig("x86")
    out = {}

    def bn(c):
        m = nn.BatchNorm2d(c)
        m.weight.data = torch.rand(c) + 0.5
        m.bias.data = torch.randn(c) * 0.1
        m.running_mean = torch.randn(c) * 0.1
        m.running_var = torch.rand(c) + 0.5
        return m

    cases = []
    conv = nn.Conv2d(3, 5, 3, padding=1, bias=False)
    b1 = bn(5)
    cases.append(("convbnrelu", nniqat.ConvBnReLU2d.from_float(
        _with_qconfig(nni.ConvBnReLU2d(conv, b1, nn.ReLU()), qconfig)), (4, 3, 6, 6), conv, b1))
    conv2 = nn.Conv2d(4, 6, 3, stride=2, padding=1, bias=True)
    b2 = bn(6)
    cases.append(("convbn", nniqat.ConvBn2d.from_float(
        _with_qconfig(nni.ConvBn2d(conv2, b2), qconfig)), (3, 4, 8, 8), conv2, b2))
    lin = nn.Linear(12, 7)
    cases.append(("linear", nnqat.Linear.from_float(_with_qconfig(lin, qconfig)), (5, 12), lin, None))

    for name, m, shape, float_layer, bnm in cases:
        out[f"{name}.w"] = c(float_layer.weight)
        if float_layer.bias is not None:
            out[f"{name}.b"] = c(float_layer.bias)
        if bnm is not None:
            out[f"{name}.gamma"] = c(m.bn.weight)
            out[f"{name}.beta"] = c(m.bn.bias)
            out[f"{name}.rm"] = c(m.bn.running_mean)
            out[f"{name}.rv"] = c(m.bn.running_var)
        inq = qconfig.activation()
        for s in range(5):
            if s == 3:
                m.apply(torch.ao.quantization.disable_observer)
                inq.disable_observer()
                if bnm is not None:
                    m.freeze_bn_stats()
            if s == 4:
                m.eval()
                inq.eval()
            else:
                m.train()
                inq.train()
            m.zero_grad()
            x = (torch.randn(*shape) * 1.3 + 0.2).requires_grad_(True)
            y = m(inq(x))
            g = torch.randn_like(y)
            (y * g).sum().backward()
            out[f"{name}.x{s}"] = c(x)
            out[f"{name}.g{s}"] = c(g)
            out[f"{name}.y{s}"] = c(y)
            out[f"{name}.dx{s}"] = c(x.grad)
            out[f"{name}.dw{s}"] = c(m.weight.grad)
            if bnm is not None:
                out[f"{name}.dgamma{s}"] = c(m.bn.weight.grad)
                out[f"{name}.rm{s}"] = c(m.bn.running_mean)
                out[f"{name}.rv{s}"] = c(m.bn.running_var)
            out[f"{name}.in_scale{s}"] = c(inq.scale.reshape(-1))
            out[f"{name}.in_zp{s}"] = c(inq.zero_point.reshape(-1).to(torch.int64))
            out[f"{name}.w_scale{s}"] = c(m.weight_fake_quant.scale.reshape(-1))
            out[f"{name}.w_zp{s}"] = c(m.weight_fake_quant.zero_point.reshape(-1).to(torch.int64))
    save_file(out, os.path.join(out_dir, "qat_layers.safetensors"))


def _with_qconfig(m, qconfig):
    m.qconfig = qconfig
    return m


if __name__ == "__main__":
    main()
