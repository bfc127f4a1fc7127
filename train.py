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
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from checkpoint import CheckpointError, load_config, load_tokenizer, load_training_state, save_checkpoint
from data import SortingTask, prepare_text_dataset
from generate import start_ids
from optim import AdamW, accumulate_grads, clip_grad_norm, lr_schedule
from sparse_attention import clamp_spans, span_summary
from tokenizer import ByteBPETokenizer
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


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--data", help="UTF-8 text file to train on (character level); default: the synthetic sorting task")
    add("--preset", choices=sorted(PRESETS), help="default: 'small' with --data, 'sort' without")
    add("--tokenizer", choices=["char", "bpe"], help="characters (default), or a byte-level BPE trained on --data")
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
    add("--positional", choices=["learned", "sinusoidal"])
    add("--norm-first", action=argparse.BooleanOptionalAction, default=None, help="pre-LN (default) or post-LN")
    add("--activation", choices=["gelu_tanh", "gelu"])
    add("--init", choices=["gpt2", "xavier"])
    add("--attention", choices=["full", "sliding", "strided", "fixed"], help="attention pattern (default full)")
    add("--window", type=int, help="keys each query sees with --attention sliding (itself included)")
    add("--stride", type=int, help="block length of --attention strided / fixed")
    add("--summary", type=int, help="summary positions per block with --attention fixed")
    add("--adaptive-span", action=argparse.BooleanOptionalAction, default=None,
        help="each head learns its attention span (Sukhbaatar et al. 2019); spans are logged at each eval")
    add("--max-span", type=int, help="the longest span an adaptive head may learn (default: --block-size)")
    add("--span-ramp", type=int, help="length of the soft mask's ramp (default 32)")
    add("--span-loss-coefficient", type=float, help="L1 penalty per token of mean span (default 2e-6)")
    add("--dtype", choices=["float32", "float64"])
    add("--lr", type=float, help="peak learning rate")
    add("--min-lr", type=float, help="learning rate at the end of the cosine decay")
    add("--warmup-iters", type=int)
    add("--lr-decay-iters", type=int, help="iteration where the cosine reaches min-lr (default: max-iters)")
    add("--schedule", choices=["cosine", "constant"])
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


def resolve_settings(args, saved=None):
    """preset < saved run (when resuming) < flags given on the command line."""
    given = {key: value for key, value in vars(args).items() if value is not None}
    data = given.get("data", (saved or {}).get("data"))
    preset = given.get("preset") or (saved or {}).get("preset") or ("small" if data else "sort")
    settings = {**COMMON, **PRESETS[preset], **(saved or {}), **given, "preset": preset, "data": data}
    for key in ("resume", "plot"):
        settings.pop(key, None)
    for key in ("max_iters", "batch_size", "eval_interval", "eval_iters", "log_interval", "grad_accum_steps"):
        if settings[key] < 1:
            raise SystemExit(f"error: --{key.replace('_', '-')} must be >= 1, got {settings[key]}")
    try:
        learning_rate(settings, 0)
    except ValueError as error:
        raise SystemExit(f"error: {error} (see --lr, --min-lr, --warmup-iters, --lr-decay-iters)") from None
    return settings


def learning_rate(settings, iteration):
    return lr_schedule(iteration, lr=settings["lr"], min_lr=settings["min_lr"], warmup_iters=settings["warmup_iters"],
                       decay_iters=settings["lr_decay_iters"] or settings["max_iters"], kind=settings["schedule"])


