"""Train a TransformerLM with AdamW: on a text file (character-level), or on a built-in sorting task.

    python train.py                                   # the synthetic sorting task, about a minute
    python train.py --data input.txt --preset shakespeare-char-cpu --out-dir out-shakespeare
    python train.py --out-dir out-shakespeare --resume --max-iters 3000
    python train.py --plot out-shakespeare            # loss curves -> out-shakespeare/loss.png

Logs follow nanoGPT: a line every --log-interval iterations, the mean train and val loss over
--eval-iters batches at iteration 0, every --eval-interval and at the end. Each evaluation is also
appended to OUT_DIR/metrics.jsonl; the checkpoint (OUT_DIR/checkpoint, see checkpoint.py) is saved
when the val loss improves and at the end.
"""
import argparse
import contextlib
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

from atomic_files import LockHeld, exclusive_lock
from checkpoint import CheckpointError, load_state, read_checkpoint, save_checkpoint
from data import SortingTask, prepare_text_dataset, read_text_file
from generate import start_ids
from optim import AdamW, accumulate_grads, clip_grad_norm, lr_schedule
from sparse_attention import clamp_spans, span_summary
from tokenizer import ByteBPETokenizer
from transformer_lm import CHOICES as MODEL_CHOICES
from transformer_lm import TransformerConfig, TransformerLM

# Training presets: model shape and optimization settings. Command-line flags override any field.
PRESETS = {
    # The default without --data: sort 6 digits from {0, 1, 2}, >= 99% held-out accuracy in ~1 minute.
    "sort": dict(n_layers=3, n_heads=4, d_model=48, dropout=0.0, batch_size=64, max_iters=1000, lr=5e-3,
                 min_lr=5e-4, warmup_iters=50, weight_decay=0.1, beta2=0.99, grad_clip=1.0, eval_interval=250,
                 eval_iters=10, log_interval=50),
    # A small character-level model for any text file, a few minutes on a laptop CPU.
    "small": dict(n_layers=2, n_heads=4, d_model=64, block_size=64, dropout=0.0, batch_size=16, max_iters=1000,
                  lr=1e-3, min_lr=1e-4, warmup_iters=50, weight_decay=0.1, beta2=0.99, grad_clip=1.0,
                  eval_interval=200, eval_iters=20, log_interval=20),
    # nanoGPT's CPU quick start for tiny Shakespeare (config/train_shakespeare_char.py + its README flags).
    "shakespeare-char-cpu": dict(n_layers=4, n_heads=4, d_model=128, block_size=64, dropout=0.0, batch_size=12,
                                 max_iters=2000, lr=1e-3, min_lr=1e-4, warmup_iters=100, weight_decay=0.1,
                                 beta2=0.99, grad_clip=1.0, eval_interval=250, eval_iters=20, log_interval=10),
}
# Settings no preset changes: GPT-2's architecture and initialization, as nanoGPT uses.
COMMON = dict(positional="learned", norm_first=True, activation="gelu_tanh", init="gpt2", dtype="float32",
              beta1=0.9, grad_accum_steps=1, seed=1337, lr_decay_iters=None, schedule="cosine", sample_tokens=200,
              tokenizer="char", bpe_vocab_size=512, attention="full", window=None, stride=None, summary=None,
              adaptive_span=False, max_span=None, span_ramp=32, span_loss_coefficient=2e-6)


