#!/usr/bin/python3
"""PyTorch side of the gradient-compression benchmark: DDP communication hooks.

WORLD processes (gloo, one thread each) train the MNIST MLP 784-256-256-10 on
the real MNIST files in data/mnist, as dtrain trains examples/mnist_mlp.toml:
pixels / 255 normalised as (x - 0.1307) / 0.3081; SGD lr 0.1, momentum 0.9,
Nesterov, weight decay 1e-4; a linear warm-up over the first 200 updates to
lr, then cosine annealing to 0 over the remaining updates of the run (dtrain's
LinearWarmup around CosineAnnealingLr, src/optim/lr_schedule.h); a global
batch of 128 shuffled each epoch, the last partial batch kept, each batch's
rows split over the workers as dtrain splits them (Strategy::batch_split).

The gradients are exchanged through one DDP communication hook:
  none      DDP's own allreduce
  fp16      fp16_compress_hook
  bf16      bf16_compress_hook (gloo in PyTorch 1.13 has no bfloat16
            allreduce: the script says so and exits 3)
  powersgd  powerSGD_hook, PowerSGDState(process_group=None,
            matrix_approximation_rank=RANK, start_powerSGD_iter=START) with
            error feedback and warm start (PyTorch's defaults). PyTorch
            refuses START < 2 with error feedback; START is raised to 2 then
            (a note on stderr).

Rank 0 prints one JSON line per epoch:
  {"event": "epoch", "hook", "epoch", "test_accuracy", "test_loss",
   "train_loss", "train_seconds", "eval_seconds", "seconds",
   "total_seconds", "samples_per_s"}
train_seconds: the sum of rank 0's step times (forward, backward with the
hook's gradient exchange, optimizer step), as dtrain's samples_per_s counts
them (batch assembly excluded); eval_seconds: rank 0's evaluation on the
10,000 test images; seconds: the epoch's wall time on rank 0 including the
evaluation (as dtrain's epoch record); total_seconds: the run so far. At the
end one {"event": "end", ...} line with the final accuracy and total seconds.

Usage: torch_ddp_hooks.py [--hook none|fp16|bf16|powersgd] [--world 2]
         [--epochs 10] [--rank 4] [--start 10] [--limit STEPS]
         [--train-limit IMAGES] [--data DIR]
--limit caps the updates per epoch, --train-limit the training images (the
first N, as dtrain's data.train_limit): for smoke tests.
"""
import argparse
import gzip
import json
import math
import os
import socket
import sys
import time

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.distributed.algorithms.ddp_comm_hooks import powerSGD_hook as powersgd

MEAN, STDDEV = 0.1307, 0.3081


def read_idx(path):
    """An IDX file (MNIST's format) as a numpy array of uint8."""
    if not os.path.exists(path) and os.path.exists(path + ".gz"):
        path += ".gz"
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise SystemExit(f"{path}: not an IDX file of unsigned bytes (magic {data[:4].hex()})")
    ndims = data[3]
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndims)]
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndims)
    if body.size != math.prod(dims):
        raise SystemExit(f"{path}: {body.size} bytes of elements, expected {math.prod(dims)} for {dims}")
    return body.reshape(dims)


def load_mnist(folder, split):
    prefix = "train" if split == "train" else "t10k"
    try:
        images = read_idx(os.path.join(folder, f"{prefix}-images-idx3-ubyte"))
        labels = read_idx(os.path.join(folder, f"{prefix}-labels-idx1-ubyte"))
    except FileNotFoundError as e:
        raise SystemExit(f"{e.filename}: missing (scripts/fetch_mnist.sh fetches MNIST)")
    x = torch.from_numpy(images.astype(np.float32)).div_(255.0).unsqueeze(1)
    x = (x - MEAN) / STDDEV
    return x.contiguous(), torch.from_numpy(labels.astype(np.int64))


def mlp():
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 256),
                         nn.ReLU(), nn.Linear(256, 10))


