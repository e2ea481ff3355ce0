"""PyTorch twin of `harness train` for image classification on an ImageFolder-style JPEG tree, to
calibrate what a recipe reaches on a given copy of a dataset independently of protbench's engine.

Why: the issue-3 target (ResNet-20 >= 89 % on CIFAR-10) is stated for the official data; the copy
in ../shared/data is a quality-75 JPEG re-encoding. Running the *same* recipe here (same model
twin from models.py, same initialisation, augmentation, normalisation, optimiser, per-step
schedule, batch order semantics) separates "the engine trains worse" from "this copy / recipe
allows no more". Not used by CI (CI has no torch).

What is mirrored from the Rust side (harness/core/src/train, datasets/src/augment.rs):
- random crop of the zero-padded (4 px) u8 image, offsets uniform in 0..=8, then a flip with p=0.5;
  padding happens before normalisation, so padded pixels are (0 - mean) / std, as torchvision's;
- per-channel normalisation with the CIFAR-10 statistics (datasets/src/catalog.rs);
- a fresh random order every epoch, the last partial batch kept (drop_last = false);
- torch.optim.SGD (momentum 0.9, Nesterov, weight decay on every parameter), which is what
  train/sgd.rs reimplements, with the learning rate set before every step by the formulas of
  train/schedule.rs (cosine with linear warm-up, one-cycle, multi-step);
- BatchNorm eps 1e-5, momentum 0.1; PyTorch default initialisation (the Rust zoo uses the same);
- test accuracy with BatchNorm running statistics after every epoch.
Not mirrored: the random streams (different RNGs), so single runs differ by run-to-run noise
(about +-0.2 points on CIFAR-10 for ResNet-20).

TF32 is turned off on CUDA so the arithmetic is plain f32 like the CPU engine's.

Usage:
  python ci/torch/train_reference.py --data /tmp/pbdata/cifar10 --epochs 100 \
      --schedule cosine --lr 0.1 --warmup-epochs 1 --out run.jsonl
The output has one JSON line per epoch (flushed as it goes), then a summary line.
"""
import argparse
import json
import math
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import models  # noqa: E402

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


def decode(path):
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8).transpose(2, 0, 1).copy()


def load_split(root, split, workers):
    """Returns (images u8 N x 3 x H x W, labels i64 N), classes in sorted folder order (the
    official CIFAR-10 order is alphabetical, and the Rust loader sorts the same way)."""
    base = os.path.join(root, split)
    classes = sorted(d for d in os.listdir(base) if os.path.isdir(os.path.join(base, d)))
    paths, labels = [], []
    for i, c in enumerate(classes):
        for f in sorted(os.listdir(os.path.join(base, c))):
            paths.append(os.path.join(base, c, f))
            labels.append(i)
    with ProcessPoolExecutor(workers) as pool:
        images = list(pool.map(decode, paths, chunksize=512))
    return np.stack(images), np.asarray(labels, dtype=np.int64)


def load(root, cache, workers):
    if cache and os.path.exists(cache):
        z = np.load(cache)
        return z["xtr"], z["ytr"], z["xte"], z["yte"]
    xtr, ytr = load_split(root, "train", workers)
    xte, yte = load_split(root, "test", workers)
    if cache:
        tmp = cache + ".tmp.npz"
        np.savez(tmp, xtr=xtr, ytr=ytr, xte=xte, yte=yte)
        os.replace(tmp, cache)
    return xtr, ytr, xte, yte


def lr_at(args, step, total, per_epoch):
    """train/schedule.rs, formula for formula."""
    base, t = args.lr, float(step)
    if args.schedule == "constant":
        return base
    if args.schedule == "cosine":
        warm = min(args.warmup_epochs * per_epoch, total)
        if t < warm:
            return base * (t + 1.0) / warm
        span = max(total - warm, 1.0)
        return 0.5 * base * (1.0 + math.cos(math.pi * (t - warm) / span))
    if args.schedule == "one-cycle":
        initial = base / 25.0
        last = initial / 1e4
        up = max(0.3 * total - 1.0, 1.0)
        down = max(total - 1.0 - up, 1.0)

        def cos(a, b, frac):
            return b + (a - b) / 2.0 * (1.0 + math.cos(math.pi * min(frac, 1.0)))

        return cos(initial, base, t / up) if t <= up else cos(base, last, (t - up) / down)
    if args.schedule.startswith("multi-step:"):
        milestones = [int(m) for m in args.schedule.split(":", 1)[1].split(",")]
        epoch = step // max(per_epoch, 1)
        return base * 0.1 ** sum(epoch >= m for m in milestones)
    raise SystemExit(f"unknown schedule {args.schedule}")


