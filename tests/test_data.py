"""GLUE loading, the tokenized cache and length-grouped dynamic padding."""
import numpy as np
import pytest
import torch

from acllib import data
from acllib.models import load_tokenizer


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("minilm")


def test_tasks_metrics_and_label_counts():
    assert data.get_task("cola").metrics == ("mcc",)
    assert data.get_task("mrpc").metrics[0] == "f1" and data.get_task("qqp").metrics[0] == "f1"
    assert data.get_task("mnli").num_labels == 3
    assert data.get_task("mnli").eval_splits == ("validation_matched", "validation_mismatched")
    assert {t for t in data.TASKS} == {"cola", "sst2", "mrpc", "qqp", "qnli", "rte", "mnli"}


def test_encoded_split_matches_direct_tokenization(tok, cache):
    enc = data.encode_split("mrpc", "validation", tok, max_length=128)
    ds = data.load_split("mrpc", "validation")
    assert len(enc) == len(ds) == 408
    for i in (0, 5, 407):
        ref = tok(ds[i]["sentence1"], ds[i]["sentence2"], truncation=True, max_length=128)
        got = enc.input_ids[enc.offsets[i]:enc.offsets[i + 1]].tolist()
        assert got == ref["input_ids"]
        assert enc.token_type_ids[enc.offsets[i]:enc.offsets[i + 1]].tolist() == ref["token_type_ids"]
        assert int(enc.labels[i]) == ds[i]["label"]
    again = data.encode_split("mrpc", "validation", tok, max_length=128)  # from the cache file
    assert torch.equal(again.input_ids, enc.input_ids) and torch.equal(again.offsets, enc.offsets)


def test_truncation_to_max_length(tok, cache):
    enc = data.encode_split("rte", "validation", tok, max_length=32)
    assert int(enc.lengths.max()) == 32


def test_collate_pads_each_batch_to_its_longest(tok, cache):
    enc = data.encode_split("rte", "validation", tok, max_length=128)
    idx = [4, 10, 2]
    b = data.collate(enc, idx, pad_id=tok.pad_token_id)
    lens = enc.lengths[idx]
    assert b["input_ids"].shape == (3, int(lens.max()))
    for row, i in enumerate(idx):
        n = int(lens[row])
        assert b["input_ids"][row, :n].tolist() == enc.input_ids[enc.offsets[i]:enc.offsets[i] + n].tolist()
        assert (b["input_ids"][row, n:] == tok.pad_token_id).all()
        assert b["attention_mask"][row].sum() == n
    assert b["labels"].tolist() == enc.labels[idx].tolist()


def test_length_grouped_batches_cover_everything_once_and_waste_little(tok, cache):
    enc = data.encode_split("rte", "train", tok, max_length=128)
    lengths = enc.lengths.numpy()
    batches = data.length_grouped_batches(lengths, 32, np.random.default_rng(0))
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(len(enc)))
    assert all(len(b) <= 32 for b in batches)
    grouped = data.padding_share(lengths, batches)
    fixed = 1 - lengths.sum() / (128 * len(lengths))
    shuffled = data.padding_share(lengths, np.array_split(np.random.default_rng(0).permutation(len(lengths)),
                                                          len(batches)))
    assert grouped < shuffled < fixed
    again = data.length_grouped_batches(lengths, 32, np.random.default_rng(0))
    assert all(np.array_equal(a, b) for a, b in zip(batches, again))  # seeded


def test_subsample_is_seeded_and_within_bounds(tok, cache):
    enc = data.encode_split("rte", "validation", tok, max_length=128)
    a, b = data.subsample(enc, 50, seed=0), data.subsample(enc, 50, seed=0)
    assert len(a) == 50 and torch.equal(a.labels, b.labels) and torch.equal(a.input_ids, b.input_ids)
    assert data.subsample(enc, None, 0) is enc and data.subsample(enc, 10**6, 0) is enc


def test_glue_source_setting(monkeypatch):
    monkeypatch.setenv("ACL_GLUE_SOURCE", "/some/where")
    assert data.glue_source() == "/some/where"
    monkeypatch.delenv("ACL_GLUE_SOURCE")
    expected = str(data._LOCAL_GLUE) if data._LOCAL_GLUE.is_dir() else data.HUB_GLUE
    assert data.glue_source() == expected
