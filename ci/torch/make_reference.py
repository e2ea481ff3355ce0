#!/usr/bin/env python3
"""Writes the PyTorch reference fixtures that harness/core/tests/torch_reference.rs checks against.

Usage (from the repository root; needs torch, numpy, safetensors; CI does not run this, the outputs
are committed):

    ~/.torchref/bin/python ci/torch/make_reference.py [--out harness/core/tests/fixtures]

Writes, with torch.manual_seed(0) so the files are reproducible on one torch version:
  layers.safetensors         per-layer cases: inputs, parameters and expected outputs (see CASES)
  grad_net.safetensors       a conv+bn+relu+depthwise conv+bn+pool+linear net in train mode:
                             input, labels, weights, loss and the gradients of every parameter
  resnet20_torch.safetensors ResNet-20 state dict, written by safetensors.torch.save_file, with
                             non-trivial batch-norm running statistics
  resnet20_expected.safetensors  input x (2x3x32x32), eval-mode logits, train-mode logits and the
                             running statistics of two batch norms after that train-mode pass
and prints the trainable parameter count of every zoo architecture (hard-coded in the Rust tests).
"""
import argparse
import copy
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import models  # noqa: E402


def c(t):
    return t.detach().contiguous().clone()


def layer_cases():
    out = {}

    # Convolutions: name -> (input shape, cout, kernel, stride, padding, groups, bias).
    # The Rust test repeats this table.
    convs = {
        "conv_s1": ((2, 3, 7, 7), 4, 3, 1, 1, 1, True),
        "conv_s2": ((2, 3, 8, 8), 5, 3, 2, 1, 1, False),
        "conv_1x1_s2": ((2, 4, 7, 7), 6, 1, 2, 0, 1, False),
        "conv_groups": ((2, 4, 6, 6), 6, 3, 1, 1, 2, True),
        "conv_dw_s1": ((2, 6, 6, 6), 6, 3, 1, 1, 6, False),
        "conv_dw_s2": ((2, 6, 7, 7), 6, 3, 2, 1, 6, True),
        "conv_dw_s2_even": ((1, 5, 8, 8), 5, 3, 2, 1, 5, False),
    }
    for name, (shape, cout, k, stride, pad, groups, bias) in convs.items():
        conv = nn.Conv2d(shape[1], cout, k, stride=stride, padding=pad, groups=groups, bias=bias)
        x = torch.randn(shape)
        out[f"{name}.x"] = c(x)
        out[f"{name}.weight"] = c(conv.weight)
        if bias:
            out[f"{name}.bias"] = c(conv.bias)
        out[f"{name}.y"] = c(conv(x))

    # Batch norm in train mode: two steps (running statistics accumulate), then eval mode.
    bn = nn.BatchNorm2d(3)
    with torch.no_grad():
        bn.weight.copy_(1.0 + 0.5 * torch.randn(3))
        bn.bias.copy_(0.5 * torch.randn(3))
        bn.running_mean.copy_(torch.randn(3))
        bn.running_var.copy_(torch.rand(3) + 0.5)
    out["bn.weight"] = c(bn.weight)
    out["bn.bias"] = c(bn.bias)
    out["bn.running_mean0"] = c(bn.running_mean)
    out["bn.running_var0"] = c(bn.running_var)
    bn.train()
    for step in (1, 2):
        x = 2.0 * torch.randn(4, 3, 5, 5) + 3.0
        out[f"bn.train{step}.x"] = c(x)
        out[f"bn.train{step}.y"] = c(bn(x))
        out[f"bn.train{step}.running_mean"] = c(bn.running_mean)
        out[f"bn.train{step}.running_var"] = c(bn.running_var)
    assert int(bn.num_batches_tracked) == 2
    bn.eval()
    x = 2.0 * torch.randn(2, 3, 4, 4) + 1.0
    out["bn.eval.x"] = c(x)
    out["bn.eval.y"] = c(bn(x))

    lin = nn.Linear(5, 4)
    x = torch.randn(3, 5)
    out["linear.x"] = c(x)
    out["linear.weight"] = c(lin.weight)
    out["linear.bias"] = c(lin.bias)
    out["linear.y"] = c(lin(x))

    x = torch.randn(2, 3, 6, 6)
    out["pool.x"] = c(x)
    out["pool.max2"] = c(F.max_pool2d(x, 2))
    out["pool.avg2"] = c(F.avg_pool2d(x, 2))
    out["pool.gap"] = c(F.adaptive_avg_pool2d(x, 1).flatten(1))
    x = torch.randn(2, 3, 7, 7)
    out["pool_odd.x"] = c(x)
    out["pool_odd.max2"] = c(F.max_pool2d(x, 2))
    out["pool_odd.avg2"] = c(F.avg_pool2d(x, 2))

    x = 4.0 * torch.randn(2, 3, 4, 4)
    out["act.x"] = c(x)
    out["act.relu"] = c(F.relu(x))
    out["act.relu6"] = c(F.relu6(x))
    return out