def augment(x, pad, gen):
    """Random crop of the zero-padded batch, then a random flip; x is u8 B x C x H x W."""
    b, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    oy = torch.randint(0, 2 * pad + 1, (b,), device=x.device, generator=gen)
    ox = torch.randint(0, 2 * pad + 1, (b,), device=x.device, generator=gen)
    rows = (oy[:, None] + torch.arange(h, device=x.device))[:, :, None]  # B x H x 1
    cols = (ox[:, None] + torch.arange(w, device=x.device))[:, None, :]  # B x 1 x W
    bidx = torch.arange(b, device=x.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[bidx, rows, cols]  # B x H x W x C
    out = out.permute(0, 3, 1, 2)
    flip = torch.rand(b, device=x.device, generator=gen) < 0.5
    return torch.where(flip[:, None, None, None], out.flip(3), out)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="folder with train/<class>/*.jpg and test/<class>/*.jpg")
    p.add_argument("--cache", help="decoded-image .npz cache (written on first use)")
    p.add_argument("--model", default="resnet20")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--no-nesterov", action="store_true")
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--schedule", default="cosine")
    p.add_argument("--warmup-epochs", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--workers", type=int, default=os.cpu_count())
    p.add_argument("--out", help="JSON-lines log (one line per epoch, then a summary)")
    args = p.parse_args()

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = True
    torch.manual_seed(args.seed)
    dev = torch.device(args.device)
    gen = torch.Generator(device=dev)
    gen.manual_seed(args.seed)

    t0 = time.time()
    xtr, ytr, xte, yte = load(args.data, args.cache, args.workers)
    num_classes = int(ytr.max()) + 1
    xtr, ytr = torch.from_numpy(xtr).to(dev), torch.from_numpy(ytr).to(dev)
    xte, yte = torch.from_numpy(xte).to(dev), torch.from_numpy(yte).to(dev)
    mean = torch.tensor(CIFAR10_MEAN, device=dev).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR10_STD, device=dev).view(1, 3, 1, 1)

    def norm(x):
        return (x.float() / 255.0 - mean) / std

    model = models.build(args.model, num_classes).to(dev)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum,
                          nesterov=not args.no_nesterov, weight_decay=args.weight_decay,
                          fused=dev.type == "cuda")  # same update rule, fewer kernel launches
    n = xtr.shape[0]
    per_epoch = math.ceil(n / args.batch_size)
    total = per_epoch * args.epochs
    out = open(args.out, "w") if args.out else None

    def log(obj):
        line = json.dumps(obj)
        print(line, flush=True)
        if out:
            out.write(line + "\n")
            out.flush()

    log({"event": "start", "args": vars(args), "train": n, "test": int(xte.shape[0]),
         "load_s": round(time.time() - t0, 1), "torch": torch.__version__})
    acc, best, step = None, 0.0, 0
    for epoch in range(args.epochs):
        t1 = time.time()
        model.train()
        order = torch.randperm(n, device=dev, generator=gen)
        loss_sum, correct = 0.0, 0
        for i in range(per_epoch):
            idx = order[i * args.batch_size:(i + 1) * args.batch_size]
            xb = norm(augment(xtr[idx], 4, gen))
            yb = ytr[idx]
            for g in opt.param_groups:
                g["lr"] = lr_at(args, step, total, per_epoch)
            logits = model(xb)
            loss = F.cross_entropy(logits, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            loss_sum += loss.detach() * idx.numel()
            correct += (logits.argmax(1) == yb).sum()
        model.eval()
        with torch.no_grad():
            hits = sum(int((model(norm(xte[j:j + 1000])).argmax(1) == yte[j:j + 1000]).sum())
                       for j in range(0, xte.shape[0], 1000))
        acc = hits / xte.shape[0]
        best = max(best, acc)
        log({"event": "epoch", "epoch": epoch + 1, "train_loss": float(loss_sum) / n,
             "train_acc": int(correct) / n, "test_acc": acc, "secs": round(time.time() - t1, 2)})
    log({"event": "done", "test_acc": acc, "best_test_acc": best, "wall_s": round(time.time() - t0, 1)})


if __name__ == "__main__":
    main()
