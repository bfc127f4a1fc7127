"""Train a TransformerLM with AdamW: on a text file (character-level or BPE), or on a built-in sorting task.

    python train.py                                   # the synthetic sorting task, about a minute
    python train.py --data input.txt --preset shakespeare-char-cpu --out-dir out-shakespeare
    python train.py --out-dir out-shakespeare --resume --max-iters 3000
    python train.py --plot out-shakespeare            # loss curves -> out-shakespeare/loss.png

Logs follow nanoGPT: a line every --log-interval iterations, the mean train and val loss over
--eval-iters batches at iteration 0, every --eval-interval and at the end (there also the validation
split's bits per byte, see evaluation.py). Every row logged goes to OUT_DIR/metrics.jsonl; the checkpoint
(OUT_DIR/checkpoint, see checkpoint.py) is saved when the val loss improves, at the end and on Ctrl-C.

From Python, train(model, data, **settings) runs the same loop on a model you built:

    history = train.train(model, ids, max_iters=200, lr=1e-3, out_dir="out")   # ids: (N,) ints, or a text file
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType

import numpy as np

import evaluation
import parallel
from atomic_files import LockHeld, exclusive_lock
from checkpoint import Checkpoint, CheckpointError, load_state, load_tokenizer, read_checkpoint, save_checkpoint
from data import SortingTask, TokenDataset, prepare_text_dataset, read_text_file
from device import DeviceError
from optim import accumulate_grads, lr_schedule
from precision import LossScaler
from sparse_attention import effective_spans, span_summary
from tokenizer import ByteBPETokenizer, Tokenizer, start_ids
from transformer_config import CHOICES as MODEL_CHOICES
from transformer_config import PRESETS as MODEL_PRESETS
from transformer_config import TransformerConfig
from transformer_lm import TransformerLM

# Every setting's value when neither a preset nor a flag sets it: GPT-2's architecture and initialization, as
# nanoGPT uses, and the "small" model (a few minutes on a laptop CPU for any text file).
DEFAULTS = dict(
    n_layers=2, n_heads=4, d_model=64, d_ff=None, block_size=64, dropout=0.0, positional="learned",
    rope_theta=10000.0, n_kv_heads=None, head_dim=None, norm_first=True, norm="layernorm", activation="gelu_tanh",
    bias=True, qkv_bias=None, init="gpt2", dtype="float32", precision="fp32", attention="full", window=None,
    stride=None, summary=None, adaptive_span=False, max_span=None, span_ramp=32, span_loss_coefficient=2e-6,
    batch_size=16, max_iters=1000, lr=1e-3, min_lr=1e-4, warmup_iters=50, lr_decay_iters=None, schedule="cosine",
    weight_decay=0.1, beta1=0.9, beta2=0.99, grad_clip=1.0, grad_accum_steps=1,
    eval_interval=200, eval_iters=20, log_interval=20, sample_tokens=200, seed=1337,
    tokenizer="char", bpe_vocab_size=512, zero=0)

# The training presets: what each changes from DEFAULTS. "model" names a model preset (transformer_config.PRESETS)
# whose shape the run takes (its vocab_size aside: the data sets it); the rest are training settings.
TRAINING_PRESETS = {
    # The defaults themselves.
    "small": {},
    # The default without --data: sort 6 digits from {0, 1, 2}, >= 99% held-out accuracy in ~1 minute.
    "sort": dict(n_layers=3, n_heads=4, d_model=48, batch_size=64, lr=5e-3, min_lr=5e-4, eval_interval=250,
                 eval_iters=10, log_interval=50),
    # nanoGPT's CPU quick start for tiny Shakespeare (config/train_shakespeare_char.py + its README flags).
    "shakespeare-char-cpu": dict(model="nanogpt-cpu", batch_size=12, max_iters=2000, warmup_iters=100,
                                 eval_interval=250, log_interval=10),
    # The same run with Llama's choices at the same size and parameter count (model preset modern-cpu: RoPE,
    # RMSNorm, SwiGLU, 2 key/value heads for 4 query heads, no biases).
    "shakespeare-char-modern": dict(model="modern-cpu", batch_size=12, max_iters=2000, warmup_iters=100,
                                    eval_interval=250, log_interval=10),
}
# --preset accepts both namespaces: a model preset's name trains that shape with the default training settings.
PRESET_NAMES = (*TRAINING_PRESETS, *MODEL_PRESETS)

# The values of the settings that are names (the model's from config.CHOICES): --help lists them and
# resolve_settings checks a resumed run's saved values against them.
CHOICES = dict(MODEL_CHOICES, preset=PRESET_NAMES, tokenizer=("char", "bpe"), schedule=("cosine", "constant"))

# The settings that are the model's shape (TransformerConfig fields), besides block_size (its max_seq_len) and
# max_span. train() takes them from the model it is given.
MODEL_SETTINGS = ("d_model", "d_ff", "n_heads", "n_layers", "dropout", "positional", "rope_theta", "n_kv_heads",
                  "head_dim", "norm_first", "norm", "activation", "bias", "qkv_bias", "init", "dtype", "precision",
                  "attention", "window", "stride", "summary", "adaptive_span", "span_ramp", "span_loss_coefficient")
MODEL_KEYS = (*MODEL_SETTINGS, "block_size", "max_span")
# The settings that TransformerConfig derives from others when they are unset (None): one key/value head per query
# head, d_model / n_heads wide heads, biases on q, k, v as on every other linear map, and a 4 * d_model wide
# feed-forward.
DERIVED_SETTINGS = ("d_ff", "n_kv_heads", "head_dim", "qkv_bias")


def derived_value(config: TransformerConfig, name: str) -> object:
    """What TransformerConfig derives for setting `name` of `config` when it is left unset (None when nothing can be
    derived, e.g. head_dim when n_heads does not divide d_model): the config's own rule, not a copy of it."""
    try:
        return getattr(dataclasses.replace(config, **{name: None}), name)
    except ValueError:
        return None


