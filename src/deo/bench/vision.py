r"""Image classification on scikit-learn's digits: an MLP and a small CNN (the paper's "other
architectures" question, at a size that trains in seconds on a CPU).

Data: ``sklearn.datasets.load_digits``, 1797 grey 8 x 8 images of the digits 0-9 (the UCI
optical recognition test set), shipped inside scikit-learn, so no download. Pixels 0..16 are
scaled to [0, 1]. The 80/20 train/test split (1437 / 360 images) is one fixed permutation
(``SPLIT_SEED``), the same for every run and every seed, so every optimizer is judged on the
same test images.

Training: minibatches of ``batch_size`` images drawn without replacement from a generator
seeded by (seed, step), so ``loss_fn(step)`` sees the same batch however often it is called
(DEO calls it again at displaced parameters) and the sequence of batches is the same for
every optimizer. The loss is the mean cross-entropy

    L = -1/B sum_b log softmax(f(x_b))[y_b],    ln 10 = 2.303 for a uniform guess.

The default lr 1e-3 is Adam's scale: at it the runner's "sgd" (momentum 0.9) reaches only
0.68 test accuracy on the MLP in 300 steps, against Adam's 0.94. ``evaluate()`` reports the
test cross-entropy ("loss"), the test accuracy and the full-train cross-entropy.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from .checks import check_int, check_positive
from .task import Task

SPLIT_SEED = 0
TRAIN_FRACTION = 0.8
NUM_CLASSES = 10
STEP_STRIDE = 1_000_003  # a prime above any step count: batch seeds of (seed, step) differ
ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU}


@functools.lru_cache(maxsize=1)
def load_digits_split() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(train_images, train_labels, test_images, test_labels); images (N, 1, 8, 8) in [0, 1].

    Cached: treat the tensors as read-only.
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:
        raise ImportError('the digits tasks need scikit-learn: pip install "deo[bench]" '
                          "(or pip install scikit-learn)") from err
    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.tensor(digits.target, dtype=torch.long)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(SPLIT_SEED))
    n_train = int(TRAIN_FRACTION * len(labels))
    train, test = order[:n_train], order[n_train:]
    return images[train], labels[train], images[test], labels[test]


class _DigitsTask(Task):
    """Data, batching and evaluation shared by the digits classifiers; subclasses build the
    network (input (B, 1, 8, 8), output (B, 10) logits)."""

    def __init__(self, steps: int, batch_size: int, lr: float, eval_every: int,
                 train_size: int | None = None):
        check_int("steps", steps, 1)
        check_int("batch_size", batch_size, 1)
        check_int("eval_every", eval_every, 1)
        check_positive("lr", lr, finite=False)
        if train_size is not None:
            check_int("train_size", train_size, 1)
        self.steps, self.batch_size, self.lr = steps, batch_size, float(lr)
        self.eval_every, self.train_size = eval_every, train_size
        self.deo_displacement = None

    def _build_model(self) -> nn.Module:
        raise NotImplementedError

    def setup(self, seed: int, device: torch.device) -> None:
        train_x, train_y, test_x, test_y = load_digits_split()
        if self.train_size is not None:  # the first images of the fixed split
            if self.train_size > len(train_y):
                raise ValueError(f"train_size: expected at most {len(train_y)} (the training "
                                 f"images), got {self.train_size}")
            train_x, train_y = train_x[:self.train_size], train_y[:self.train_size]
        if self.batch_size > len(train_y):
            raise ValueError(f"batch_size: expected at most {len(train_y)} (the training "
                             f"images), got {self.batch_size}")
        # the run's seed, held by a Generator rather than a plain int so config() omits it
        self._run_generator = torch.Generator().manual_seed(seed)
        self._train = (train_x.to(device), train_y.to(device))
        self._test = (test_x.to(device), test_y.to(device))
        with torch.random.fork_rng(devices=[]):  # seeded init, global RNG left alone
            torch.manual_seed(seed)
            self._model = self._build_model().to(device)

    def param_groups(self) -> list[dict[str, Any]]:
        return [{"params": list(self._model.parameters())}]

    def batch_indices(self, step: int) -> torch.Tensor:
        """Indices into the training set of the minibatch of ``step`` (fixed by seed, step)."""
        # The CPU generator (mt19937) keeps only the low 32 bits of a seed: mix (seed, step)
        # into them; distinct for every step below STEP_STRIDE.
        seed = (self._run_generator.initial_seed() * STEP_STRIDE + step) % 2**32
        generator = torch.Generator().manual_seed(seed)
        return torch.randperm(len(self._train[1]), generator=generator)[:self.batch_size]

    def loss_fn(self, step: int) -> Callable[[], torch.Tensor]:
        index = self.batch_indices(step).to(self._train[1].device)
        images, labels = self._train[0][index], self._train[1][index]
        self._model.train()
        return lambda: F.cross_entropy(self._model(images), labels)

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        self._model.eval()
        test_logits = self._model(self._test[0])
        train_logits = self._model(self._train[0])
        self._model.train()
        return {"loss": float(F.cross_entropy(test_logits, self._test[1])),
                "accuracy": float((test_logits.argmax(1) == self._test[1]).float().mean()),
                "train_loss": float(F.cross_entropy(train_logits, self._train[1]))}


class DigitsMLP(_DigitsTask):
    r"""64 -> ``hidden`` -> 10 multilayer perceptron: logits = W_2 act(W_1 x + b_1) + b_2.

    ``activation``: "tanh" (default; smooth, so curvature probes see no kinks) or "relu".
    PyTorch's default Linear init from ``seed``. With the defaults Adam (lr 1e-3, batch 64)
    reaches 0.92-0.93 test accuracy in 200 steps and 0.94 in 300 (about 13 epochs); with
    "relu" 0.925 in 300.
    """

    name = "digits-mlp"

    def __init__(self, *, hidden: int = 64, activation: str = "tanh", steps: int = 300,
                 batch_size: int = 64, lr: float = 1e-3, eval_every: int = 25):
        super().__init__(steps, batch_size, lr, eval_every)
        check_int("hidden", hidden, 1)
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation: expected one of {list(ACTIVATIONS)}, "
                             f"got {activation!r}")
        self.hidden, self.activation = hidden, activation

    def _build_model(self) -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.Linear(64, self.hidden),
                             ACTIVATIONS[self.activation](), nn.Linear(self.hidden, NUM_CLASSES))


class Slingshot(DigitsMLP):
    r"""The Slingshot setting (Thilak et al. 2022, arXiv 2206.04817, their Figure 1): a ReLU
    network fitted full-batch to a few training images with Adam and no regularisation, long
    after the training loss reaches ~0. Adam then spikes in cycles: the last layer's norm
    grows fast, the training loss jumps by orders of magnitude, then settles again. They use
    200 CIFAR-10 images; here 200 digits, 64 -> 256 -> 256 -> 10, lr 1e-3, betas (0.9, 0.999),
    no weight decay; what AdamW does here: benchmarks/results/stability_search_cpu.md.
    """

    name = "slingshot"

    def __init__(self, *, steps: int = 40000, lr: float = 1e-3, train_size: int = 200,
                 hidden: int = 256, layers: int = 2, eval_every: int = 1000,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float | None = None,
                 name: str = "slingshot"):
        super().__init__(hidden=hidden, activation="relu", steps=steps, batch_size=train_size,
                         lr=lr, eval_every=eval_every)
        self.name = name
        check_int("layers", layers, 1)
        check_int("train_size", train_size, 1)
        self.train_size, self.layers = train_size, layers
        self.base_overrides = {"betas": list(betas), **({"eps": eps} if eps else {})}

    def _build_model(self) -> nn.Module:
        sizes = [64] + [self.hidden] * self.layers
        blocks = [m for a, b in zip(sizes, sizes[1:]) for m in (nn.Linear(a, b), nn.ReLU())]
        return nn.Sequential(nn.Flatten(), *blocks, nn.Linear(sizes[-1], NUM_CLASSES))

    def param_groups(self) -> list[dict[str, Any]]:  # no weight decay: it damps slingshots
        return [{"params": list(self._model.parameters()), "weight_decay": 0.0}]


class DigitsCNN(_DigitsTask):
    r"""Two 3 x 3 convolutions (``channels``, then 2 x ``channels``; padding 1, ReLU), a 2 x 2
    max-pool and a linear head:

        (1, 8, 8) -conv-> (c, 8, 8) -conv-> (2c, 8, 8) -pool-> (2c, 4, 4) -linear-> 10

    With c = 8: 80 + 1168 + 2570 = 3818 parameters. Adam with the defaults reaches 0.89-0.91
    test accuracy in 100 steps and 0.95-0.97 in 300.
    """

    name = "digits-cnn"

    def __init__(self, *, channels: int = 8, steps: int = 300, batch_size: int = 64,
                 lr: float = 1e-3, eval_every: int = 25):
        super().__init__(steps, batch_size, lr, eval_every)
        check_int("channels", channels, 1)
        self.channels = channels

    def _build_model(self) -> nn.Module:
        c = self.channels
        return nn.Sequential(nn.Conv2d(1, c, 3, padding=1), nn.ReLU(),
                             nn.Conv2d(c, 2 * c, 3, padding=1), nn.ReLU(),
                             nn.MaxPool2d(2), nn.Flatten(), nn.Linear(2 * c * 16, NUM_CLASSES))
