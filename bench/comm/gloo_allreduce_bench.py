"""PyTorch gloo all_reduce for the comparison in run_allreduce_bench.sh.

usage: /usr/bin/python3 gloo_allreduce_bench.py <ranks> <bytes> <reps>
Prints "gloo ranks=<n> bytes=<b> median_us=<t> busbw_gbs=<g>" from rank 0;
each sample is the slowest rank's time for one all_reduce (float32 sum).
"""
import os
import sys
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def worker(rank, ranks, nbytes, reps, port):
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=ranks)
    data = torch.ones(max(1, nbytes // 4), dtype=torch.float32)
    samples = []
    for i in range(reps + 5):
        dist.barrier()
        start = time.perf_counter()
        dist.all_reduce(data)
        elapsed = torch.tensor([time.perf_counter() - start], dtype=torch.float64)
        dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)
        if i >= 5:
            samples.append(elapsed.item())
        data.fill_(1.0)
    if rank == 0:
        samples.sort()
        median = samples[len(samples) // 2]
        factor = 2.0 * (ranks - 1) / ranks if ranks > 1 else 1.0
        print(f"gloo ranks={ranks} bytes={nbytes} median_us={median * 1e6:.2f} "
              f"busbw_gbs={factor * nbytes / median / 1e9:.3f}", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    ranks, nbytes, reps = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    port = 29500 + os.getpid() % 1000
    mp.spawn(worker, args=(ranks, nbytes, reps, port), nprocs=ranks, join=True)