class TrainingError(ValueError):
    """Settings, data or a model that a run cannot use, or a run that cannot go on (its loss became NaN, its
    output directory is unusable). train.py prints it as one `error: ...` line."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) stopped train() between two iterations. checkpoint: where the run was saved (None without
    out_dir); iteration: the iteration saved, where a resume continues; history: the rows logged until then."""

    def __init__(self, iteration: int, checkpoint: Path | None, history: list[dict]) -> None:
        super().__init__(f"interrupted at iteration {iteration}")
        self.iteration, self.checkpoint, self.history = iteration, checkpoint, history


def model_preset_settings(config: TransformerConfig) -> dict:
    """The settings that describe `config`'s shape (its vocab_size aside: the data sets it). A derived setting
    (DERIVED_SETTINGS) that has its derived value is left unset, so that --n-heads, --d-model or --no-bias on top of
    a preset derive it again instead of keeping the preset's."""
    settings = {name: getattr(config, name) for name in MODEL_SETTINGS}
    for name in DERIVED_SETTINGS:
        if settings[name] == derived_value(config, name):
            settings[name] = None
    return {**settings, "block_size": config.max_seq_len, "max_span": config.max_span}


def preset_settings(name: str) -> dict:
    """Every setting of preset `name`: DEFAULTS, then its model preset's shape, then its own settings."""
    preset = dict(TRAINING_PRESETS.get(name, {"model": name}))
    model = preset.pop("model", None)
    shape = model_preset_settings(TransformerConfig.from_preset(model)) if model else {}
    return {**DEFAULTS, **shape, **preset}


def show(value: object) -> str:
    return "unset" if value is None else str(value)


def presets_table() -> str:
    """One line per preset: what it changes from the defaults (the epilog of --help)."""
    lines = ["presets (--preset NAME; a flag overrides any value; what a preset does not list is the default):"]
    for name in PRESET_NAMES:
        model = TRAINING_PRESETS[name].get("model") if name in TRAINING_PRESETS else name
        changes = {key: value for key, value in preset_settings(name).items() if DEFAULTS[key] != value}
        origin = f"model preset {model}: " if model else ""
        if name not in TRAINING_PRESETS:
            origin = "model preset (TransformerConfig.from_preset), default training settings: "
        values = " ".join(f"{key}={show(value)}" for key, value in changes.items()) or "the defaults"
        lines.append(f"  {name:25}{origin}{values}")
    lines.append("  Without --preset: 'sort' without --data, 'small' with it. The names sort, small, "
                 "shakespeare-char-cpu and shakespeare-char-modern are training-only; TransformerConfig.from_preset "
                 "knows the others.")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """train.py's command line. Every setting's flag defaults to None (so that a resumed run can tell a given flag
    from a default); its help shows the value it gets when neither a preset nor the flag sets it."""
    parser = argparse.ArgumentParser(description=__doc__, epilog=presets_table(),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)

    def add(name: str, *, help: str = "", **options: object) -> None:
        dest = name[2:].replace("-", "_")
        if dest in DEFAULTS and DEFAULTS[dest] is not None:
            help = f"{help} (default: {DEFAULTS[dest]})".strip()
        parser.add_argument(name, help=help, **options)

    add("--data", help="UTF-8 text file to train on (default: the synthetic sorting task)")
    add("--preset", choices=CHOICES["preset"], help="a named set of settings, listed below (default: 'sort' without "
        "--data, 'small' with it)")
    add("--tokenizer", choices=CHOICES["tokenizer"], help="characters, or a byte-level BPE trained on --data")
    add("--bpe-vocab-size", type=int, help="vocabulary size of the BPE tokenizer")
    add("--out-dir", default="out", help="where the checkpoint, metrics.jsonl and loss.png go (default: out)")
    add("--resume", action="store_true", help="continue the run saved in --out-dir exactly where it stopped")
    add("--plot", metavar="DIR", help="only draw DIR/metrics.jsonl to DIR/loss.png (needs matplotlib)")
    add("--max-iters", type=int, help="optimizer steps of the run")
    add("--batch-size", type=int, help="sequences per micro-batch")
    add("--block-size", type=int, help="context length T (the model's max_seq_len)")
    add("--n-layers", type=int)
    add("--n-heads", type=int)
    add("--d-model", type=int)
    add("--d-ff", type=int, help="hidden width of the feed-forward, of each of its two input maps with --activation "
        "swiglu (default: 4 * --d-model)")
    add("--dropout", type=float)
    add("--positional", choices=CHOICES["positional"], help="position vectors added to the tokens (sinusoidal, "
        "learned: GPT-2's), or queries and keys rotated per head (rope: Llama's)")
    add("--rope-theta", type=float, help="base of the rotary frequencies with --positional rope")
    add("--n-kv-heads", type=int, help="key/value heads, each shared by a group of query heads (grouped-query "
        "attention; 1: multi-query); must divide --n-heads (default: --n-heads)")
    add("--head-dim", type=int, help="width of each attention head (default: --d-model / --n-heads)")
    add("--norm-first", action=argparse.BooleanOptionalAction, help="pre-LN or post-LN")
    add("--norm", choices=CHOICES["norm"], help="LayerNorm or RMSNorm (Llama's: gain only)")
    add("--activation", choices=CHOICES["activation"], help="feed-forward: GELU (tanh form or exact) or Llama's "
        "gated SwiGLU (its hidden width is --d-ff too)")
    add("--bias", action=argparse.BooleanOptionalAction, help="biases in every linear map and LayerNorm")
    add("--qkv-bias", action=argparse.BooleanOptionalAction, help="biases on the query, key and value projections "
        "(Qwen2: --no-bias --qkv-bias; default: as --bias)")
    add("--init", choices=CHOICES["init"])
    add("--attention", choices=CHOICES["attention"], help="attention pattern")
    add("--window", type=int, help="keys each query sees with --attention sliding (itself included)")
    add("--stride", type=int, help="block length of --attention strided / fixed")
    add("--summary", type=int, help="summary positions per block with --attention fixed")
    add("--adaptive-span", action=argparse.BooleanOptionalAction,
        help="each head learns its attention span (Sukhbaatar et al. 2019); spans are logged at each eval")
    add("--max-span", type=int, help="the longest span an adaptive head may learn (default: --block-size)")
    add("--span-ramp", type=int, help="length of the soft mask's ramp")
    add("--span-loss-coefficient", type=float, help="L1 penalty per token of mean span")
    add("--dtype", choices=CHOICES["dtype"])
    add("--precision", choices=CHOICES["precision"], help="matrix products on bfloat16 or float16 operands with "
        "float32 sums, float32 master weights; fp16 adds dynamic loss scaling; slower on a CPU (precision.py)")
    add("--lr", type=float, help="peak learning rate")
    add("--min-lr", type=float, help="learning rate at the end of the cosine decay")
    add("--warmup-iters", type=int, help="linear warm-up; cut to a tenth of the decay horizon when it does not fit "
        "before it")
    add("--lr-decay-iters", type=int, help="iteration where the cosine reaches --min-lr, which stays after it "
        "(default: --max-iters; a resumed run keeps its own)")
    add("--schedule", choices=CHOICES["schedule"])
    add("--weight-decay", type=float)
    add("--beta1", type=float)
    add("--beta2", type=float)
    add("--grad-clip", type=float, help="global gradient-norm clip (0 disables)")
    add("--grad-accum-steps", type=int, help="micro-batches per optimizer step")
    add("--eval-interval", type=int)
    add("--eval-iters", type=int)
    add("--log-interval", type=int)
    add("--sample-tokens", type=int, help="tokens to generate after training (0: none)")
    add("--seed", type=int)
    add("--zero", type=int, choices=(0, 1), help="under mpirun: 1 shards AdamW's moments over the ranks (ZeRO stage "
        "1); see parallel.py")
    # Where this process trains, not a setting of the run: a run saved on a GPU resumes on the CPU and back.
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="cpu (NumPy) or cuda (CuPy on an NVIDIA GPU: pip install -r requirements-gpu.txt)")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def integer_rule(minimum: int, maximum: int | None = None, unset_means: str | None = None) -> Callable:
    """A settings rule: value -> what it should be if it is not an int in [minimum, maximum], else None.
    unset_means: what None stands for, where a setting may be left unset."""
    def problem(value: object) -> str | None:
        if value is None and unset_means:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            return "an integer" + (f" (or unset: {unset_means})" if unset_means else "")
        if value < minimum or (maximum is not None and value > maximum):
            return f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        return None
    return problem


