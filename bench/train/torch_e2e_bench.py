#!/usr/bin/python3
"""PyTorch side of the end-to-end benchmark (bench/train/run_e2e_bench.sh).

A plain PyTorch training loop over one epoch of the real MNIST training set,
the peer of `dtrain train examples/mnist_{mlp,lenet5}.toml` for one epoch:
the same data (IDX files, normalised as dtrain does: (x/255 - 0.1307) /
0.3081, loaded once before the clock starts), the same model, batch 128 in a
fresh torch.randperm order, the last batch partial, SGD with the job file's
momentum, Nesterov and weight decay, and its warm-up + cosine learning rate
set every step. The clock covers the whole epoch loop (batch gathering,
forward, loss, backward, optimizer step); there is no evaluation.
Prints one JSON line: {"model": ..., "samples_per_s": ..., "seconds": ...}.
Usage: torch_e2e_bench.py MODEL DATA_DIR [THREADS]
"""
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_train_bench import lenet5, mlp  # noqa: E402

# The optimizer and schedule of examples/mnist_mlp.toml and mnist_lenet5.toml.
JOBS = {
    "mlp": dict(lr=0.1, weight_decay=1e-4),
    "lenet5": dict(lr=0.05, weight_decay=5e-4),
}
WARMUP_STEPS = 200
BATCH = 128


def read_idx(path, header):
    with open(path, "rb") as f:
        return np.frombuffer(f.read(), dtype=np.uint8, offset=header)


def load_mnist(data_dir):
    images = read_idx(os.path.join(data_dir, "train-images-idx3-ubyte"), 16)
    labels = read_idx(os.path.join(data_dir, "train-labels-idx1-ubyte"), 8)
    x = torch.from_numpy(images.astype(np.float32).reshape(-1, 1, 28, 28))
    x = (x / 255.0 - 0.1307) / 0.3081
    return x.contiguous(), torch.from_numpy(labels.astype(np.int64))


def lr_at(step, base, total):
    if step < WARMUP_STEPS:
        return base * (step + 1) / WARMUP_STEPS
    progress = (step - WARMUP_STEPS) / (total - WARMUP_STEPS)
    return base * (1.0 + math.cos(math.pi * progress)) / 2.0


def main():
    model_name, data_dir = sys.argv[1], sys.argv[2]
    torch.set_num_threads(int(sys.argv[3]) if len(sys.argv) > 3 else 1)
    torch.manual_seed(1)
    x, y = load_mnist(data_dir)
    model = {"mlp": mlp, "lenet5": lenet5}[model_name]()
    job = JOBS[model_name]
    opt = torch.optim.SGD(model.parameters(), lr=job["lr"], momentum=0.9, nesterov=True,
                          weight_decay=job["weight_decay"])
    loss_fn = nn.CrossEntropyLoss()
    n = x.shape[0]
    steps = (n + BATCH - 1) // BATCH
    t0 = time.perf_counter()
    order = torch.randperm(n)
    for step in range(steps):
        idx = order[step * BATCH:(step + 1) * BATCH]
        for group in opt.param_groups:
            group["lr"] = lr_at(step, job["lr"], steps)
        opt.zero_grad()
        loss = loss_fn(model(x[idx]), y[idx])
        loss.backward()
        opt.step()
    seconds = time.perf_counter() - t0
    print(json.dumps({"model": model_name, "samples_per_s": n / seconds, "seconds": seconds}),
          flush=True)


if __name__ == "__main__":
    main()
