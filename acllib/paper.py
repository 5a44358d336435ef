"""The paper's own numbers (acllib/paper_numbers.json), the one place any quoted number is read from."""
from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources


@lru_cache(maxsize=1)
def numbers() -> dict:
    return json.loads((resources.files("acllib") / "paper_numbers.json").read_text())


def table1(model: str, method: str = "-") -> dict[str, float]:
    """One row of Table 1 as {column: score}, e.g. table1("BERT", "ACL")["rte"]."""
    t = numbers()["table1"]
    for row in t["rows"]:
        if row["model"] == model and row["method"] == method:
            return dict(zip(t["columns"], row["scores"])) | {"flops_g": row["flops_g"]}
    raise KeyError(f"Table 1 has no row {model!r} / {method!r}")


def table2(row: str) -> dict[str, float]:
    t = numbers()["table2"]
    for r in t["rows"]:
        if r["row"] == row:
            return dict(zip(t["columns"], r["scores"]))
    raise KeyError(f"Table 2 has no row {row!r}")


def label(section: str) -> str:
    """How a quoted figure is labelled beside ours: with the paper's own task and backbone."""
    d = numbers()[section]
    return f"paper ({d['task'].upper()}, {d['backbone']}" + (f", exit {d['exit']})" if "exit" in d else ")")


def same_setting(section: str, task: str, backbone: str, exit: int | None = None) -> bool:
    """Whether our run is the paper's experiment of `section` (same task, backbone, exit), the only
    case in which its number may be subtracted from ours."""
    d = numbers()[section]
    return d["task"] == task and d["backbone"] == backbone and d.get("exit", exit) == exit
