"""Bounded memory: images and activations read a batch at a time, never a whole split.

A split of 50,000 images at 224 px is 7.5 GB of pixels, and the activations training caches
at the fine-tuning cut are as large again, so nothing here holds a split: `Images` reads model
inputs from the pixel cache by index, `RowFile` keeps rows (activations, features) in a file and
reads them back with `pread` (no memory map: its pages would count as the process' memory),
and `batches` feeds either to Keras one batch at a time. What stays in memory is one chunk of
images or rows plus the labels and the per-image outputs (class probabilities).
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline import pixels
from pipeline.console import progress

CHUNK = 128  # images or rows read and pushed through a network at once


@dataclass
class Images:
    """Labelled images by content: read(idx) -> uint8 (k, size, size, 3) from the pixel cache.
    A source with no sha256 (an augmented image) is decoded from its file."""
    sources: list[Path]
    shas: list[str]
    y: np.ndarray
    size: int
    cache: Path

    def __len__(self) -> int:
        return len(self.y)

    def read(self, idx) -> np.ndarray:
        return pixels.load_batch(self.cache, [self.shas[i] for i in idx], [self.sources[i] for i in idx], self.size)


@dataclass
class InMemory:
    """Rows already in memory (tests, tiny sets) with the same read(idx) as the others."""
    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return len(self.y)

    def read(self, idx) -> np.ndarray:
        return self.x[np.asarray(idx)]


@dataclass
class RowFile:
    """Rows of one shape (float32) in a file: appended in order, read back by index."""
    path: Path
    y: np.ndarray
    shape: tuple = ()
    _rows: int = field(default=0, init=False)

    def __len__(self) -> int:
        return self._rows

    def append(self, rows: np.ndarray) -> None:
        rows = np.ascontiguousarray(rows, dtype=np.float32)
        self.shape = rows.shape[1:]
        with open(self.path, "ab") as handle:
            handle.write(rows.tobytes())
        self._rows += len(rows)

    def read(self, idx) -> np.ndarray:
        row = int(np.prod(self.shape)) * 4
        out = np.empty((len(idx), *self.shape), dtype=np.float32)
        fd = os.open(self.path, os.O_RDONLY)
        try:
            for k, i in enumerate(idx):
                os.preadv(fd, [memoryview(out[k]).cast("B")], int(i) * row)
        finally:
            os.close(fd)
        return out


class Subset:
    """Some rows of another source (Images, RowFile), in the given order, with the same read(idx):
    cross-validation's folds read the one file of frozen activations every fold shares."""

    def __init__(self, source, idx):
        self.source, self.idx = source, np.asarray(idx, dtype=int)
        self.y, self.shape = source.y[self.idx], getattr(source, "shape", ())

    def __len__(self) -> int:
        return len(self.idx)

    def read(self, idx) -> np.ndarray:
        return self.source.read(self.idx[np.asarray(idx, dtype=int)])


def images_of(rows, raw: Path, classes, size: int) -> Images:
    """The images of some split rows (path, label, sha256) with their class indices."""
    shas = pixels.shas_of(rows)
    y = np.array([list(classes).index(c) for c in rows.label], dtype=int)
    return Images([raw / p for p in rows.path], shas, y, size, pixels.cache_dir(raw))


def chunks(n: int, desc: str | None = None):
    starts = range(0, n, CHUNK)
    for start in progress(starts, desc) if desc else starts:
        yield np.arange(start, min(n, start + CHUNK))


def predict_rows(predict, source, desc: str | None = None) -> np.ndarray:
    """predict(x) over a source a chunk at a time; the outputs (small per row) concatenated."""
    out = [np.asarray(predict(source.read(idx).astype(np.float32))) for idx in chunks(len(source), desc)]
    return np.concatenate(out) if out else np.empty((0,))


def to_file(model, source, path: Path, desc: str | None = None) -> RowFile:
    """A network's outputs on every row of a source, kept in a file in the source's order."""
    path.unlink(missing_ok=True)
    rows = RowFile(path, source.y)
    for idx in chunks(len(source), desc):
        rows.append(np.asarray(model.predict_on_batch(source.read(idx).astype(np.float32))))
    return rows


@functools.cache
def _batches_class():
    import keras

    class Batches(keras.utils.PyDataset):
        """One batch at a time; with a seed, the rows are reshuffled every epoch (seeded)."""

        def __init__(self, source, batch_size: int, seed: int | None):
            super().__init__()
            self.source, self.batch_size = source, batch_size
            self.rng = None if seed is None else np.random.default_rng(seed)
            self.order = self._order()

        def _order(self):
            n = len(self.source.y)
            return np.arange(n) if self.rng is None else self.rng.permutation(n)

        def __len__(self):
            return -(-len(self.source.y) // self.batch_size)

        def __getitem__(self, i):
            idx = self.order[i * self.batch_size:(i + 1) * self.batch_size]
            return self.source.read(idx).astype(np.float32), self.source.y[idx]

        def on_epoch_end(self):
            if self.rng is not None:
                self.order = self._order()

    return Batches


def batches(source, batch_size: int, seed: int | None = None):
    """A keras PyDataset over a source (Images, InMemory or RowFile)."""
    return _batches_class()(source, batch_size, seed)