# The values of the settings that are names (the model's from TransformerConfig): --help lists them and
# resolve_settings checks a resumed run's saved values against them.
CHOICES = dict(MODEL_CHOICES, preset=tuple(sorted(PRESETS)), tokenizer=("char", "bpe"), schedule=("cosine", "constant"))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--data", help="UTF-8 text file to train on (character level); default: the synthetic sorting task")
    add("--preset", choices=CHOICES["preset"], help="default: 'small' with --data, 'sort' without")
    add("--tokenizer", choices=CHOICES["tokenizer"], help="characters (default), or a byte-level BPE trained on --data")
    add("--bpe-vocab-size", type=int, help="vocabulary size of the BPE tokenizer (default 512)")
    add("--out-dir", default="out", help="where the checkpoint, metrics.jsonl and loss.png go")
    add("--resume", action="store_true", help="continue the run saved in --out-dir exactly where it stopped")
    add("--plot", metavar="DIR", help="only draw DIR/metrics.jsonl to DIR/loss.png (needs matplotlib)")
    add("--max-iters", type=int)
    add("--batch-size", type=int)
    add("--block-size", type=int, help="context length T (the model's max_seq_len)")
    add("--n-layers", type=int)
    add("--n-heads", type=int)
    add("--d-model", type=int)
    add("--dropout", type=float)
    add("--positional", choices=CHOICES["positional"])
    add("--norm-first", action=argparse.BooleanOptionalAction, default=None, help="pre-LN (default) or post-LN")
    add("--activation", choices=CHOICES["activation"])
    add("--init", choices=CHOICES["init"])
    add("--attention", choices=CHOICES["attention"], help="attention pattern (default full)")
    add("--window", type=int, help="keys each query sees with --attention sliding (itself included)")
    add("--stride", type=int, help="block length of --attention strided / fixed")
    add("--summary", type=int, help="summary positions per block with --attention fixed")
    add("--adaptive-span", action=argparse.BooleanOptionalAction, default=None,
        help="each head learns its attention span (Sukhbaatar et al. 2019); spans are logged at each eval")
    add("--max-span", type=int, help="the longest span an adaptive head may learn (default: --block-size)")
    add("--span-ramp", type=int, help="length of the soft mask's ramp (default 32)")
    add("--span-loss-coefficient", type=float, help="L1 penalty per token of mean span (default 2e-6)")
    add("--dtype", choices=CHOICES["dtype"])
    add("--lr", type=float, help="peak learning rate")
    add("--min-lr", type=float, help="learning rate at the end of the cosine decay")
    add("--warmup-iters", type=int)
    add("--lr-decay-iters", type=int, help="iteration where the cosine reaches min-lr (default: max-iters)")
    add("--schedule", choices=CHOICES["schedule"])
    add("--weight-decay", type=float)
    add("--beta1", type=float)
    add("--beta2", type=float)
    add("--grad-clip", type=float, help="global gradient-norm clip (0 disables)")
    add("--grad-accum-steps", type=int, help="micro-batches per optimizer step")
    add("--eval-interval", type=int)
    add("--eval-iters", type=int)
    add("--log-interval", type=int)
    add("--sample-tokens", type=int, help="characters to generate after training (0: none)")
    add("--seed", type=int)
    return parser.parse_args(argv)


def integer_rule(minimum, maximum=None, unset_means=None):
    """A settings rule: value -> what it should be if it is not an int in [minimum, maximum], else None.
    unset_means: what None stands for, where a setting may be left unset."""
    def problem(value):
        if value is None and unset_means:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            return "an integer" + (f" (or unset: {unset_means})" if unset_means else "")
        if value < minimum or (maximum is not None and value > maximum):
            return f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        return None
    return problem


def number_rule(minimum, below=math.inf):
    """A settings rule for a finite number in [minimum, below). (Every comparison with NaN is False, so a
    test such as `grad_clip > 0` would quietly read NaN as 'off'; here NaN and the infinities are refused.)"""
    def problem(value):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return "a finite number"
        if not minimum <= value < below:
            return f">= {minimum}" if below == math.inf else f"in [{minimum}, {below})"
        return None
    return problem


def choice_rule(choices):
    return lambda value: None if isinstance(value, str) and value in choices else f"one of {list(choices)}"


