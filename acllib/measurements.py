"""Measurements on finished runs, cached by their inputs and by the code that computes them.

A measurement (the pilot's fixed-model angles, the linear probe, the layer states' geometry, exit
representations, t-SNE coordinates, an early-exit sweep) is stored under data_cache/analysis/<name>/
in a file named by the run's hash and a digest of (its arguments, the source of the functions that
compute it). Editing any of those functions changes the digest, so a stale number is never served:
it is computed again. Files are written atomically (acllib.store).
"""
from __future__ import annotations

import hashlib
import inspect
import json
from pathlib import Path
from typing import Any, Callable

import numpy as np

from . import store


def code_version(*functions: Callable) -> str:
    """A digest of the functions' source code: any edit to one of them changes it."""
    h = hashlib.sha256()
    for f in functions:
        h.update(f"{f.__module__}.{f.__qualname__}\n".encode())
        h.update(inspect.getsource(f).encode())
    return h.hexdigest()[:16]


def _digest(args: dict, version: str) -> str:
    return hashlib.sha256(json.dumps({"args": args, "code": version}, sort_keys=True, default=str).encode()).hexdigest()[:16]


def path_of(name: str, key: str, args: dict, code: tuple[Callable, ...], suffix: str) -> Path:
    return store.cache_dir("analysis", name) / f"{key}-{_digest(args, code_version(*code))}{suffix}"


def cached_json(name: str, key: str, args: dict, code: tuple[Callable, ...], compute: Callable[[], Any],
                extra: dict | None = None) -> Any:
    """compute()'s JSON-able value, from the cache when `key` (usually the run's hash), `args` and the
    source of `code` are those it was stored with; `extra` is stored beside it for readers."""
    path = path_of(name, key, args, code, ".json")
    if path.exists():
        return store.read_json(path)["value"]
    value = compute()
    store.write_json(path, {"key": key, "args": args, "code": code_version(*code), **(extra or {}), "value": value})
    return value


def stored_json(name: str, key: str, code: tuple[Callable, ...]) -> list[dict]:
    """Every stored measurement of `name` for `key` made by the current code (any arguments), as
    {"args", "value", ...} records: for readers that accept several argument sets."""
    version = code_version(*code)
    out = []
    for path in sorted(store.cache_dir("analysis", name).glob(f"{key}-*.json")):
        record = store.read_json(path)
        if record.get("code") == version:
            out.append(record)
    return out


def cached_arrays(name: str, key: str, args: dict, code: tuple[Callable, ...],
                  compute: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """As cached_json, for a dict of arrays (stored as safetensors)."""
    import torch
    path = path_of(name, key, args, code, ".safetensors")
    if path.exists():
        return {k: v.numpy() for k, v in store.load_tensors(path).items()}
    value = compute()
    store.save_tensors(path, {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in value.items()})
    return value
