"""GLUE: task specs, the data source, tokenize-once caches, random training batches and dynamic padding."""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import store

HUB_GLUE = "nyu-mll/glue"
_LOCAL_GLUE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "glue"


@dataclass(frozen=True)
class Task:
    name: str
    text_columns: tuple[str, ...]
    num_labels: int
    metrics: tuple[str, ...]  # the first is the headline score
    eval_splits: tuple[str, ...] = ("validation",)


TASKS = {t.name: t for t in [
    Task("cola", ("sentence",), 2, ("mcc",)),
    Task("sst2", ("sentence",), 2, ("accuracy",)),
    Task("mrpc", ("sentence1", "sentence2"), 2, ("f1", "accuracy")),
    Task("qqp", ("question1", "question2"), 2, ("f1", "accuracy")),
    Task("qnli", ("question", "sentence"), 2, ("accuracy",)),
    Task("rte", ("sentence1", "sentence2"), 2, ("accuracy",)),
    Task("mnli", ("premise", "hypothesis"), 3, ("accuracy",),
         ("validation_matched", "validation_mismatched")),
]}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose one of {', '.join(TASKS)}")
    return TASKS[name]


def glue_source() -> str:
    """Where GLUE comes from: $ACL_GLUE_SOURCE, else the local mirror beside the repo, else the hub."""
    env = os.environ.get("ACL_GLUE_SOURCE")
    if env:
        return env
    return str(_LOCAL_GLUE) if _LOCAL_GLUE.is_dir() else HUB_GLUE


def has_split(task: str, split: str, source: str | None = None) -> bool:
    """Whether the GLUE source holds a split, without loading it: a local folder (the hub's layout,
    <task>/<split>-*.parquet) is looked into; the hub holds every split of every task."""
    source = source or glue_source()
    folder = Path(source).expanduser()
    if source.startswith((".", "/", "~")) or folder.is_dir():
        return any((folder / get_task(task).name).glob(f"{split}-*"))
    return True


def load_split(task: str, split: str, source: str | None = None):
    """One split of a GLUE task as a `datasets.Dataset`, or one clear error saying what is missing."""
    import datasets

    spec = get_task(task)
    source = source or glue_source()
    # A hub id looks like "owner/name"; a folder is absolute, relative-with-a-dot, or exists.
    looks_local = source.startswith((".", "/", "~")) or Path(source).is_dir()
    if looks_local and not Path(source).expanduser().is_dir():
        raise FileNotFoundError(f"GLUE source folder {source!r} does not exist")
    bars = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()  # one-off conversion bars would land in notebooks' stderr
    try:
        dd = datasets.load_dataset(str(Path(source).expanduser()) if looks_local else source, spec.name)
    except ValueError as err:
        if "not found" in str(err):
            raise ValueError(f"task {task!r} is missing from GLUE source {source!r}") from None
        raise
    except (ConnectionError, OSError) as err:
        raise RuntimeError(f"could not load task {task!r} from GLUE source {source!r}: "
                           f"{type(err).__name__}: {str(err).splitlines()[0]}") from None
    finally:
        if bars:
            datasets.enable_progress_bars()
    if split not in dd:
        raise ValueError(f"split {split!r} of task {task!r} is missing from GLUE source {source!r} "
                         f"(it has: {', '.join(dd)})")
    return dd[split]


@dataclass
class Encoded:
    """A tokenized split, flat: example i is input_ids[offsets[i]:offsets[i+1]]."""
    input_ids: torch.Tensor       # [total_tokens] int32
    token_type_ids: torch.Tensor  # [total_tokens] int8
    offsets: torch.Tensor         # [n + 1] int64
    labels: torch.Tensor          # [n] int64

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def lengths(self) -> torch.Tensor:
        return self.offsets[1:] - self.offsets[:-1]

    def positions(self, idx) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """For examples idx: (idx as a tensor, flat token positions [B, L], real-token mask [B, L]),
        L being the longest of them; padded slots point at position 0."""
        idx = torch.as_tensor(np.asarray(idx), dtype=torch.long)
        starts, lens = self.offsets[idx], self.lengths[idx]
        steps = torch.arange(int(lens.max()))[None, :]
        mask = steps < lens[:, None]
        return idx, torch.where(mask, starts[:, None] + steps, 0), mask

    def subset(self, idx) -> "Encoded":
        idx, pos, mask = self.positions(idx)
        pos = pos[mask]  # row-major: example by example, in order
        return Encoded(self.input_ids[pos], self.token_type_ids[pos],
                       torch.cat([torch.zeros(1, dtype=torch.long), mask.sum(1).cumsum(0)]), self.labels[idx])