class Task:
    """What the loop needs from either data source: batches, a vocabulary, a tokenizer to save.
    tokenizer: the one a resumed run saved; None makes one from the text as settings["tokenizer"] says."""

    def __init__(self, settings, tokenizer=None):
        self.sorting = None if settings["data"] else SortingTask()
        if self.sorting:
            self.tokenizer, self.vocab_size, self.block_size = None, self.sorting.vocab_size, self.sorting.block_size
        else:
            try:
                if tokenizer is None and settings["tokenizer"] == "bpe":
                    text = Path(settings["data"]).read_text(encoding="utf-8")
                    tokenizer = ByteBPETokenizer.train(text, settings["bpe_vocab_size"])
                self.dataset = prepare_text_dataset(settings["data"], tokenizer)
            except (OSError, ValueError) as error:
                raise SystemExit(f"error: cannot read --data {settings['data']}: {error}") from None
            self.tokenizer, self.vocab_size = self.dataset.tokenizer, self.dataset.vocab_size
            self.block_size = settings["block_size"]

    def get_batch(self, split, batch_size, rng):
        if self.sorting:
            return self.sorting.get_batch(batch_size, rng, split="train" if split == "train" else "test")
        return self.dataset.get_batch(split, batch_size, self.block_size, rng)


MODEL_SETTINGS = ("d_model", "n_heads", "n_layers", "dropout", "positional", "norm_first", "activation", "init",
                  "dtype", "attention", "window", "stride", "summary", "adaptive_span", "span_ramp",
                  "span_loss_coefficient")


def model_config(settings, task):
    max_span = (settings["max_span"] or task.block_size) if settings["adaptive_span"] else None
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
    out_dir = Path(out_dir)
    checkpoint_dir = out_dir / "checkpoint"
    task = Task(settings, load_tokenizer(checkpoint_dir) if resume else None)
    config = model_config(settings, task)
    if resume and load_config(checkpoint_dir) != config:
        raise SystemExit(f"error: the model settings differ from the checkpoint's ({load_config(checkpoint_dir)})")
    model = TransformerLM(config, seed=settings["seed"])
    optimizer = AdamW(model.parameters(), lr=settings["lr"], betas=(settings["beta1"], settings["beta2"]),
                      weight_decay=settings["weight_decay"])
    rng = np.random.default_rng(settings["seed"])  # training batches
    start, best_val_loss = 0, math.inf
    if resume:
        state = load_training_state(checkpoint_dir, model, optimizer)
        rng.bit_generator.state = state["data_rng"]
        start, best_val_loss = state["iteration"], state["best_val_loss"]
        print(f"resuming from iteration {start} (best val loss {best_val_loss:.4f})")
    out_dir.mkdir(parents=True, exist_ok=True)
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
            with open(out_dir / "metrics.jsonl", "a") as metrics:
                metrics.write(json.dumps(row) + "\n")
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


def plot(directory):
    """Draw the train and val loss curves of DIR/metrics.jsonl into DIR/loss.png."""
    directory = Path(directory)
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("error: --plot needs matplotlib, an optional dependency: pip install matplotlib") from None
    try:
        rows = [json.loads(line) for line in (directory / "metrics.jsonl").read_text().splitlines() if line]
    except (OSError, json.JSONDecodeError) as error:
        raise SystemExit(f"error: cannot read {directory / 'metrics.jsonl'}: {error}") from None
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for key in ("train_loss", "val_loss"):
        axes.plot([row["iter"] for row in rows], [row[key] for row in rows], marker="o", label=key.replace("_", " "))
    axes.set(xlabel="iteration", ylabel="cross-entropy loss", title=f"training run {directory.name}")
    axes.legend()
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(directory / "loss.png", dpi=100)
    print(f"wrote {directory / 'loss.png'}")


def main(argv=None):
    args = parse_args(argv)
    if args.plot:
        return plot(args.plot)
    saved = None
    if args.resume:
        try:
            saved = json.loads((Path(args.out_dir) / "checkpoint" / "state.json").read_text())["settings"]
        except (OSError, json.JSONDecodeError, KeyError) as error:
            raise SystemExit(f"error: --resume found no readable run in {args.out_dir}/checkpoint ({error})") from None
    settings = resolve_settings(args, saved)
    try:
        model, task = train(settings, args.out_dir, resume=args.resume)
    except CheckpointError as error:
        raise SystemExit(f"error: {error}") from None
    report(model, task, settings)


if __name__ == "__main__":
    sys.exit(main())
