"""Train examples/digits.py's LeNet data-parallel over MPI.

    mpiexec -n 2 python examples/ddp_digits.py             # 2 processes on this machine
    mpiexec -n 2 python examples/ddp_digits.py --compile   # each step: compiled C + allreduce
    python examples/ddp_digits.py                          # 1 process: the same numbers

Every rank holds a replica of the network (``DistributedDataParallel`` broadcasts rank 0's
weights) and trains on its shard of each batch (``DistributedSampler``); the gradients are
averaged across ranks during ``backward()``. ``--batch-size`` is the global batch: each of
``W`` ranks takes ``batch-size / W`` samples of it, and the shards of step ``i`` together are
exactly the batch one process would take at step ``i``, so the run follows the one-process
run and prints the same test accuracy. It trains in float64 by default: half batches round
differently from whole ones, and in float32 that drift, over 15 epochs, moved a test image
across a decision boundary (``--float32`` shows it). Needs ``pip install '.[mpi]'``.
"""
import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import tracenet as torch  # noqa: E402
import tracenet.distributed as dist  # noqa: E402
import tracenet.nn as nn  # noqa: E402
import tracenet.optim as optim  # noqa: E402
from tracenet.nn.parallel import DistributedDataParallel as DDP  # noqa: E402
from tracenet.utils.data import DataLoader, DistributedSampler, TensorDataset  # noqa: E402
from digits import Net, normalised_data  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--mnist", metavar="DIR", help="train on MNIST's IDX files in DIR")
    p.add_argument("--compile", action="store_true",
                   help="compile each rank's forward and backward (tracenet.compile_step)")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--batch-size", type=int, default=32, help="the global batch size")
    p.add_argument("--lr", type=float, default=0.02)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--float32", action="store_true",
                   help="train in float32 (the ranks' rounding then drifts from one process's)")
    p.add_argument("--max-batches", type=int, default=None,
                   help="stop each epoch after this many batches (quick runs)")
    args = p.parse_args(argv)

    dist.init_process_group("mpi")
    rank, world = dist.get_rank(), dist.get_world_size()
    if args.batch_size % world:
        sys.exit(f"ddp_digits.py: --batch-size {args.batch_size} must be a multiple of the "
                 f"{world} ranks")
    say = print if rank == 0 else (lambda *a, **k: None)

    torch.manual_seed(args.seed)
    train_x, train_y, test_x, test_y = normalised_data(args.mnist, args.seed)
    say(f"data: {len(train_y)} train, {len(test_y)} test images; {world} rank(s), "
        f"{args.batch_size // world} images per rank per step")

    dtype = torch.float32 if args.float32 else torch.float64
    train = TensorDataset(torch.tensor(train_x, dtype=dtype), torch.tensor(train_y))
    sampler = DistributedSampler(train, seed=args.seed)
    train_loader = DataLoader(train, batch_size=args.batch_size // world, sampler=sampler,
                              drop_last=True)

    torch.manual_seed(args.seed + rank)  # DDP makes every replica rank 0's
    net = Net().to(dtype)
    model = DDP(net)
    criterion = nn.CrossEntropyLoss()
    optimizer = optim.SGD(net.parameters(), lr=args.lr, momentum=args.momentum)
    scheduler = optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.epochs)
    if args.compile:
        step = torch.compile_step(lambda x, y: criterion(model(x), y), optimizer)
    else:
        def step(x, y):
            optimizer.zero_grad()
            loss = criterion(model(x), y)
            loss.backward()  # averages the gradients across ranks
            optimizer.step()
            return loss

    n_batches = len(train_loader)
    if args.max_batches is not None:
        n_batches = min(n_batches, args.max_batches)
    for epoch in range(1, args.epochs + 1):
        start = time.perf_counter()
        sampler.set_epoch(epoch)
        net.train()
        total = torch.zeros(1, dtype=torch.float64)
        for i, (x, y) in enumerate(train_loader):
            if i == n_batches:
                break
            total += step(x, y).item()
        dist.all_reduce(total, dist.ReduceOp.AVG)  # the mean of the global batches' losses
        scheduler.step()
        say(f"epoch {epoch:2d}/{args.epochs}: loss {total.item() / n_batches:.4f}  "
            f"({time.perf_counter() - start:.2f} s)", flush=True)

    # each rank scores its share of the test set; the counts are summed
    net.eval()
    with torch.no_grad():
        x, y = torch.tensor(test_x[rank::world], dtype=dtype), test_y[rank::world]
        correct = torch.tensor([int((net(x).numpy().argmax(1) == y).sum())])
    dist.all_reduce(correct)
    say(f"test accuracy: {100.0 * correct.item() / len(test_y):.1f}%")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