# What every setting may be. Each value, whether from a preset, a resumed run's state.json or a flag, is
# checked here once, before anything uses it: a bad value is an error naming its flag, never a default.
SETTING_RULES = {
    **{name: integer_rule(1) for name in ("max_iters", "batch_size", "block_size", "n_layers", "n_heads", "d_model",
                                          "eval_interval", "eval_iters", "log_interval", "grad_accum_steps",
                                          "span_ramp")},
    **{name: integer_rule(0) for name in ("warmup_iters", "sample_tokens", "seed")},
    "lr_decay_iters": integer_rule(1, unset_means="--max-iters"),
    "max_span": integer_rule(1, unset_means="--block-size"),
    **{name: integer_rule(1, unset_means="the pattern does not use it") for name in ("window", "stride", "summary")},
    # 256 byte tokens and <|endoftext|> at least; token files hold ids as uint16.
    "bpe_vocab_size": integer_rule(257, 65536),
    **{name: number_rule(0) for name in ("lr", "min_lr", "weight_decay", "grad_clip", "span_loss_coefficient")},
    **{name: number_rule(0, below=1) for name in ("dropout", "beta1", "beta2")},
    **{name: choice_rule(choices) for name, choices in CHOICES.items()},
    **{name: lambda value: None if isinstance(value, bool) else "true or false"
       for name in ("norm_first", "adaptive_span")},
    "data": lambda value: None if value is None or (isinstance(value, str) and value) else "a text file's path",
    "out_dir": lambda value: None if isinstance(value, str) and value else "a directory's path",
}
# A resumed run keeps these (its tokens and its defaults); to change them, start a new run.
KEPT_ON_RESUME = ("preset", "tokenizer", "bpe_vocab_size")
# Flags that mean something only together with a setting; given without it they would be silently ignored.
ONLY_WITH = {"bpe_vocab_size": ("tokenizer", "bpe"), "max_span": ("adaptive_span", True),
             "span_ramp": ("adaptive_span", True), "span_loss_coefficient": ("adaptive_span", True),
             "min_lr": ("schedule", "cosine"), "warmup_iters": ("schedule", "cosine"),
             "lr_decay_iters": ("schedule", "cosine")}
# The sorting task has its own block size and tokens, and reports accuracy instead of a sample.
TEXT_ONLY = ("block_size", "tokenizer", "bpe_vocab_size", "sample_tokens")


def option(name):
    return "--" + name.replace("_", "-")


def flag(name, value):
    """How a setting reads on the command line: --tokenizer bpe, --adaptive-span, --no-adaptive-span."""
    if isinstance(value, bool):
        return option(name) if value else "--no-" + option(name)[2:]
    return f"{option(name)} {value}"


def check_setting(name, value, source=""):
    expected = SETTING_RULES[name](value)
    if expected:
        raise SystemExit(f"error: {option(name)} must be {expected}, got {value!r}{source}")


def resolve_settings(args, saved=None):
    """preset < saved run (when resuming) < flags given on the command line; every value checked."""
    given = {key: value for key, value in vars(args).items() if value is not None and key not in ("resume", "plot")}
    saved = saved or {}
    unknown = sorted(set(saved) - set(SETTING_RULES))
    if unknown:
        raise SystemExit(f"error: the resumed run's settings have unknown entries {unknown}")

    def source(name):
        return " (saved in the resumed run's state.json)" if name in saved and name not in given else ""

    data = given.get("data", saved.get("data"))
    check_setting("data", data, source("data"))
    preset = given.get("preset", saved.get("preset"))
    if preset is None:
        preset = "sort" if data is None else "small"
    check_setting("preset", preset, source("preset"))
    settings = {**COMMON, **PRESETS[preset], **saved, **given, "preset": preset, "data": data}
    for name, value in settings.items():
        check_setting(name, value, source(name))
    for name, (needed, needed_value) in ONLY_WITH.items():
        if name in given and settings[needed] != needed_value:
            raise SystemExit(f"error: {flag(name, given[name])} is only used with {flag(needed, needed_value)}, "
                             f"but the run has {flag(needed, settings[needed])}")
    if data is None:
        for name in TEXT_ONLY:
            if name in given:
                raise SystemExit(f"error: {flag(name, given[name])} is only used with --data (the sorting task "
                                 "has its own tokens and block size)")
    for name in KEPT_ON_RESUME:
        if name in given and name in saved and given[name] != saved[name]:
            raise SystemExit(f"error: {flag(name, given[name])}: the resumed run has {flag(name, saved[name])}, "
                             f"which a resumed run keeps; start a new run in another --out-dir to change it")
    try:
        learning_rate(settings, 0)
    except ValueError as error:
        raise SystemExit(f"error: {error} (see --lr, --min-lr, --warmup-iters, --lr-decay-iters)") from None
    return settings


def learning_rate(settings, iteration):
    decay_iters = settings["max_iters"] if settings["lr_decay_iters"] is None else settings["lr_decay_iters"]
    return lr_schedule(iteration, lr=settings["lr"], min_lr=settings["min_lr"], warmup_iters=settings["warmup_iters"],
                       decay_iters=decay_iters, kind=settings["schedule"])


