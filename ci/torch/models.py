"""PyTorch twins of the protbench model zoo, with the SAME state-dict names and layouts as the Rust
side (harness/core/src/zoo/*.rs), so a file written by either side loads strictly in the other.

Used by make_reference.py (reference fixtures for the Rust tests) and check_interop.py (loads files
written by the Rust side). Not used at run time; CI has no torch.

Width rounding is `max(1, floor(c * width + 0.5))`, the same as Rust's `f64::round` for positive
numbers (Python's round() rounds halves to even, so it is not used here).
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def scaled(c, width):
    return max(1, int(math.floor(c * width + 0.5)))


# ---------------------------------------------------------------------------------------------
# ResNet-20/56 for CIFAR (He et al. 2016), projection shortcuts (option B).
class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False),
                nn.BatchNorm2d(cout),
            )

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(self, depth, num_classes=10, in_channels=3):
        super().__init__()
        assert (depth - 2) % 6 == 0
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        cin = 16
        for s, (cout, stride) in enumerate([(16, 1), (32, 2), (64, 2)]):
            blocks = []
            for i in range(n):
                blocks.append(BasicBlock(cin, cout, stride if i == 0 else 1))
                cin = cout
            setattr(self, f"layer{s + 1}", nn.Sequential(*blocks))
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.fc(out)


# ---------------------------------------------------------------------------------------------
# VGG with batch norm, CIFAR variant (kuangliu/pytorch-cifar layout), global average pool.
VGG_CFG = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
              512, 512, 512, 512, "M"],
}


class VGG(nn.Module):
    def __init__(self, name, num_classes=10, in_channels=3, width=1.0):
        super().__init__()
        layers = []
        cin = in_channels
        for v in VGG_CFG[name]:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                c = scaled(v, width)
                layers += [nn.Conv2d(cin, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
                cin = c
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(cin, num_classes)

    def forward(self, x):
        out = self.features(x)
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.classifier(out)


# ---------------------------------------------------------------------------------------------
# VGG-small of shared/bench/torch_reference.py.
def conv_bn(cin, cout, k, stride):
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False),
        nn.BatchNorm2d(cout),
    )


class VGGSmall(nn.Module):
    def __init__(self, num_classes=10, in_channels=3):
        super().__init__()
        self.c1 = conv_bn(in_channels, 32, 3, 1)
        self.c2 = conv_bn(32, 32, 3, 1)
        self.c3 = conv_bn(32, 64, 3, 1)
        self.c4 = conv_bn(64, 64, 3, 1)
        self.c5 = conv_bn(64, 128, 3, 1)
        self.fc = nn.Linear(128 * 4 * 4, num_classes)

    def forward(self, x):
        x = F.relu(self.c1(x))
        x = F.relu(self.c2(x))
        x = F.max_pool2d(x, 2)
        x = F.relu(self.c3(x))
        x = F.relu(self.c4(x))
        x = F.max_pool2d(x, 2)
        x = F.relu(self.c5(x))
        x = F.max_pool2d(x, 2)
        return self.fc(x.flatten(1))


# ---------------------------------------------------------------------------------------------
# MobileNetV2, CIFAR variant (kuangliu/pytorch-cifar layout), global average pool.
class MBBlock(nn.Module):
    def __init__(self, cin, cout, expansion, stride):
        super().__init__()
        self.stride = stride
        planes = expansion * cin
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, groups=planes, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride == 1 and cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return out + self.shortcut(x) if self.stride == 1 else out


MBV2_CFG = [(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
            (6, 160, 3, 2), (6, 320, 1, 1)]


class MobileNetV2(nn.Module):
    def __init__(self, num_classes=10, in_channels=3, width=1.0):
        super().__init__()
        stem = scaled(32, width)
        self.conv1 = nn.Conv2d(in_channels, stem, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        blocks = []
        cin = stem
        for expansion, cout, n, stride in MBV2_CFG:
            cout = scaled(cout, width)
            for i in range(n):
                blocks.append(MBBlock(cin, cout, expansion, stride if i == 0 else 1))
                cin = cout
        self.layers = nn.Sequential(*blocks)
        last = scaled(1280, width) if width > 1.0 else 1280
        self.conv2 = nn.Conv2d(cin, last, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(last)
        self.linear = nn.Linear(last, num_classes)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layers(out)
        out = F.relu(self.bn2(self.conv2(out)))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


# ---------------------------------------------------------------------------------------------
# DnCNN (Zhang et al. 2017), 17 layers, residual learning: returns x - predicted noise.
class DnCNN(nn.Module):
    def __init__(self, in_channels=3, depth=17, features=64):
        super().__init__()
        layers = [nn.Conv2d(in_channels, features, 3, padding=1, bias=True), nn.ReLU(inplace=True)]
        for _ in range(depth - 2):
            layers += [nn.Conv2d(features, features, 3, padding=1, bias=False),
                       nn.BatchNorm2d(features), nn.ReLU(inplace=True)]
        layers.append(nn.Conv2d(features, in_channels, 3, padding=1, bias=False))
        self.dncnn = nn.Sequential(*layers)

    def forward(self, x):
        return x - self.dncnn(x)


ARCHS = ["resnet20", "resnet56", "vgg11", "vgg16", "vgg19", "vgg-small", "mobilenet-v2", "dncnn"]


def build(arch, num_classes=10, in_channels=3, width=1.0):
    """The PyTorch module for a zoo id, as `zoo::build` makes it in Rust."""
    if arch == "resnet20":
        return ResNet(20, num_classes, in_channels)
    if arch == "resnet56":
        return ResNet(56, num_classes, in_channels)
    if arch in VGG_CFG:
        return VGG(arch, num_classes, in_channels, width)
    if arch == "vgg-small":
        return VGGSmall(num_classes, in_channels)
    if arch == "mobilenet-v2":
        return MobileNetV2(num_classes, in_channels, width)
    if arch == "dncnn":
        return DnCNN(in_channels)
    raise ValueError(f"unknown arch {arch}")


def num_parameters(model):
    return sum(p.numel() for p in model.parameters())
