#!/usr/bin/python3
"""PyTorch DDP side of the data-parallel benchmark.

WORLD processes (gloo backend, one thread each) train the MNIST MLP or
LeNet-5 with SGD (momentum 0.9) on 8 global batches of real MNIST images
(torch_train_bench.mnist_batches), a global batch of GLOBAL_BATCH split
evenly (the same work on the same rows as bench/train/train_step_bench with
WORKERS processes). Rank 0 prints one JSON
line per repetition: {"model": ..., "samples_per_s": ...} (global samples).
Usage: torch_ddp_bench.py MODEL STEPS REPS WORLD [GLOBAL_BATCH]
"""
import json
import os
import socket
import sys
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "train"))
from torch_train_bench import lenet5, mlp, mnist_batches  # noqa: E402


def worker(rank, world, model_name, steps, reps, global_batch, port):
    torch.set_num_threads(1)
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(1)
    model = nn.parallel.DistributedDataParallel({"mlp": mlp, "lenet5": lenet5}[model_name]())
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    local = global_batch // world
    global_xs, global_ys = mnist_batches(global_batch)
    xs = [x[rank * local:(rank + 1) * local] for x in global_xs]
    ys = [y[rank * local:(rank + 1) * local] for y in global_ys]

    def step(i):
        opt.zero_grad()
        loss_fn(model(xs[i % 8]), ys[i % 8]).backward()
        opt.step()

    for i in range(20):
        step(i)
    for _ in range(reps):
        dist.barrier()
        t0 = time.perf_counter()
        for i in range(steps):
            step(i)
        dt = time.perf_counter() - t0
        if rank == 0:
            print(json.dumps({"model": model_name, "samples_per_s": steps * local * world / dt}), flush=True)
    dist.destroy_process_group()


def main():
    model_name, steps, reps, world = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    global_batch = int(sys.argv[5]) if len(sys.argv) > 5 else 128
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(worker, args=(world, model_name, steps, reps, global_batch, port), nprocs=world)


if __name__ == "__main__":
    main()