class Task:
    """What the loop needs from either data source: batches, a vocabulary, a tokenizer to save.
    tokenizer: the one a resumed run saved; None makes one from the text as settings["tokenizer"] says."""

    def __init__(self, settings, tokenizer=None):
        self.sorting = SortingTask() if settings["data"] is None else None
        if self.sorting:
            self.tokenizer, self.vocab_size, self.block_size = None, self.sorting.vocab_size, self.sorting.block_size
        else:
            data = settings["data"]
            try:
                if tokenizer is None and settings["tokenizer"] == "bpe":
                    tokenizer = ByteBPETokenizer.train(read_text_file(data), settings["bpe_vocab_size"])
                self.dataset = prepare_text_dataset(data, tokenizer)
            except (OSError, ValueError) as error:
                raise SystemExit(f"error: cannot read --data {data}: {error}") from None
            self.tokenizer, self.vocab_size = self.dataset.tokenizer, self.dataset.vocab_size
            self.block_size = settings["block_size"]
            try:  # now, not at the first batch of one split or the other
                self.dataset.check_block_size(self.block_size)
            except ValueError as error:
                raise SystemExit(f"error: --data {data} ({len(self.dataset.tokens):,} tokens) is too short for "
                                 f"--block-size {self.block_size}: {error}; use a longer text or a smaller "
                                 "--block-size") from None

    def get_batch(self, split, batch_size, rng):
        if self.sorting:
            return self.sorting.get_batch(batch_size, rng, split="train" if split == "train" else "test")
        return self.dataset.get_batch(split, batch_size, self.block_size, rng)


MODEL_SETTINGS = ("d_model", "n_heads", "n_layers", "dropout", "positional", "norm_first", "activation", "init",
                  "dtype", "attention", "window", "stride", "summary", "adaptive_span", "span_ramp",
                  "span_loss_coefficient")


def model_config(settings, task):
    max_span = settings["max_span"]
    if settings["adaptive_span"] and max_span is None:
        max_span = task.block_size
    try:
        return TransformerConfig(vocab_size=task.vocab_size, max_seq_len=task.block_size, max_span=max_span,
                                 **{name: settings[name] for name in MODEL_SETTINGS})
    except (TypeError, ValueError) as error:
        raise SystemExit(f"error: {error}") from None


def estimate_loss(model, task, settings, iteration):
    """Mean loss over eval_iters batches per split, dropout off. Batches come from a generator seeded
    by (seed, iteration), so evaluating never disturbs the training stream (resume stays exact)."""
    model.eval()
    losses = {}
    for split in ("train", "val"):
        rng = np.random.default_rng([settings["seed"], iteration, split == "val"])
        losses[split] = float(np.mean([model.loss(*task.get_batch(split, settings["batch_size"], rng))
                                       for _ in range(settings["eval_iters"])]))
    model.train()
    return losses


def format_duration(seconds):
    minutes, seconds = divmod(int(seconds), 60)
    return f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


def train(settings, out_dir, resume=False):
    """Train as `settings` say, logging and checkpointing into out_dir; resume continues the run saved there.
    The run holds out_dir's lock (OUT_DIR/train.lock) until it returns, so a second run on it is refused."""
    out_dir = Path(out_dir)
    with contextlib.ExitStack() as held:
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
            held.enter_context(exclusive_lock(out_dir / "train.lock"))
        except LockHeld as error:
            raise SystemExit(f"error: --out-dir {out_dir} is in use by another training run ({error.holder}); "
                             "wait for it to finish or choose another --out-dir") from None
        except OSError as error:
            raise SystemExit(f"error: cannot use --out-dir {out_dir}: {error}") from None
        return run_training(settings, out_dir, resume)