def _tokenizer_key(tokenizer) -> str:
    vocab = tokenizer.get_vocab()
    digest = hashlib.sha256("\n".join(sorted(vocab)).encode()).hexdigest()[:12]
    return f"{type(tokenizer).__name__}-{digest}"


def encode_split(task: str, split: str, tokenizer, max_length: int,
                 source: str | None = None) -> Encoded:
    """Tokenize a split once (truncated to max_length, unpadded) and cache it as safetensors."""
    source = source or glue_source()
    key = hashlib.sha256(f"{source}|{task}|{split}|{_tokenizer_key(tokenizer)}|{max_length}".encode())
    path = store.cache_dir("tokenized") / f"{task}-{split}-{key.hexdigest()[:16]}.safetensors"
    if path.exists():
        return Encoded(**store.load_tensors(path))
    ds = load_split(task, split, source)
    cols = [list(ds[c]) for c in get_task(task).text_columns]
    enc = tokenizer(*cols, truncation=True, max_length=max_length, padding=False,
                    return_token_type_ids=True)
    ids = enc["input_ids"]
    types = enc.get("token_type_ids") or [[0] * len(x) for x in ids]
    lens = torch.tensor([len(x) for x in ids], dtype=torch.long)
    out = Encoded(
        input_ids=torch.tensor([t for x in ids for t in x], dtype=torch.int32),
        token_type_ids=torch.tensor([t for x in types for t in x], dtype=torch.int8),
        offsets=torch.cat([torch.zeros(1, dtype=torch.long), lens.cumsum(0)]),
        labels=torch.tensor(list(ds["label"]), dtype=torch.long),
    )
    store.save_tensors(path, vars(out))
    return out


def subsample(data: Encoded, size: int | None, seed: int) -> Encoded:
    """A seeded random subset of `size` examples (all of them when size is None or too large)."""
    if size is None or size >= len(data):
        return data
    idx = np.sort(np.random.default_rng(seed).choice(len(data), size=size, replace=False))
    return data.subset(idx)


