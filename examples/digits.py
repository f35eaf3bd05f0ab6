"""Train the tutorial's LeNet on real handwritten digits.

    python examples/digits.py                  # scikit-learn's 1797 8x8 digits, eager
    python examples/digits.py --compile        # the same, each training step one C call
    python examples/digits.py --mnist DIR      # MNIST from its IDX files (optionally .gz)

By default the data is the 8x8 digits set that scikit-learn ships, upsampled to 32x32 (the
input size of the tutorial's network), scaled to [0, 1], normalised, and split into 80 % train
and 20 % test with a fixed seed. ``--compile`` compiles the whole training step
(``tracenet.compile_step``: forward, loss, backward and the SGD update in one C call) and the
evaluation forward (``tracenet.compile``). The weights are saved with ``tracenet.save``; with
matplotlib installed, ``--plot PATH`` draws the loss curve.
"""
import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import tracenet as torch  # noqa: E402
import tracenet.nn as nn  # noqa: E402
import tracenet.nn.functional as F  # noqa: E402
import tracenet.optim as optim  # noqa: E402
from tracenet.utils.data import DataLoader, TensorDataset  # noqa: E402


class Net(nn.Module):
    """The tutorial's LeNet (examples/tutorial.py)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), (2, 2))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


# ---------------------------------------------------------------------------------------------
# data

def sklearn_digits(seed, test_fraction=0.2):
    """scikit-learn's digits, (N, 1, 32, 32) float32 in [0, 1], split with a fixed seed."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        sys.exit("digits.py: the default data set needs scikit-learn: "
                 "pip install '.[examples]' (or pass --mnist DIR)")
    digits = load_digits()
    images = torch.tensor(digits.images.astype(np.float32) / 16.0).unsqueeze(1)
    images = F.interpolate(images, size=(32, 32), mode="bilinear", align_corners=False)
    labels = digits.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(labels))
    n_test = int(round(len(labels) * test_fraction))
    test, train = order[:n_test], order[n_test:]
    x = images.numpy()
    return x[train], labels[train], x[test], labels[test]


def mnist(directory):
    """MNIST's IDX files, (N, 1, 32, 32) float32 in [0, 1] (28x28 padded by 2, as LeNet-5)."""
    from mnist_idx import IDXError, load_mnist
    try:
        train_x, train_y, test_x, test_y = load_mnist(directory)
    except (OSError, IDXError) as e:
        sys.exit(f"digits.py: {e}")

    def to32(images):
        x = torch.tensor(images.astype(np.float32) / 255.0).unsqueeze(1)
        h, w = images.shape[1:]
        if (h, w) == (28, 28):
            x = F.pad(x, (2, 2, 2, 2))
        elif (h, w) != (32, 32):
            x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
        return x.numpy()

    return to32(train_x), train_y, to32(test_x), test_y


# ---------------------------------------------------------------------------------------------
# progress bar

class PlainBar:
    """A minimal stand-in for tqdm: ``desc [#####.....] n/total`` on stderr."""

    def __init__(self, iterable, total, desc, width=30):
        self.iterable, self.total, self.desc, self.width = iterable, total, desc, width
        self.n, self.postfix = 0, ""

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.n += 1
            self._draw()
        sys.stderr.write("\n")
        sys.stderr.flush()

    def set_postfix_str(self, s):
        self.postfix = s

    def _draw(self):
        filled = self.width * self.n // max(self.total, 1)
        bar = "#" * filled + "." * (self.width - filled)
        sys.stderr.write(f"\r{self.desc} [{bar}] {self.n}/{self.total} {self.postfix}")
        sys.stderr.flush()


def normalised_data(mnist_dir, seed):
    """(train_x, train_y, test_x, test_y): MNIST from ``mnist_dir``, else scikit-learn's digits
    split by ``seed``; images standardised with the training set's mean and deviation."""
    if mnist_dir:
        train_x, train_y, test_x, test_y = mnist(mnist_dir)
    else:
        train_x, train_y, test_x, test_y = sklearn_digits(seed)
    mean, std = float(train_x.mean()), float(train_x.std())
    return (train_x - mean) / std, train_y, (test_x - mean) / std, test_y


