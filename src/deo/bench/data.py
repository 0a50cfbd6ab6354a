"""Character-level text corpora for the benchmark, nanoGPT style.

The paper trains on tiny Shakespeare (65 characters, split 90/10 train/val). We never ship that
text: pass its path (``--data PATH``). Without a path the corpus is the English help text that
every Python install carries in ``pydoc_data.topics``, so the benchmark runs offline.
"""

from __future__ import annotations

from pathlib import Path

import torch

DEFAULT_CORPUS_NAME = "pydoc-topics"
SPLITS = ("train", "val")
TRAIN_FRACTION = 0.9  # nanoGPT's shakespeare_char/prepare.py: first 90% train, last 10% val


def default_corpus_text() -> str:
    """The help topics of ``pydoc_data.topics`` joined in sorted key order.

    About 465k characters of English prose and code (Python 3.11). Sorted keys make the text
    independent of dict order; it still changes between Python versions.
    """
    from pydoc_data.topics import topics  # stdlib; imported lazily, it is a 500 kB module

    return "".join(topics[key] for key in sorted(topics))


class CharCorpus:
    """A text, its character vocabulary and its train/val token tensors.

    Args:
        text: the whole corpus.
        name: a short label for logs and result files.
    """

    def __init__(self, text: str, name: str):
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        if len(text) < 2:
            # Need at least one (input, target) pair; a useful corpus is far longer.
            raise ValueError(f"corpus {name!r} has {len(text)} characters; need at least 2")
        self.name = name
        self.text = text
        self.chars: list[str] = sorted(set(text))
        self.vocab_size = len(self.chars)
        self._stoi = {ch: i for i, ch in enumerate(self.chars)}
        data = self.encode(text)
        n_train = int(len(data) * TRAIN_FRACTION)
        self.train = data[:n_train]
        self.val = data[n_train:]

    def __repr__(self) -> str:
        return (
            f"CharCorpus(name={self.name!r}, chars={len(self.text)}, "
            f"vocab_size={self.vocab_size}, train={len(self.train)}, val={len(self.val)})"
        )

    def encode(self, text: str) -> torch.Tensor:
        """Characters -> 1-D torch.long tensor of vocabulary indices."""
        try:
            ids = [self._stoi[ch] for ch in text]
        except KeyError as err:
            raise ValueError(
                f"character {err.args[0]!r} is not in the vocabulary of corpus {self.name!r}"
            ) from None
        return torch.tensor(ids, dtype=torch.long)

    def decode(self, ids) -> str:
        """Vocabulary indices (tensor or sequence of ints) -> text."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        return "".join(self.chars[i] for i in ids)

    def split(self, split: str) -> torch.Tensor:
        """The token tensor of ``split`` ('train' or 'val')."""
        if split == "train":
            return self.train
        if split == "val":
            return self.val
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")

    def get_batch(
        self, split: str, batch_size: int, block_size: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``batch_size`` random windows of ``split``: x = data[i:i+block], y = data[i+1:i+1+block].

        Offsets come from ``generator`` only, so a run is reproducible from its seed and does
        not disturb (or depend on) the global RNG that model init and dropout use.
        Returns two (batch_size, block_size) torch.long tensors on the CPU.
        """
        data = self.split(split)
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if not isinstance(block_size, int) or block_size < 1:
            raise ValueError(f"block_size must be a positive int, got {block_size!r}")
        if len(data) <= block_size:
            raise ValueError(
                f"block_size={block_size} needs a {split} split longer than {block_size} "
                f"tokens, but corpus {self.name!r} has {len(data)}; use a smaller block_size "
                "or a longer text"
            )
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        # nanoGPT: i in [0, len - block_size), so y's last index i + block_size is in range.
        starts = torch.randint(len(data) - block_size, (batch_size,), generator=generator)
        offsets = starts[:, None] + torch.arange(block_size)
        return data[offsets], data[offsets + 1]


def load_corpus(path: str | Path | None = None) -> CharCorpus:
    """Read a UTF-8 text file into a :class:`CharCorpus`; ``None`` gives the offline default.

    The corpus is named after the file stem ("input" for nanoGPT's shakespeare_char/input.txt)
    or ``"pydoc-topics"`` for the default.
    """
    if path is None:
        return CharCorpus(default_corpus_text(), DEFAULT_CORPUS_NAME)
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"corpus file {str(path)!r} does not exist (or is not a file); pass an existing "
            "UTF-8 text file with --data PATH, or omit --data to use the built-in "
            f"{DEFAULT_CORPUS_NAME} corpus"
        )
    text = path.read_text(encoding="utf-8")
    if len(text) < 2:
        raise ValueError(f"corpus file {str(path)!r} has {len(text)} characters; need at least 2")
    return CharCorpus(text, path.stem)
