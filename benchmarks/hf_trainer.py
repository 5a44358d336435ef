"""CE fine-tuning epochs: acllib's loop against transformers.Trainer on the same model and data.

Both sides train the same MultiExitModel (packaged MiniLM + the MHA exit on the last layer) from the
same weights with the same CE loss, on the same tokenized RTE examples, batch size, max length,
learning rate, schedule, weight decay, clipping and precision. The Trainer is set up as a careful
user would: dynamic padding (DataCollatorWithPadding), `train_sampling_strategy="group_by_length"`,
its default fused AdamW, no evaluation, logging or checkpoints during training. It gets the stock
Hugging Face modules (nn.Dropout, SDPA attention) rather than acllib's fast dropout, since those
are part of what is compared.
"""
from __future__ import annotations

import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from acllib import strategies, train
from acllib.models import FastDropout


def stock_modules(model: nn.Module) -> nn.Module:
    """Undo acllib's speed-ups inside a model: nn.Dropout for FastDropout, SDPA attention."""
    for module in list(model.modules()):
        for name, child in module.named_children():
            if isinstance(child, FastDropout):
                setattr(module, name, nn.Dropout(child.p))
    backbone = model.backbone
    backbone.config._attn_implementation = "sdpa"
    return model


class ForTrainer(nn.Module):
    """The Trainer's view of a MultiExitModel: keyword tensors in, {'loss', 'logits'} out."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, token_type_ids=None, labels=None):
        batch = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            batch["token_type_ids"] = token_type_ids
        out = self.model(batch, [self.model.exit_layers[-1]])[0]
        loss = F.cross_entropy(out.logits.float(), labels) if labels is not None else None
        return {"loss": loss, "logits": out.logits}


def ours_epoch_seconds(cfg, td) -> list[float]:
    torch.manual_seed(cfg.seed)
    model = strategies.build_model(cfg, 2)
    log = train.train_full(cfg, model, td, progress=False)
    return [e["train_seconds"] for e in log.epochs]


def trainer_epoch_seconds(cfg, td, tokenizer, workdir: str) -> list[float]:
    import datasets
    from transformers import DataCollatorWithPadding, Trainer, TrainerCallback, TrainingArguments

    rows = {"input_ids": [], "token_type_ids": [], "labels": []}
    for i in range(len(td.train)):
        s, e = int(td.train.offsets[i]), int(td.train.offsets[i + 1])
        rows["input_ids"].append(td.train.input_ids[s:e].tolist())
        rows["token_type_ids"].append(td.train.token_type_ids[s:e].tolist())
        rows["labels"].append(int(td.train.labels[i]))
    rows["attention_mask"] = [[1] * len(ids) for ids in rows["input_ids"]]
    dataset = datasets.Dataset.from_dict(rows)

    times: list[float] = []

    class EpochTimer(TrainerCallback):
        def on_epoch_begin(self, args, state, control, **kwargs):
            self.t0 = time.perf_counter()

        def on_epoch_end(self, args, state, control, **kwargs):
            times.append(time.perf_counter() - self.t0)

    torch.manual_seed(cfg.seed)
    model = stock_modules(strategies.build_model(cfg, 2))
    args = TrainingArguments(
        output_dir=workdir, per_device_train_batch_size=cfg.batch_size, num_train_epochs=cfg.epochs,
        learning_rate=cfg.lr, weight_decay=cfg.weight_decay, warmup_steps=cfg.warmup_ratio,
        max_grad_norm=train.MAX_GRAD_NORM, lr_scheduler_type="linear", use_cpu=True,
        bf16=cfg.precision == "bf16", train_sampling_strategy="group_by_length",
        eval_strategy="no", save_strategy="no", logging_strategy="no", report_to="none",
        disable_tqdm=True, dataloader_num_workers=0, seed=cfg.seed)
    trainer = Trainer(model=ForTrainer(model), args=args, train_dataset=dataset,
                      data_collator=DataCollatorWithPadding(tokenizer), callbacks=[EpochTimer()])
    trainer.train()
    return times


def compare(cfg, td, tokenizer, workdir: str) -> dict[str, float]:
    """Median epoch seconds after the first (warm-up) epoch, ours and the Trainer's."""
    ours = ours_epoch_seconds(cfg, td)
    theirs = trainer_epoch_seconds(cfg, td, tokenizer, workdir)
    return {"ours": statistics.median(ours[1:]), "trainer": statistics.median(theirs[1:])}
