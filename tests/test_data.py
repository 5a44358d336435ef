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


def test_glue_source_setting(monkeypatch, tmp_path):
    monkeypatch.setenv("ACL_GLUE_SOURCE", "/some/where")
    assert data.glue_source() == "/some/where"
    monkeypatch.delenv("ACL_GLUE_SOURCE")
    monkeypatch.setattr(data, "_LOCAL_GLUE", tmp_path)  # a local mirror beside the repo: used
    assert data.glue_source() == str(tmp_path)
    monkeypatch.setattr(data, "_LOCAL_GLUE", tmp_path / "absent")  # none: the hub's dataset
    assert data.glue_source() == "nyu-mll/glue"


def _batch_mates(batches_per_epoch, n):
    """How many distinct other examples each example has shared a batch with, over the epochs."""
    seen = np.zeros((n, n), dtype=bool)
    for batches in batches_per_epoch:
        for b in batches:
            seen[np.ix_(b, b)] = True
    np.fill_diagonal(seen, False)
    return seen.sum(1)


def test_random_batches_mix_like_random_partitions_and_length_grouping_does_not(tok, cache):
    """Who shares a batch, over 20 epochs of SST-2's 1,500-example subset in batches of 32, against
    the random expectation: a pair shares a batch in one epoch with probability (b-1)/(n-1), so an
    example meets (n-1)(1-(1-(b-1)/(n-1))^E) others on average. Length-sorted windows of 2 batches
    (the default) keep most of that mixing; length grouping in mega-batches of 50 (the old scheme:
    one mega-batch here) keeps nearly the same batches every epoch."""
    enc = data.subsample(data.encode_split("sst2", "train", tok, max_length=128), 1500, seed=0)
    lengths, n, b, epochs = enc.lengths.numpy(), len(enc), 32, 20
    expected = (n - 1) * (1 - (1 - (b - 1) / (n - 1)) ** epochs)
    mates = {}
    for order in data.BATCH_ORDERS:
        rng = np.random.default_rng(0)
        per_epoch = [data.train_batches(lengths, b, rng, order) for _ in range(epochs)]
        for batches in per_epoch:  # every epoch covers each example once
            assert sorted(np.concatenate(batches).tolist()) == list(range(n))
        mates[order] = _batch_mates(per_epoch, n).mean()
    assert abs(mates["random"] / expected - 1) < 0.02
    assert 0.8 * expected < mates["length-windowed"] < 0.95 * expected  # measured: 0.88
    for order in data.BATCH_ORDERS:  # the library's figure (shown in the book) is this one
        assert data.batch_mates_over_random(lengths, b, order) == pytest.approx(mates[order] / expected)
    assert mates["length-grouped"] < 0.4 * expected
    # different seeds give different first epochs
    a = data.train_batches(lengths, b, np.random.default_rng(1))
    c = data.train_batches(lengths, b, np.random.default_rng(2))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))
    # windows of 2 batches: each batch is the shorter or longer half of 2b random examples
    w = data.train_batches(lengths, b, np.random.default_rng(3), "length-windowed", window=2)
    assert data.padding_share(lengths, w) < data.padding_share(lengths, data.train_batches(lengths, b, np.random.default_rng(3), "random"))
    with pytest.raises(ValueError, match="batch window must be >= 1 batch, got 0"):
        data.train_batches(lengths, b, np.random.default_rng(0), "length-windowed", window=0)
    with pytest.raises(ValueError, match="unknown batch order 'sorted'"):
        data.train_batches(lengths, b, np.random.default_rng(0), "sorted")


def test_length_sorted_parts_partition_the_batch_and_cut_padding(tok, cache):
    enc = data.subsample(data.encode_split("sst2", "train", tok, max_length=128), 1500, seed=0)
    lengths = enc.lengths.numpy()
    batches = data.train_batches(lengths, 32, np.random.default_rng(0), "random")
    pieces = [p for bt in batches for p in data.length_sorted_parts(lengths, bt, 4)]
    for bt in batches:
        parts = data.length_sorted_parts(lengths, bt, 4)
        assert sorted(np.concatenate(parts).tolist()) == sorted(bt.tolist()) and len(parts) == min(4, len(bt))
    assert data.padding_share(lengths, pieces) < 0.5 * data.padding_share(lengths, batches)


def test_balanced_subsets_hold_each_label_equally_and_change_with_the_seed():
    labels = np.array([0] * 70 + [1] * 20 + [2] * 10)
    for size in (6, 20, 29):
        idx = data.balanced_subset(labels, size, seed=3)
        counts = np.bincount(labels[idx], minlength=3)
        assert len(set(idx)) == len(idx) == size and counts.max() - counts.min() <= 1
        assert np.array_equal(idx, data.balanced_subset(labels, size, seed=3))  # seeded
    assert not np.array_equal(data.balanced_subset(labels, 20, 1), data.balanced_subset(labels, 20, 2))
    with pytest.raises(ValueError, match="label 2 has 10 examples"):
        data.balanced_subset(labels, 60, seed=0)
    with pytest.raises(ValueError, match="cannot hold each of the 3 labels"):
        data.balanced_subset(labels, 2, seed=0)


def test_halves_split_every_example_once():
    a, b = data.halves(11, seed=0)
    assert len(a) == 6 and len(b) == 5 and sorted(np.concatenate([a, b])) == list(range(11))
    assert np.array_equal(a, data.halves(11, seed=0)[0]) and not np.array_equal(a, data.halves(11, seed=1)[0])


def test_has_split_reads_the_local_mirror():
    assert data.has_split("sst2", "train") and data.has_split("qnli", "validation")
    assert not data.has_split("qnli", "train")  # the local mirror has QNLI's validation split only