class GradNet(nn.Module):
    """conv3x3(3->6, no bias) - bn - relu - depthwise conv3x3 stride 2 (bias) - bn - relu - maxpool 2
    - global avg pool - linear(6->4). The Rust test builds the same net from nn layers with these
    names."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 6, 3, stride=2, padding=1, groups=6, bias=True)
        self.bn2 = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6, 4)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = F.max_pool2d(x, 2)
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(x)


def grad_case():
    net = GradNet()
    with torch.no_grad():
        net.bn1.weight.copy_(1.0 + 0.3 * torch.randn(6))
        net.bn1.bias.copy_(0.3 * torch.randn(6))
    net.train()
    out = {f"param.{k}": c(v) for k, v in net.state_dict().items()}
    x = torch.randn(4, 3, 8, 8)
    y = torch.tensor([0, 1, 2, 3])
    loss = F.cross_entropy(net(x), y)
    loss.backward()
    out["x"] = c(x)
    out["labels"] = y.to(torch.int64)
    out["loss"] = c(loss.reshape(1))
    for k, p in net.named_parameters():
        out[f"grad.{k}"] = c(p.grad)
    for k, v in net.state_dict().items():
        if "running" in k:
            out[f"after.{k}"] = c(v)
    return out


def resnet20_case():
    model = models.build("resnet20")
    # Non-trivial batch-norm state: a few train-mode passes on shifted data set the running
    # statistics (num_batches_tracked = 5), and the affine parameters are perturbed.
    model.train()
    with torch.no_grad():
        for _ in range(5):
            model(0.5 * torch.randn(8, 3, 32, 32) + 0.2)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.add_(0.2 * torch.randn_like(m.weight))
                m.bias.add_(0.1 * torch.randn_like(m.bias))
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        logits_eval = model(x)
        train_model = copy.deepcopy(model)
        train_model.train()
        logits_train = train_model(x)
    expected = {
        "x": c(x),
        "logits_eval": c(logits_eval),
        "logits_train": c(logits_train),
        "after_train.bn1.running_mean": c(train_model.bn1.running_mean),
        "after_train.layer3.2.bn2.running_var": c(train_model.layer3[2].bn2.running_var),
    }
    return model.state_dict(), expected


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="harness/core/tests/fixtures")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.manual_seed(0)
    torch.set_num_threads(1)

    save_file(layer_cases(), os.path.join(args.out, "layers.safetensors"))
    save_file(grad_case(), os.path.join(args.out, "grad_net.safetensors"))
    state, expected = resnet20_case()
    save_file(state, os.path.join(args.out, "resnet20_torch.safetensors"))
    save_file(expected, os.path.join(args.out, "resnet20_expected.safetensors"))

    print(f"torch {torch.__version__}")
    print("trainable parameters (num_classes=10, in_channels=3, width=1.0):")
    for arch in models.ARCHS:
        print(f"  {arch:14s} {models.num_parameters(models.build(arch)):>12,d}")
    for arch, kw in [("dncnn", {"in_channels": 1}), ("vgg11", {"width": 0.5}),
                     ("mobilenet-v2", {"width": 0.5}), ("resnet20", {"num_classes": 100})]:
        print(f"  {arch} {kw}: {models.num_parameters(models.build(arch, **kw)):,d}")


if __name__ == "__main__":
    main()