def run_training(settings, out_dir, resume):
    """train()'s body, run while it holds out_dir's lock."""
    checkpoint_dir = out_dir / "checkpoint"
    saved = read_checkpoint(checkpoint_dir, training=True) if resume else None  # all of it checked before use
    task = Task(settings, saved.tokenizer if resume else None)
    config = model_config(settings, task)
    if resume and saved.config != config:
        raise SystemExit(f"error: the model settings differ from the checkpoint's ({saved.config})")
    model = TransformerLM(config, seed=settings["seed"])
    optimizer = AdamW(model.parameters(), lr=settings["lr"], betas=(settings["beta1"], settings["beta2"]),
                      weight_decay=settings["weight_decay"])
    rng = np.random.default_rng(settings["seed"])  # training batches
    start, best_val_loss = 0, math.inf
    if resume:
        saved.restore(model, optimizer)
        rng.bit_generator.state = saved.state["data_rng"]
        start, best_val_loss = saved.state["iteration"], saved.state["best_val_loss"]
        if start > settings["max_iters"]:
            raise SystemExit(f"error: the run in {out_dir} is at iteration {start}, past --max-iters "
                             f"{settings['max_iters']}; pass a larger --max-iters to continue it")
        print(f"resuming from iteration {start} (best val loss {best_val_loss:.4f})")
    print(f"model: {model.num_parameters():,} parameters, {config}")

    def save(iteration):
        state = dict(iteration=iteration, best_val_loss=best_val_loss, data_rng=rng.bit_generator.state,
                     settings=settings)
        save_checkpoint(checkpoint_dir, model, optimizer, task.tokenizer, state)

    tokens_per_iter = settings["batch_size"] * settings["grad_accum_steps"] * task.block_size
    model.train()
    run_start, iteration_times = time.perf_counter(), []
    for iteration in range(start, settings["max_iters"] + 1):
        lr = learning_rate(settings, iteration)
        is_last = iteration == settings["max_iters"]
        if iteration % settings["eval_interval"] == 0 or is_last:
            losses = estimate_loss(model, task, settings, iteration)
            print(f"step {iteration}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}")
            ms_per_iter = 1000 * float(np.median(iteration_times)) if iteration_times else None
            row = dict(iter=iteration, train_loss=losses["train"], val_loss=losses["val"], lr=lr,
                       ms_per_iter=ms_per_iter)
            spans = span_summary(model)
            if spans:
                row["spans"] = spans
                for layer, layer_spans in enumerate(spans):
                    print(f"  layer {layer} spans: " + " ".join(f"{span:.1f}" for span in layer_spans))
            try:
                with open(out_dir / "metrics.jsonl", "a") as metrics:
                    metrics.write(json.dumps(row) + "\n")
            except OSError as error:
                raise SystemExit(f"error: cannot write {out_dir / 'metrics.jsonl'}: {error}") from None
            if losses["val"] < best_val_loss or is_last:
                best_val_loss = min(best_val_loss, losses["val"])
                if iteration > start or is_last:
                    save(iteration)
        if is_last:
            break

        started = time.perf_counter()
        with np.errstate(over="ignore", invalid="ignore"):  # a diverging run is caught just below
            loss, grads = accumulate_step(model, task, settings, rng)
        if not math.isfinite(loss):
            raise SystemExit(f"error: loss became {loss} at iteration {iteration}; stopping. The last good "
                             f"checkpoint in {checkpoint_dir} is intact.")
        if settings["grad_clip"] > 0:
            clip_grad_norm(grads, settings["grad_clip"])
        optimizer.step(grads, lr=lr)
        clamp_spans(model)  # adaptive spans stay within [0, max_span] (a no-op without them)
        iteration_times.append(time.perf_counter() - started)

        done = iteration + 1 - start
        if iteration % settings["log_interval"] == 0:
            seconds = iteration_times[-1]
            eta = (time.perf_counter() - run_start) / done * (settings["max_iters"] - iteration - 1)
            print(f"iter {iteration}: loss {loss:.4f}, lr {lr:.2e}, time {1000 * seconds:.1f} ms, "
                  f"tokens/s {tokens_per_iter / seconds:,.0f}  "
                  f"[{100 * (iteration + 1) / settings['max_iters']:3.0f}%, eta {format_duration(eta)}]")
    print(f"done: {settings['max_iters'] - start} iterations in {format_duration(time.perf_counter() - run_start)}"
          f", median {1000 * float(np.median(iteration_times or [0])):.1f} ms/iter; checkpoint in {checkpoint_dir}")
    return model, task


def accumulate_step(model, task, settings, rng):
    """Mean loss and gradients over grad_accum_steps micro-batches (copied: backward reuses its buffers)."""
    steps = settings["grad_accum_steps"]
    total_loss, total_grads = 0.0, None
    for _ in range(steps):
        total_loss += model.loss(*task.get_batch("train", settings["batch_size"], rng)) / steps
        total_grads = accumulate_grads(total_grads, model.backward(), scale=1.0 / steps)
    return total_loss, total_grads