def progress(iterable, total, desc, enabled):
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return PlainBar(iterable, total, desc)
    return tqdm(iterable, total=total, desc=desc, leave=False)


# ---------------------------------------------------------------------------------------------

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--mnist", metavar="DIR", help="train on MNIST's IDX files in DIR")
    p.add_argument("--compile", action="store_true", help="compile the training step to C")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=0.02)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-batches", type=int, default=None,
                   help="stop each epoch after this many batches (quick runs)")
    p.add_argument("--checkpoint", default="digits_lenet.pt",
                   help="where to save the trained weights (default: %(default)s)")
    p.add_argument("--plot", metavar="PATH", help="save the loss curve (needs matplotlib)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)

    torch.manual_seed(args.seed)
    train_x, train_y, test_x, test_y = normalised_data(args.mnist, args.seed)
    print(f"data: {len(train_y)} train, {len(test_y)} test images "
          f"({'MNIST' if args.mnist else 'scikit-learn digits'}, 32x32)")

    train = TensorDataset(torch.tensor(train_x), torch.tensor(train_y))
    test = TensorDataset(torch.tensor(test_x), torch.tensor(test_y))
    # drop_last keeps every training batch the same shape (one compiled specialisation)
    train_loader = DataLoader(train, batch_size=args.batch_size, shuffle=True, drop_last=True,
                              generator=args.seed)
    test_loader = DataLoader(test, batch_size=256)

    net = Net()
    criterion = nn.CrossEntropyLoss()
    optimizer = optim.SGD(net.parameters(), lr=args.lr, momentum=args.momentum)
    # the learning rate decays to 0 over the run (read on every call: no recompilation)
    scheduler = optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.epochs)
    if args.compile:
        step = torch.compile_step(lambda x, y: criterion(net(x), y), optimizer)
        model = torch.compile(net)
    else:
        model = net

        def step(x, y):
            optimizer.zero_grad()
            loss = criterion(net(x), y)
            loss.backward()
            optimizer.step()
            return loss

    n_batches = len(train_loader)
    if args.max_batches is not None:
        n_batches = min(n_batches, args.max_batches)
    losses, epoch_losses = [], []
    for epoch in range(1, args.epochs + 1):
        start = time.perf_counter()
        net.train()
        total = 0.0
        batches = (b for i, b in enumerate(train_loader) if i < n_batches)
        bar = progress(batches, n_batches, f"epoch {epoch}", not args.no_progress)
        for i, (x, y) in enumerate(bar if bar is not None else batches):
            loss = step(x, y).item()
            losses.append(loss)
            total += loss
            if bar is not None and i % 10 == 0:
                bar.set_postfix_str(f"loss {loss:.4f}")
        scheduler.step()
        epoch_losses.append(total / n_batches)
        print(f"epoch {epoch:2d}/{args.epochs}: loss {epoch_losses[-1]:.4f}  "
              f"({time.perf_counter() - start:.2f} s)", flush=True)

    net.eval()
    correct = 0
    with torch.no_grad():
        for x, y in test_loader:
            correct += int((model(x).numpy().argmax(1) == y.numpy()).sum())
    print(f"test accuracy: {100.0 * correct / len(test):.1f}%")

    torch.save(net.state_dict(), args.checkpoint)
    print(f"checkpoint: {args.checkpoint}")

    if args.plot:
        try:
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            print("--plot: matplotlib is not installed, no plot "
                  "(pip install '.[examples]')", file=sys.stderr)
        else:
            fig, ax = plt.subplots(figsize=(6, 4))
            ax.plot(np.arange(1, len(losses) + 1) / n_batches, losses, lw=0.6, label="batch")
            ax.plot(np.arange(1, len(epoch_losses) + 1), epoch_losses, "o-", label="epoch mean")
            ax.set_xlabel("epoch")
            ax.set_ylabel("cross-entropy loss")
            ax.set_yscale("log")
            ax.legend()
            fig.tight_layout()
            fig.savefig(args.plot, dpi=100)
            print(f"loss curve: {args.plot}")


if __name__ == "__main__":
    main()