def balanced_subset(labels, size: int, seed: int) -> np.ndarray:
    """Indices (sorted) of a label-balanced random subset of `size` examples, drawn with `seed`: size
    // K of each of the K labels, the remainder to the labels drawn first (a seeded order), as
    few-shot studies draw their training sets (a fresh subset per seed)."""
    labels = np.asarray(labels)
    classes = np.unique(labels)
    if size < len(classes):
        raise ValueError(f"a balanced subset of {size} examples cannot hold each of the {len(classes)} labels")
    rng = np.random.default_rng(seed)
    per = np.full(len(classes), size // len(classes))
    per[rng.permutation(len(classes))[: size % len(classes)]] += 1
    picked = []
    for c, k in zip(classes, per):
        pool = np.flatnonzero(labels == c)
        if k > len(pool):
            raise ValueError(f"label {c} has {len(pool)} examples; a balanced subset of {size} needs {k}")
        picked.append(rng.choice(pool, size=k, replace=False))
    return np.sort(np.concatenate(picked))


def halves(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A seeded split of n examples into two halves (sorted indices; the first gets the odd one):
    a task with only a validation split here (QNLI, MNLI) takes its few-shot training pool from the
    first half and is evaluated on the second, held out."""
    perm = np.random.default_rng(seed).permutation(n)
    cut = (n + 1) // 2
    return np.sort(perm[:cut]), np.sort(perm[cut:])


BATCH_ORDERS = ("length-windowed", "random", "length-grouped")


def train_batches(lengths, batch_size: int, rng: np.random.Generator, order: str = "length-windowed",
                  window: int = 2) -> list[np.ndarray]:
    """One epoch's training batches.

    "random": a fresh random partition every epoch, as Hugging Face's Trainer does by default (the
    paper defers to it): who shares a batch is random, which contrastive losses depend on.
    "length-windowed": a fresh random partition into windows of `window` batches every epoch, each
    window sorted by length and cut into batches (`length_grouped_batches` with mega=window). With
    window=2 a batch is half of a random window of 2b examples: over 20 SST-2 epochs an example
    meets 0.88x the batch-mates of random batches (tests/test_data.py), at 50% padding instead of
    66%, and a CE step on SST-2 takes 0.7x the time of a random batch's (benchmarks/bench.py).
    "length-grouped": Hugging Face's group_by_length (mega-batches of 50): fewer padded tokens, but
    on a small training set nearly the same batches every epoch and seed (kept to measure what that
    did).
    """
    if order == "random":
        perm = rng.permutation(len(lengths))
        return [perm[i:i + batch_size] for i in range(0, len(perm), batch_size)]
    if order == "length-windowed":
        if window < 1:
            raise ValueError(f"batch window must be >= 1 batch, got {window!r}")
        return length_grouped_batches(lengths, batch_size, rng, mega=window)
    if order == "length-grouped":
        return length_grouped_batches(lengths, batch_size, rng)
    raise ValueError(f"unknown batch order {order!r}; choose one of {', '.join(BATCH_ORDERS)}")


def batch_mates_over_random(lengths, batch_size: int, order: str, window: int = 2, epochs: int = 20,
                            seed: int = 0, probes: int = 2000) -> float:
    """How many distinct batch-mates an example meets over `epochs` epochs of `order`'s batches, on
    average, over the random expectation: a pair shares a random batch in one epoch with probability
    (b-1)/(n-1), so an example meets (n-1)(1-(1-(b-1)/(n-1))^E) others. 1 is fully random mixing.
    Averaged over every example, or over `probes` random ones where there are more (memory)."""
    n = len(lengths)
    rng = np.random.default_rng(seed)
    probe = np.arange(n) if n <= probes else np.sort(rng.choice(n, probes, replace=False))
    row = np.full(n, -1)
    row[probe] = np.arange(len(probe))
    seen = np.zeros((len(probe), n), dtype=bool)
    for _ in range(epochs):
        for b in train_batches(lengths, batch_size, rng, order, window):
            rows = row[b][row[b] >= 0]
            seen[np.ix_(rows, b)] = True
    seen[np.arange(len(probe)), probe] = False
    expected = (n - 1) * (1 - (1 - (batch_size - 1) / (n - 1)) ** epochs)
    return float(seen.sum(1).mean() / expected)


def length_sorted_parts(lengths, idx, parts: int) -> list[np.ndarray]:
    """A batch cut into `parts` pieces of similar lengths, for the encoder's forward pass only.

    An encoder's states of one example do not depend on the other examples of its batch (padding is
    masked), so running the pieces separately and concatenating gives the same states as one padded
    batch (tests/test_train.py checks it) with less padding: random SST-2 batches of 32 are 66%
    padding, in 4 pieces 27%. Losses are still computed over the whole batch. (Measured on this CPU,
    4 pieces made a step slower, not faster: per-call overhead outweighs the padding at these
    sizes, so the profiles run one piece.)
    """
    idx = np.asarray(idx)
    order = idx[np.argsort(-np.asarray(lengths)[idx], kind="stable")]
    parts = max(1, min(parts, len(order)))
    return [order[j * len(order) // parts:(j + 1) * len(order) // parts] for j in range(parts)]


def length_grouped_batches(lengths, batch_size: int, rng: np.random.Generator | None,
                           mega: int = 50) -> list[np.ndarray]:
    """Index batches of similar lengths, so dynamic padding wastes little.

    Like Hugging Face's group_by_length: shuffle, cut into mega-batches of `mega` batches, sort each
    by length, split, shuffle the batch order. rng=None gives a fixed, fully sorted order (for eval,
    where batch composition does not matter).
    """
    lengths = np.asarray(lengths)
    if rng is None:
        order = np.argsort(-lengths, kind="stable")
        return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    perm = rng.permutation(len(lengths))
    batches = []
    step = batch_size * mega
    for start in range(0, len(perm), step):
        chunk = perm[start:start + step]
        chunk = chunk[np.argsort(-lengths[chunk], kind="stable")]
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def collate(data: Encoded, idx, pad_id: int = 0) -> dict[str, torch.Tensor]:
    """Pad a batch to its own longest example."""
    idx, pos, mask = data.positions(idx)
    input_ids = torch.where(mask, data.input_ids[pos].long(), torch.full_like(pos, pad_id))
    token_type_ids = torch.where(mask, data.token_type_ids[pos].long(), torch.zeros_like(pos))
    return {"input_ids": input_ids, "token_type_ids": token_type_ids,
            "attention_mask": mask.long(), "labels": data.labels[idx]}


def padding_share(lengths, batches) -> float:
    """Share of token positions in these batches that are padding."""
    lengths = np.asarray(lengths)
    real = sum(int(lengths[b].sum()) for b in batches)
    total = sum(int(lengths[b].max()) * len(b) for b in batches)
    return 1.0 - real / total