def number_rule(minimum: float, below: float = math.inf) -> Callable:
    """A settings rule for a finite number in [minimum, below). (Every comparison with NaN is False, so a
    test such as `grad_clip > 0` would quietly read NaN as 'off'; here NaN and the infinities are refused.)"""
    def problem(value: object) -> str | None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return "a finite number"
        if not minimum <= value < below:
            return f">= {minimum}" if below == math.inf else f"in [{minimum}, {below})"
        return None
    return problem


def choice_rule(choices: tuple) -> Callable:
    return lambda value: None if isinstance(value, str) and value in choices else f"one of {list(choices)}"


# What every setting may be. Each value, whether from a preset, a resumed run's state.json, a flag or a keyword of
# train(), is checked here once, before anything uses it: a bad value is an error naming its flag, never a default.
SETTING_RULES = {
    **{name: integer_rule(1) for name in ("max_iters", "batch_size", "block_size", "n_layers", "n_heads", "d_model",
                                          "eval_interval", "eval_iters", "log_interval", "grad_accum_steps",
                                          "span_ramp")},
    **{name: integer_rule(0) for name in ("warmup_iters", "sample_tokens", "seed")},
    "zero": integer_rule(0, 1),
    "lr_decay_iters": integer_rule(1, unset_means="--max-iters"),
    "max_span": integer_rule(1, unset_means="--block-size"),
    **{name: integer_rule(1, unset_means="the pattern does not use it") for name in ("window", "stride", "summary")},
    "n_kv_heads": integer_rule(1, unset_means="--n-heads"),
    "d_ff": integer_rule(1, unset_means="4 * --d-model"),
    "head_dim": integer_rule(1, unset_means="--d-model / --n-heads"),
    # 256 byte tokens and <|endoftext|> at least; token files hold ids as uint16.
    "bpe_vocab_size": integer_rule(257, 65536),
    **{name: number_rule(0) for name in ("lr", "min_lr", "weight_decay", "grad_clip", "span_loss_coefficient")},
    **{name: number_rule(0, below=1) for name in ("dropout", "beta1", "beta2")},
    "rope_theta": lambda value: "a finite number > 0" if number_rule(0)(value) or value == 0 else None,
    **{name: choice_rule(choices) for name, choices in CHOICES.items()},
    **{name: lambda value: None if isinstance(value, bool) else "true or false"
       for name in ("norm_first", "bias", "adaptive_span")},
    "qkv_bias": lambda value: None if value is None or isinstance(value, bool) else "true or false (or unset: --bias)",
    "data": lambda value: None if value is None or (isinstance(value, str) and value) else "a text file's path",
}
# A resumed run keeps these (its tokens and its defaults); to change them, start a new run.
KEPT_ON_RESUME = ("preset", "tokenizer", "bpe_vocab_size")
# Flags that mean something only together with a setting; given without it they would be silently ignored.
ONLY_WITH = {"bpe_vocab_size": ("tokenizer", "bpe"), "max_span": ("adaptive_span", True),
             "span_ramp": ("adaptive_span", True), "span_loss_coefficient": ("adaptive_span", True),
             "min_lr": ("schedule", "cosine"), "warmup_iters": ("schedule", "cosine"),
             "lr_decay_iters": ("schedule", "cosine"), "rope_theta": ("positional", "rope")}
# The sorting task has its own block size and tokens, and reports accuracy instead of a sample.
TEXT_ONLY = ("block_size", "tokenizer", "bpe_vocab_size", "sample_tokens")


def option(name: str) -> str:
    return "--" + name.replace("_", "-")


def flag(name: str, value: object) -> str:
    """How a setting reads on the command line: --tokenizer bpe, --adaptive-span, --no-adaptive-span."""
    if isinstance(value, bool):
        return option(name) if value else "--no-" + option(name)[2:]
    return f"{option(name)} {value}"


def check_setting(name: str, value: object, source: str = "") -> None:
    expected = SETTING_RULES[name](value)
    if expected:
        raise TrainingError(f"{option(name)} must be {expected}, got {value!r}{source}")