def lr_at(step, base_lr, warmup, total):
    """dtrain's LinearWarmup(warmup, CosineAnnealingLr(base_lr, total - warmup, 0))."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    t_max = total - warmup
    s = step - warmup
    if s >= t_max:
        return 0.0
    return base_lr * (1.0 + math.cos(math.pi * s / t_max)) / 2.0


def rows_of(rank, world, rows):
    """This rank's [first, last) of a batch of `rows` (dtrain's Strategy::batch_split)."""
    return rows * rank // world, rows * (rank + 1) // world


def register_hook(model, args, rank):
    if args.hook == "none":
        return
    if args.hook == "fp16":
        model.register_comm_hook(None, default_hooks.fp16_compress_hook)
    elif args.hook == "bf16":
        probe = torch.ones(1, dtype=torch.bfloat16)
        try:
            dist.all_reduce(probe)
        except RuntimeError as e:
            if rank == 0:
                print(f"torch_ddp_hooks: bf16: gloo cannot allreduce bfloat16 in PyTorch "
                      f"{torch.__version__} ({e})", file=sys.stderr)
            dist.destroy_process_group()
            sys.exit(3)
        model.register_comm_hook(None, default_hooks.bf16_compress_hook)
    elif args.hook == "powersgd":
        start = args.start
        if start < 2:
            if rank == 0:
                print(f"torch_ddp_hooks: start_powerSGD_iter {start} raised to 2 (PyTorch's "
                      "minimum with error feedback)", file=sys.stderr)
            start = 2
        state = powersgd.PowerSGDState(process_group=None, matrix_approximation_rank=args.rank,
                                       start_powerSGD_iter=start)
        model.register_comm_hook(state, powersgd.powerSGD_hook)


def evaluate(model, x, y, batch=1000):
    model.eval()
    correct, loss_sum = 0, 0.0
    with torch.no_grad():
        for i in range(0, x.shape[0], batch):
            out = model(x[i:i + batch])
            loss_sum += nn.functional.cross_entropy(out, y[i:i + batch], reduction="sum").item()
            correct += (out.argmax(1) == y[i:i + batch]).sum().item()
    model.train()
    return correct / x.shape[0], loss_sum / x.shape[0]


def worker(rank, args, port):
    torch.set_num_threads(1)
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=args.world)
    x_train, y_train = load_mnist(args.data, "train")
    if args.train_limit > 0:
        x_train, y_train = x_train[:args.train_limit], y_train[:args.train_limit]
    x_test, y_test = load_mnist(args.data, "test") if rank == 0 else (None, None)
    torch.manual_seed(args.seed)
    model = nn.parallel.DistributedDataParallel(mlp())
    register_hook(model, args, rank)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, nesterov=True,
                          weight_decay=1e-4)
    loss_fn = nn.CrossEntropyLoss()

    n = x_train.shape[0]
    per_epoch = (n + args.batch - 1) // args.batch
    if args.limit > 0:
        per_epoch = min(per_epoch, args.limit)
    total_steps = max(per_epoch * args.epochs, args.warmup + 1)
    step = 0
    total_seconds = 0.0
    for epoch in range(args.epochs):
        dist.barrier()
        epoch_start = time.perf_counter()
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(args.seed * 1000 + epoch))
        train_seconds, loss_sum, samples = 0.0, 0.0, 0
        for b in range(per_epoch):
            idx = perm[b * args.batch:(b + 1) * args.batch]
            first, last = rows_of(rank, args.world, idx.shape[0])
            xb, yb = x_train[idx[first:last]], y_train[idx[first:last]]
            t0 = time.perf_counter()
            for group in opt.param_groups:
                group["lr"] = lr_at(step, args.lr, args.warmup, total_steps)
            opt.zero_grad()
            loss = loss_fn(model(xb), yb)
            loss.backward()
            opt.step()
            train_seconds += time.perf_counter() - t0
            loss_sum += loss.item() * (last - first)
            samples += last - first
            step += 1
        if rank == 0:
            t0 = time.perf_counter()
            accuracy, test_loss = evaluate(model.module, x_test, y_test)
            eval_seconds = time.perf_counter() - t0
            seconds = time.perf_counter() - epoch_start
            total_seconds += seconds
            print(json.dumps({
                "event": "epoch", "hook": args.hook, "epoch": epoch + 1,
                "test_accuracy": accuracy, "test_loss": test_loss,
                "train_loss": loss_sum / max(samples, 1),
                "train_seconds": train_seconds, "eval_seconds": eval_seconds,
                "seconds": seconds, "total_seconds": total_seconds,
                "samples_per_s": samples * args.world / train_seconds if train_seconds > 0 else 0.0,
            }), flush=True)
    if rank == 0:
        print(json.dumps({"event": "end", "hook": args.hook, "world": args.world,
                          "epochs": args.epochs, "steps": step, "test_accuracy": accuracy,
                          "total_seconds": total_seconds}), flush=True)
    dist.barrier()
    dist.destroy_process_group()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hook", choices=["none", "fp16", "bf16", "powersgd"], default="none")
    p.add_argument("--world", type=int, default=2, help="processes")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--rank", type=int, default=4, help="PowerSGD matrix_approximation_rank")
    p.add_argument("--start", type=int, default=10, help="PowerSGD start_powerSGD_iter")
    p.add_argument("--limit", type=int, default=0, help="at most this many updates per epoch")
    p.add_argument("--train-limit", type=int, default=0,
                   help="train on the first N training images only (dtrain's data.train_limit)")
    p.add_argument("--batch", type=int, default=128, help="global batch")
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--warmup", type=int, default=200, help="linear warm-up updates")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--data", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                  "..", "..", "data", "mnist"))
    args = p.parse_args()
    if args.epochs < 1:
        p.error("--epochs must be at least 1")
    if args.batch < args.world:
        p.error(f"--batch {args.batch} is smaller than --world {args.world}")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    try:
        mp.spawn(worker, args=(args, port), nprocs=args.world)
    except mp.ProcessExitedException as e:
        sys.exit(e.exit_code if e.exit_code and e.exit_code > 0 else 1)


if __name__ == "__main__":
    main()