def report(model, task, settings):
    """What the model learned: held-out accuracy for the sorting task, a text sample otherwise."""
    model.eval()
    if task.sorting:
        def predict(problems):
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


def read_metrics(path):
    """The rows of a metrics.jsonl, each a dict with numbers under "iter", "train_loss" and "val_loss".

    A bad row is an error naming its line, except an unfinished last line (no newline after it: a run
    killed while writing it), which is skipped with a warning on stderr so the rest can still be drawn.
    """
    try:
        lines = path.read_bytes().split(b"\n")  # after the last newline: b"" or the unfinished row
    except OSError as error:
        raise SystemExit(f"error: cannot read {path}: {error}") from None
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line.decode("utf-8"))
            problem = metrics_row_problem(row)
        except UnicodeDecodeError:
            problem = "is not UTF-8 text"
        except (ValueError, RecursionError) as error:
            problem = f"is not valid JSON ({error})"
        if problem and number == len(lines):
            print(f"warning: {path}: skipped the unfinished last line {number}, which {problem}", file=sys.stderr)
        elif problem:
            raise SystemExit(f"error: {path}: line {number} {problem}")
        else:
            rows.append(row)
    if not rows:
        raise SystemExit(f"error: {path} has no rows to plot")
    return rows


def metrics_row_problem(row):
    """What is wrong with one parsed metrics row, or None."""
    if not isinstance(row, dict):
        return f"is a JSON {type(row).__name__}, expected an object with iter, train_loss and val_loss"
    for key in ("iter", "train_loss", "val_loss"):
        if key not in row:
            return f"has no {key!r}"
        if isinstance(row[key], bool) or not isinstance(row[key], (int, float)):
            return f"has {key} = {row[key]!r}, expected a number"
    return None


def plot(directory):
    """Draw the train and val loss curves of DIR/metrics.jsonl into DIR/loss.png."""
    directory = Path(directory)
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("error: --plot needs matplotlib, an optional dependency: pip install matplotlib") from None
    rows = read_metrics(directory / "metrics.jsonl")
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for key in ("train_loss", "val_loss"):
        axes.plot([row["iter"] for row in rows], [row[key] for row in rows], marker="o", label=key.replace("_", " "))
    axes.set(xlabel="iteration", ylabel="cross-entropy loss", title=f"training run {directory.name}")
    axes.legend()
    axes.grid(alpha=0.3)
    figure.tight_layout()
    try:
        figure.savefig(directory / "loss.png", dpi=100)
    except OSError as error:
        raise SystemExit(f"error: cannot write {directory / 'loss.png'}: {error}") from None
    finally:
        plt.close(figure)
    print(f"wrote {directory / 'loss.png'}")


def check_out_dir(out_dir):
    """Refuse an --out-dir that is, or lies under, something other than a directory, before any work."""
    for path in (Path(out_dir), *Path(out_dir).parents):
        if os.path.lexists(path):
            if not path.is_dir():
                raise SystemExit(f"error: --out-dir {out_dir}: {path} exists and is not a directory")
            return


def saved_settings(out_dir):
    """The settings dict that the run in OUT_DIR/checkpoint saved in its state.json (of the copy every reader
    reads, see checkpoint.resolve_directory)."""
    try:
        return load_state(Path(out_dir) / "checkpoint", training=True)["settings"]
    except CheckpointError as error:
        raise SystemExit(f"error: --resume found no readable run in {out_dir}/checkpoint ({error})") from None


def main(argv=None):
    args = parse_args(argv)
    if args.plot is not None:
        return plot(args.plot)
    check_out_dir(args.out_dir)
    settings = resolve_settings(args, saved_settings(args.out_dir) if args.resume else None)
    try:
        model, task = train(settings, args.out_dir, resume=args.resume)
    except CheckpointError as error:
        raise SystemExit(f"error: {error}") from None
    except MemoryError:
        raise SystemExit("error: out of memory: the model or the batch is too large for this machine (see "
                         "--d-model, --n-layers, --block-size, --batch-size)") from None
    report(model, task, settings)


if __name__ == "__main__":
    sys.exit(main())