def resolve_settings(args: argparse.Namespace, saved: dict | None = None) -> dict:
    """train.py's settings: preset < saved run (when resuming) < flags given on the command line; every value
    checked (see merge_settings). A problem exits with one `error: ...` line."""
    given = {key: value for key, value in vars(args).items()
             if value is not None and key not in ("resume", "plot", "out_dir", "device")}
    try:
        return merge_settings(given, saved, sorting=given.get("data", (saved or {}).get("data")) is None)
    except TrainingError as error:
        raise SystemExit(f"error: {error}") from None


def merge_settings(given: dict, saved: dict | None = None, model: TransformerConfig | None = None,
                   sorting: bool = False) -> dict:
    """Every setting of a run: DEFAULTS < preset < saved run (resuming) < the model's shape < `given`, checked.

    given: the settings chosen (flags, or train()'s keywords); saved: the resumed run's settings (its state.json);
    model: the config of the model train() was given, whose shape the run takes; sorting: the sorting task (no
    text settings). A resumed run keeps its decay horizon (see describe_schedule) unless given lr_decay_iters.
    Raises TrainingError naming the setting.
    """
    saved = saved or {}
    for settings, what in ((saved, "the resumed run's settings have unknown entries"),
                           (given, "unknown settings")):
        unknown = sorted(set(settings) - set(SETTING_RULES))
        if unknown:
            raise TrainingError(f"{what} {unknown}; the settings are train.py's flags (python train.py --help)")

    def source(name: str) -> str:
        return " (saved in the resumed run's state.json)" if name in saved and name not in given else ""

    data = given.get("data", saved.get("data"))
    check_setting("data", data, source("data"))
    preset = given.get("preset", saved.get("preset"))
    if preset is None:
        preset = "sort" if sorting else "small"
    check_setting("preset", preset, source("preset"))
    shape = model_preset_settings(model) if model else {}
    base = {**preset_settings(preset), **saved, **shape}  # what each setting would be without `given`
    if saved and base.get("lr_decay_iters") is None:
        base["lr_decay_iters"] = saved["max_iters"]  # the schedule's horizon is part of the saved run
    settings = {**base, **given, "preset": preset, "data": data}
    for name, value in settings.items():
        check_setting(name, value, source(name))
    # A setting that the run would ignore, given a value other than its default, is a mistake to report.
    ignored = {name: value for name, value in given.items() if value != base.get(name)}
    for name, (needed, needed_value) in ONLY_WITH.items():
        if name in ignored and settings[needed] != needed_value:
            raise TrainingError(f"{flag(name, given[name])} is only used with {flag(needed, needed_value)}, "
                                f"but the run has {flag(needed, settings[needed])}")
    if sorting:
        for name in TEXT_ONLY:
            if name in ignored:
                raise TrainingError(f"{flag(name, given[name])} is only used with --data (the sorting task "
                                    "has its own tokens and block size)")
    for name in KEPT_ON_RESUME:
        if name in given and name in saved and given[name] != saved[name]:
            raise TrainingError(f"{flag(name, given[name])}: the resumed run has {flag(name, saved[name])}, "
                                f"which a resumed run keeps; start a new run in another --out-dir to change it")
    if model:
        for name in MODEL_KEYS:
            has = getattr(model, name) if name in DERIVED_SETTINGS else shape[name]  # derived: the value, not None
            if name in given and given[name] != shape[name] and given[name] != has:
                raise TrainingError(f"{name}={given[name]!r}: the model has {name}={has!r}, and a run "
                                    "takes its shape from the model; build another model to change it")
    try:
        learning_rate(settings, 0)
    except ValueError as error:
        raise TrainingError(f"{error} (see --lr, --min-lr, --warmup-iters, --lr-decay-iters)") from None
    return settings


def schedule_horizon(settings: dict) -> tuple[int, int]:
    """(warm-up iterations, decay horizon): the cosine runs from the warm-up's end to the horizon, --lr-decay-iters
    or else --max-iters, and stays at min_lr after it.

    A warm-up that does not end before the horizon (a short run with a preset's warm-up: --max-iters 20 with 100
    warm-up iterations) is cut to a tenth of the horizon, so a short run warms up, decays and ends at min_lr as
    a long one does, only faster; a run is never refused for being short.
    """
    horizon = settings["max_iters"] if settings["lr_decay_iters"] is None else settings["lr_decay_iters"]
    warmup = settings["warmup_iters"]
    return (warmup if warmup < horizon else horizon // 10), horizon


def learning_rate(settings: dict, iteration: int) -> float:
    warmup, horizon = schedule_horizon(settings)
    return lr_schedule(iteration, lr=settings["lr"], min_lr=settings["min_lr"], warmup_iters=warmup,
                       decay_iters=horizon, kind=settings["schedule"])


def describe_schedule(settings: dict) -> str:
    """One line saying what the learning rate does over the run."""
    if settings["schedule"] == "constant":
        return f"schedule: constant learning rate {settings['lr']:.2e}"
    warmup, horizon = schedule_horizon(settings)
    cut = f" (--warmup-iters {settings['warmup_iters']} cut to a tenth of the horizon)" \
        if warmup != settings["warmup_iters"] else ""
    line = (f"schedule: linear warm-up over {warmup} iterations{cut}, cosine decay from {settings['lr']:.2e} to "
            f"{settings['min_lr']:.2e} at iteration {horizon}")
    if horizon < settings["max_iters"]:
        line += (f", then {settings['min_lr']:.2e} until iteration {settings['max_iters']} (--lr-decay-iters "
                 "moves the horizon)")
    return line


class Task:
    """What the loop needs from a data source: batches, a vocabulary, a block size, a tokenizer to save.

    source: a data.TokenDataset (windows of block_size tokens) or a data.SortingTask (its own block size).
    path: the text file the dataset came from, if any (a run's `data` setting).
    """

    def __init__(self, source: TokenDataset | SortingTask, block_size: int | None = None,
                 path: str | None = None) -> None:
        self.sorting = source if isinstance(source, SortingTask) else None
        self.dataset = None if self.sorting else source
        self.path = path
        if self.sorting:
            self.tokenizer, self.vocab_size, self.block_size = None, self.sorting.vocab_size, self.sorting.block_size
            return
        self.tokenizer, self.block_size = self.dataset.tokenizer, block_size
        # The largest id + 1 without a tokenizer (a bare token array): enough to check the model's vocabulary.
        self.vocab_size = self.dataset.vocab_size if self.tokenizer else int(self.dataset.tokens.max()) + 1
        try:  # now, not at the first batch of one split or the other
            self.dataset.check_block_size(block_size)
        except ValueError as error:
            where = f"--data {path}" if path else "the token array"
            raise TrainingError(f"{where} ({len(self.dataset.tokens):,} tokens) is too short for --block-size "
                                f"{block_size}: {error}; use a longer text or a smaller --block-size") from None

    @classmethod
    def from_text(cls, path: str | os.PathLike, tokenizer: Tokenizer | None, settings: dict, block_size: int) -> Task:
        """The text file's tokens: encoded with `tokenizer`, or else with one made from the text as
        settings["tokenizer"] says (characters, or a BPE of settings["bpe_vocab_size"] tokens)."""
        try:
            if tokenizer is None and settings["tokenizer"] == "bpe":
                tokenizer = ByteBPETokenizer.train(read_text_file(path), settings["bpe_vocab_size"])
            dataset = prepare_text_dataset(path, tokenizer)
        except (OSError, ValueError) as error:
            raise TrainingError(f"cannot read --data {path}: {error}") from None
        return cls(dataset, block_size, str(path))

    def get_batch(self, split: str, batch_size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(inputs, targets), each (batch_size, T) int64."""
        if self.sorting:
            return self.sorting.get_batch(batch_size, rng, split="train" if split == "train" else "test")
        return self.dataset.get_batch(split, batch_size, self.block_size, rng)


def token_task(tokens: object, tokenizer: Tokenizer | None, block_size: int) -> Task:
    """A Task of a token array (N,) of ints >= 0, split as text files are (the last 10% for validation)."""
    tokens = np.asarray(tokens)
    if tokens.ndim != 1 or tokens.dtype.kind not in "iu" or len(tokens) == 0:
        raise TrainingError(f"a token array must be a non-empty 1-D array of integers, got shape {tokens.shape} of "
                            f"{tokens.dtype}")
    if tokens.min() < 0:
        raise TrainingError(f"token ids must be >= 0, got {int(tokens.min())}")
    try:
        dataset = TokenDataset(tokens, tokenizer)
    except ValueError as error:
        raise TrainingError(f"the token array cannot be split: {error}") from None
    return Task(dataset, block_size)


def model_config(settings: dict, task: Task) -> TransformerConfig:
    max_span = settings["max_span"]
    if settings["adaptive_span"] and max_span is None:
        max_span = task.block_size
    try:
        return TransformerConfig(vocab_size=task.vocab_size, max_seq_len=task.block_size, max_span=max_span,
                                 **{name: settings[name] for name in MODEL_SETTINGS})
    except (TypeError, ValueError) as error:
        raise TrainingError(str(error)) from None


def estimate_loss(model: TransformerLM, task: Task, settings: dict, iteration: int,
                  ranks: parallel.Ranks | None = None) -> dict[str, float]:
    """Mean loss over eval_iters batches per split, dropout off. Batches come from a generator seeded
    by (seed, iteration), so evaluating never disturbs the training stream (resume stays exact); each rank
    scores its rows of every batch and the ranks' means are averaged."""
    ranks = ranks or parallel.world()
    model.eval()
    losses = {}
    for split in ("train", "val"):
        rng = np.random.default_rng([settings["seed"], iteration, split == "val"])
        losses[split] = ranks.mean(float(np.mean([model.loss(*ranks.batch(task, split, settings["batch_size"], rng))
                                                  for _ in range(settings["eval_iters"])])))
    model.train()
    return losses


def format_duration(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


# The first steps of a process are slower (allocations, caches, BLAS start-up): the ETA leaves them out, and
# reads the median of the most recent steps, which an evaluation or a hiccup does not move.
ETA_SKIPPED_STEPS = 3
ETA_RECENT_STEPS = 50


def estimate_remaining(step_seconds: list[float], eval_seconds: float, iteration: int, max_iters: int,
                       eval_interval: int) -> float | None:
    """Seconds the run still needs after `iteration` has stepped: the steady-state time per step (median of the
    recent steps, the first ETA_SKIPPED_STEPS of the process left out) times the steps left, plus the last
    evaluation's time times the evaluations left. None until a steady-state step has been timed."""
    steady = step_seconds[ETA_SKIPPED_STEPS:][-ETA_RECENT_STEPS:]
    if not steady:
        return None
    steps_left = max_iters - iteration - 1
    # Evaluations at every multiple of eval_interval in (iteration, max_iters], and always at max_iters.
    evals_left = max_iters // eval_interval - iteration // eval_interval + (max_iters % eval_interval != 0)
    return float(np.median(steady)) * steps_left + eval_seconds * evals_left


def format_eta(seconds: float | None) -> str:
    return "eta --" if seconds is None else f"eta {format_duration(seconds)}"


@contextlib.contextmanager
def deferred_interrupt() -> Iterator[dict]:
    """Within the block, a first Ctrl-C (SIGINT) sets state["requested"] instead of raising, so the training loop
    stops between two steps with a consistent model and optimizer to save; a second one raises KeyboardInterrupt
    at once (a checkpoint being saved then stays the previous one: saves are atomic). Signals reach only the main
    thread, so elsewhere this changes nothing."""
    state = {"requested": False}
    if threading.current_thread() is not threading.main_thread():
        yield state
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        if state["requested"]:
            raise KeyboardInterrupt
        state["requested"] = True
    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield state
    finally:
        signal.signal(signal.SIGINT, previous)


def train(model: TransformerLM, data: object, *, tokenizer: Tokenizer | str | None = None,
          out_dir: str | os.PathLike | None = None, resume: bool = False, **settings: object) -> list[dict]:
    """Train `model` in place with AdamW; return the rows it logged (those it appends to OUT_DIR/metrics.jsonl).

    data: a token array (N,) of ints (the last 10% is the validation split), a text file's path (str or Path:
        encoded with `tokenizer`, else model.tokenizer, else characters or a BPE trained on it), or a
        data.SortingTask. Windows are the model's max_seq_len long.
    tokenizer: a CharTokenizer or ByteBPETokenizer, or the setting "char" / "bpe" (train.py's --tokenizer).
    settings: train.py's flags as keywords (max_iters=200, lr=1e-3, preset="sort", ...; see python train.py
        --help), over the preset's values (default "small", "sort" for the sorting task) and checked as train.py
        checks its flags. The model's shape comes from the model.
    out_dir: where the checkpoint (OUT_DIR/checkpoint, with the tokenizer) and metrics.jsonl go; None writes
        nothing. The run holds OUT_DIR/train.lock while it trains, so a second run there is refused.
    resume: continue the run saved in out_dir exactly (weights, optimizer, generators, iteration, settings;
        `settings` may change the rest, as train.py's flags do).
    Under mpirun every rank calls train() alike and they train the model together (parallel.py: batch_size per
    rank, zero=1 shards AdamW's moments); only rank 0 prints and writes out_dir.
    Rows: {"kind": "settings", ...} first, {"kind": "train", "iter", "loss", "lr"} per step and
    {"kind": "eval", "iter", "train_loss", "val_loss", "lr", "ms_per_iter", ["spans"]} per evaluation, the last
    with "val_bits_per_byte" when the data has a tokenizer. Errors: TrainingError (a ValueError),
    CheckpointError; Ctrl-C saves the run and raises TrainingInterrupted (a KeyboardInterrupt).
    """
    if not isinstance(model, TransformerLM):
        raise TypeError(f"model must be a TransformerLM, got {type(model).__name__}")
    if resume and out_dir is None:
        raise TrainingError("resume=True needs out_dir, the directory of the run to continue")
    if isinstance(tokenizer, str):  # the setting, not a tokenizer
        tokenizer, settings["tokenizer"] = None, tokenizer
    ranks = parallel.world()
    with contextlib.ExitStack() as held:
        if not ranks.is_root:  # only rank 0 prints and writes (errors still reach stderr)
            held.enter_context(contextlib.redirect_stdout(held.enter_context(open(os.devnull, "w"))))
        if out_dir is not None:
            out_dir = Path(out_dir)
        if out_dir is not None and ranks.is_root:
            try:
                out_dir.mkdir(parents=True, exist_ok=True)
                held.enter_context(exclusive_lock(out_dir / "train.lock"))
            except LockHeld as error:
                raise TrainingError(f"--out-dir {out_dir} is in use by another training run ({error.holder}); "
                                    "wait for it to finish or choose another --out-dir") from None
            except OSError as error:
                raise TrainingError(f"cannot use --out-dir {out_dir}: {error}") from None
        saved = read_checkpoint(out_dir / "checkpoint", training=True) if resume else None  # all checked first
        if isinstance(data, SortingTask):
            data = Task(data)
        sorting = isinstance(data, Task) and data.sorting is not None
        path = data.path if isinstance(data, Task) else str(data) if isinstance(data, (str, os.PathLike)) else None
        settings = merge_settings({**settings, "data": path}, saved.state["settings"] if saved else None,
                                  model.config, sorting)
        if tokenizer is None:
            tokenizer = model.tokenizer if model.tokenizer is not None else saved.tokenizer if saved else None
        if not isinstance(data, Task):
            data = (Task.from_text(data, tokenizer, settings, model.config.max_seq_len) if path
                    else token_task(data, tokenizer, model.config.max_seq_len))
        if data.vocab_size > model.config.vocab_size or data.block_size > model.config.max_seq_len:
            raise TrainingError(f"the data needs a vocabulary of {data.vocab_size} and windows of {data.block_size}"
                                f" tokens; the model has vocab_size {model.config.vocab_size} and max_seq_len "
                                f"{model.config.max_seq_len}")
        if saved and saved.config != model.config:
            raise TrainingError(f"the model's config differs from the checkpoint's ({saved.config})")
        if model.tokenizer is None:
            model.tokenizer = data.tokenizer  # the tokens it learned: model.save keeps them with it
        with ranks.abort_on_error(passing=(TrainingInterrupted,)):  # an interrupt stops every rank together
            return training_loop(model, data, settings, out_dir, saved, ranks)


def training_loop(model: TransformerLM, task: Task, settings: dict, out_dir: Path | None,
                  saved: Checkpoint | None, ranks: parallel.Ranks) -> list[dict]:
    """train()'s loop, once everything is checked (and out_dir locked); saved: the resumed Checkpoint or None;
    ranks: the processes training together (parallel.world()), one without mpirun."""
    optimizer = ranks.optimizer(model.parameters(), settings["zero"], lr=settings["lr"],
                                betas=(settings["beta1"], settings["beta2"]), weight_decay=settings["weight_decay"])
    rng = np.random.default_rng(settings["seed"])  # training batches
    scaler = LossScaler() if model.config.precision == "fp16" else None  # fp16's dynamic loss scaling
    start, best_val_loss = 0, math.inf
    if saved:
        saved.restore(model, optimizer)
        if scaler and "loss_scaler" in saved.state:  # absent when the run was saved in another precision
            try:
                scaler.load_state_dict(saved.state["loss_scaler"])
            except ValueError as error:
                raise TrainingError(f"{out_dir / 'checkpoint' / 'state.json'}: {error}") from None
        rng.bit_generator.state = saved.state["data_rng"]
        start, best_val_loss = saved.state["iteration"], saved.state["best_val_loss"]
        if start > settings["max_iters"]:
            raise TrainingError(f"the run in {out_dir} is at iteration {start}, past --max-iters "
                                f"{settings['max_iters']}; pass a larger --max-iters to continue it")
        print(f"resuming from iteration {start} (best val loss {best_val_loss:.4f})")
    if ranks.size > 1:
        try:
            ranks.check_agreement(run_description(model, task, settings, rng))
        except ValueError as error:
            raise TrainingError(str(error)) from None
        ranks.broadcast_parameters(model.parameters())
        if ranks.rank > 0:  # dropout masks of its own; rank 0 keeps the one-process stream (and saves it)
            model.rng.bit_generator.state = np.random.default_rng([settings["seed"], ranks.rank]).bit_generator.state
        print(f"data parallel over {ranks.size} ranks: {settings['batch_size']} sequences per rank and micro-batch"
              + (", AdamW's moments sharded over the ranks (--zero 1)" if settings["zero"] else ""))
    print(f"model: {model.num_parameters():,} parameters, {model.config}")
    print(describe_schedule(settings))
    checkpoint_dir = out_dir / "checkpoint" if out_dir is not None else None
    tokens_per_iter = settings["batch_size"] * settings["grad_accum_steps"] * ranks.size * task.block_size
    history = []

    def log(row: dict) -> None:
        history.append(row)
        if out_dir is None or not ranks.is_root:
            return
        try:
            with open(out_dir / "metrics.jsonl", "a") as metrics:
                metrics.write(json.dumps(row) + "\n")
        except OSError as error:
            raise TrainingError(f"cannot write {out_dir / 'metrics.jsonl'}: {error}") from None

    def save(iteration: int) -> None:
        if checkpoint_dir is not None:
            full_optimizer = ranks.full_optimizer(optimizer)  # under --zero 1 every rank sends its shard
            if ranks.is_root:
                state = dict(iteration=iteration, best_val_loss=best_val_loss, data_rng=rng.bit_generator.state,
                             settings=settings)
                if scaler:
                    state["loss_scaler"] = scaler.state_dict()
                save_checkpoint(checkpoint_dir, model, full_optimizer, task.tokenizer, state)

    log(dict(kind="settings", iter=start, resumed=saved is not None, preset=settings["preset"],
             tokenizer=None if task.sorting else settings["tokenizer"],
             data=Path(task.path).name if task.path else None, config=dataclasses.asdict(model.config),
             parameters=model.num_parameters(), tokens_per_iter=tokens_per_iter, max_iters=settings["max_iters"],
             lr=settings["lr"]))
    model.train()
    run_start, step_seconds, eval_seconds = time.perf_counter(), [], 0.0
    with deferred_interrupt() as interrupt:
        for iteration in range(start, settings["max_iters"] + 1):
            if ranks.any(interrupt["requested"]):
                save(iteration)
                ranks.barrier()  # the save is complete before any rank leaves (and perhaps aborts the job)
                raise TrainingInterrupted(iteration, checkpoint_dir, history)
            lr = learning_rate(settings, iteration)
            is_last = iteration == settings["max_iters"]
            if iteration % settings["eval_interval"] == 0 or is_last:
                eval_started = time.perf_counter()
                row = evaluate_row(model, task, settings, iteration, lr, step_seconds, ranks, final=is_last)
                eval_seconds = time.perf_counter() - eval_started
                log(row)
                if row["val_loss"] < best_val_loss or is_last:
                    best_val_loss = min(best_val_loss, row["val_loss"])
                    if iteration > start or is_last:
                        save(iteration)
            if is_last:
                break

            started = time.perf_counter()
            with np.errstate(over="ignore", invalid="ignore"):  # a diverging run is caught just below
                loss, grads = accumulate_step(model, task, settings, rng, ranks, scaler.scale if scaler else 1.0)
                # fp16: an overflow on any rank skips the step on every rank, and the scale halves
                finite = not ranks.any(not scaler.unscale(grads)) if scaler else True
            loss = ranks.mean(loss)
            if not math.isfinite(loss):
                kept = f"The last good checkpoint in {checkpoint_dir} is intact." if checkpoint_dir else ""
                raise TrainingError(f"loss became {loss} at iteration {iteration}; stopping. {kept}".strip())
            if finite:
                ranks.step(optimizer, grads, lr, settings["grad_clip"])  # averaged over the ranks, clipped, applied
                model.after_step()  # e.g. adaptive spans clamped back into [0, max_span]
            step_seconds.append(time.perf_counter() - started)
            row = dict(kind="train", iter=iteration, loss=loss, lr=lr)
            if scaler:
                row.update(loss_scale=scaler.scale, skipped=not finite)  # the scale this step used
                scaler.update(finite)
            log(row)

            if iteration % settings["log_interval"] == 0:
                seconds = step_seconds[-1]
                eta = estimate_remaining(step_seconds, eval_seconds, iteration, settings["max_iters"],
                                         settings["eval_interval"])
                print(f"iter {iteration}: loss {loss:.4f}, lr {lr:.2e}, time {1000 * seconds:.1f} ms, "
                      f"tokens/s {tokens_per_iter / seconds:,.0f}  "
                      f"[{100 * (iteration + 1) / settings['max_iters']:3.0f}%, {format_eta(eta)}]", flush=True)
    where = f"; checkpoint in {checkpoint_dir}" if checkpoint_dir else ""
    print(f"done: {settings['max_iters'] - start} iterations in {format_duration(time.perf_counter() - run_start)}"
          f", median {1000 * float(np.median(step_seconds or [0])):.1f} ms/iter{where}")
    return history


def evaluate_row(model: TransformerLM, task: Task, settings: dict, iteration: int, lr: float,
                 step_seconds: list[float], ranks: parallel.Ranks, final: bool) -> dict:
    """The metrics row of an evaluation (printed too); the final one adds the validation split's bits per byte
    (computed by rank 0 alone: only its row is logged)."""
    losses = estimate_loss(model, task, settings, iteration, ranks)
    line = f"step {iteration}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}"
    row = dict(kind="eval", iter=iteration, train_loss=losses["train"], val_loss=losses["val"], lr=lr,
               ms_per_iter=1000 * float(np.median(step_seconds)) if step_seconds else None)
    if final and ranks.is_root and task.tokenizer is not None and task.block_size >= 2:
        # Every token of the split scored once, in windows of the training context (evaluation.evaluate).
        result = evaluation.evaluate(model, task.dataset.split("val"), task.tokenizer, context=task.block_size)
        row["val_bits_per_byte"] = result.bits_per_byte
        line += f", val bits per byte {result.bits_per_byte:.4f} (perplexity {result.perplexity:.2f})"
    print(line, flush=True)
    spans = span_summary(model)
    if spans:
        row["spans"] = spans
        config = model.config
        for layer, (layer_spans, attended) in enumerate(zip(spans, effective_spans(model))):
            print(f"  layer {layer} spans: " + " ".join(f"{keys:.1f}" for keys in attended) + " keys attended (learned "
                  + " ".join(f"{span:.1f}" for span in layer_spans)
                  + f" + the {config.span_ramp}-token ramp, at most {config.max_span})")
    return row


def accumulate_step(model: TransformerLM, task: Task, settings: dict, rng: np.random.Generator,
                    ranks: parallel.Ranks | None = None, loss_scale: float = 1.0
                    ) -> tuple[float, dict[str, np.ndarray]]:
    """Mean loss and gradients over grad_accum_steps micro-batches (copied: backward reuses its buffers), of this
    rank's rows; under MPI the gradients are summed into the ranks' flat buffer (Ranks.gradient_buffers).
    loss_scale: the gradients are those of loss_scale * the loss (fp16's loss scaling; the loss is not scaled)."""
    ranks = ranks or parallel.world()
    steps = settings["grad_accum_steps"]
    total_loss, total_grads = 0.0, ranks.gradient_buffers(model.parameters())
    for _ in range(steps):
        total_loss += model.loss(*ranks.batch(task, "train", settings["batch_size"], rng)) / steps
        total_grads = accumulate_grads(total_grads, model.backward(loss_scale), scale=1.0 / steps)
    return total_loss, total_grads


def run_description(model: TransformerLM, task: Task, settings: dict, rng: np.random.Generator) -> bytes:
    """What every rank of a run must agree on: settings, model config, the batch generator's state and the tokens
    (hashed by parallel.Ranks.check_agreement)."""
    tokens = np.ascontiguousarray(task.dataset.tokens) if task.dataset is not None else np.zeros(0)
    text = json.dumps([settings, dataclasses.asdict(model.config), rng.bit_generator.state, str(tokens.dtype)],
                      sort_keys=True, default=str)
    return text.encode() + hashlib.sha256(memoryview(tokens).cast("B")).digest()


def report(model: TransformerLM, task: Task, settings: dict) -> float | None:
    """What the model learned: held-out accuracy for the sorting task (returned), a text sample otherwise."""
    model.eval()
    if task.sorting:
        def predict(problems: np.ndarray) -> np.ndarray:
            return model.generate(problems, task.sorting.length, temperature=0)[:, task.sorting.length:]
        accuracy = task.sorting.exact_match_accuracy(predict, 1000, np.random.default_rng(settings["seed"]))
        verdict = "reached" if accuracy >= 0.99 else "NOT reached"
        print(f"exact-match accuracy on 1000 held-out sorting problems: {100 * accuracy:.1f}% "
              f"(target >= 99%: {verdict})")
        return accuracy
    if settings["sample_tokens"] > 0:
        ids = model.generate(start_ids(task.tokenizer, ""), settings["sample_tokens"], temperature=0.8, top_k=40,
                             seed=settings["seed"], crop_context=True)
        print("sample:\n" + task.tokenizer.decode(ids.tolist()))
    return None


def plot(directory: str | os.PathLike) -> None:
    """Draw DIR/metrics.jsonl into DIR/loss.png: the training loss, the evaluations, the learning rate and any
    resumes, titled with the run's settings (visualize.loss_figure)."""
    import visualize  # here, not at the top: only --plot draws
    directory = Path(directory)
    rows = visualize.read_metrics(directory / "metrics.jsonl")
    visualize.save(visualize.loss_figure(rows, fallback_title=f"training run {directory.name}"), directory / "loss.png")
    print(f"wrote {directory / 'loss.png'}")


def check_out_dir(out_dir: str | os.PathLike) -> None:
    """Refuse an --out-dir that is, or lies under, something other than a directory, before any work."""
    for path in (Path(out_dir), *Path(out_dir).parents):
        if os.path.lexists(path):
            if not path.is_dir():
                raise SystemExit(f"error: --out-dir {out_dir}: {path} exists and is not a directory")
            return


def saved_settings(out_dir: str | os.PathLike) -> dict:
    """The settings dict that the run in OUT_DIR/checkpoint saved in its state.json (of the copy every reader
    reads, see checkpoint.resolve_directory)."""
    try:
        return load_state(Path(out_dir) / "checkpoint", training=True)["settings"]
    except CheckpointError as error:
        raise SystemExit(f"error: --resume found no readable run in {out_dir}/checkpoint ({error})") from None


def run(settings: dict, out_dir: str | os.PathLike, resume: bool = False, device: str = "cpu"
        ) -> tuple[TransformerLM, Task]:
    """What train.py does with its resolved settings: read the data, build the model, train() it. Errors exit
    with one `error: ...` line; Ctrl-C (TrainingInterrupted) is left to the caller."""
    try:
        tokenizer = load_tokenizer(Path(out_dir) / "checkpoint") if resume else None  # train() reads the rest
        task = (Task(SortingTask()) if settings["data"] is None
                else Task.from_text(settings["data"], tokenizer, settings, settings["block_size"]))
        model = TransformerLM(model_config(settings, task), seed=settings["seed"]).to(device)
        model.tokenizer = task.tokenizer
        train(model, task, out_dir=out_dir, resume=resume,
              **{name: value for name, value in settings.items() if name not in (*MODEL_KEYS, "data")})
    except (TrainingError, CheckpointError, DeviceError) as error:
        raise SystemExit(f"error: {error}") from None
    except MemoryError:
        raise SystemExit("error: out of memory: the model or the batch is too large for this machine (see "
                         "--d-model, --n-layers, --block-size, --batch-size)") from None
    return model, task


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.plot is not None:
        return plot(args.plot)
    with parallel.world().abort_on_error():  # under mpirun: one rank's failure ends the job, with its message
        train_command(args)


def train_command(args: argparse.Namespace) -> None:
    check_out_dir(args.out_dir)
    settings = resolve_settings(args, saved_settings(args.out_dir) if args.resume else None)
    try:
        model, task = run(settings, args.out_dir, resume=args.resume, device=args.device)
    except TrainingInterrupted as interrupted:
        where = (f"saved the run at iteration {interrupted.iteration} in {interrupted.checkpoint}; continue it with: "
                 f"python train.py --out-dir {args.out_dir} --resume")
        print(f"interrupted: {where}", file=sys.stderr)
        raise SystemExit(130) from None
    except KeyboardInterrupt:  # before the loop, or a second Ctrl-C while the first one's save was being written
        print("interrupted: stopped without saving; the last complete checkpoint, if any, is kept", file=sys.stderr)
        raise SystemExit(130) from None
    if parallel.world().is_root:
        report(model, task, settings)


if __name__ == "__main__":
    sys.exit(main())
