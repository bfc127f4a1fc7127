"""Evaluate a language model on a text: cross-entropy (nats per token), perplexity and bits per byte.

    python evaluation.py --checkpoint out-shakespeare --text input.txt
    python evaluation.py --hf-model gpt2-dir --text wiki.test.txt --stride 512 --json

The text is scored with strided sliding windows, as in Hugging Face's "Perplexity of fixed-length models":
windows of `context` tokens start every `stride` tokens, each window scores only the targets that no
earlier window scored (the rest are context, their targets set to IGNORE_INDEX), and the last window ends
at the last token. A smaller stride gives each scored token more context and costs more forward passes;
stride == context cuts the text into disjoint chunks, whose first tokens have no context and are not scored.
The text's very first token is never scored (nothing precedes it).

The mean is taken over tokens (the sum of nats over the number of scored tokens), not over windows, so
windows of different lengths weigh by what they score. Bits per byte = total nats / ln 2 / the UTF-8 bytes
of the scored tokens: unlike perplexity it does not depend on how the tokenizer cuts the text, so a
character model and a BPE model can be compared on it.

From Python (train.py reports the validation split this way):

    result = evaluate(model, dataset.split("val"), dataset.tokenizer, batch_size=16)
    result.nats_per_token, result.perplexity, result.bits_per_byte
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TextIO

import numpy as np

from tokenizer import Tokenizer
from transformer_config import IGNORE_INDEX, TransformerConfig, is_positive_integer, python_scalar
from transformer_lm import TransformerLM, add_model_source_arguments, load_model_and_tokenizer

PROGRESS_INTERVAL_S = 10.0  # the CLI reports progress on stderr at most this often
# The default batch holds as many windows as keep their logits and attention maps near 256 MB (float32),
# so a character model gets wide batches and GPT-2 at a context of 1024 one window at a time.
BATCH_MEMORY_FLOATS = 64 * 2**20
MAX_DEFAULT_BATCH = 64


@dataclasses.dataclass
class Evaluation:
    """What `evaluate` measured. bits_per_byte and bytes are None when no tokenizer was given."""
    nats_per_token: float
    perplexity: float
    bits_per_byte: float | None
    tokens_scored: int
    bytes: int | None
    windows: int
    context: int
    stride: int


@dataclasses.dataclass(frozen=True)
class Window:
    """Token positions [begin, end) fed to the model; the targets at positions >= first_scored are scored."""
    begin: int
    end: int
    first_scored: int


def sliding_windows(n_tokens: int, context: int, stride: int) -> list[Window]:
    """Hugging Face's strided windows over n_tokens ids, keeping only windows that score something.

    Windows begin at 0, stride, 2 * stride, ... and end context tokens later or at the text's end; the loop
    stops at the first window that reaches the end. Window k scores the targets from where window k - 1
    ended (HF sets the others to -100). The model predicts position t from positions < t inside the window,
    so the window's first position is context only: with stride == context that is a target nobody scores,
    and a last window of one token scores nothing at all (HF's loop then divides 0 by 0; it is dropped here).
    """
    windows, previous_end = [], 0
    for begin in range(0, n_tokens, stride):
        end = min(begin + context, n_tokens)
        first_scored = max(previous_end, begin + 1)
        if first_scored < end:
            windows.append(Window(begin, end, first_scored))
        previous_end = end
        if end == n_tokens:
            break
    return windows


def token_byte_lengths(tokenizer: Tokenizer) -> np.ndarray:
    """(vocab_size,) int64: how many UTF-8 bytes each token id stands for.

    A byte-level BPE token may hold part of a character, so its bytes come from decode_bytes; a character
    tokenizer's token is its character. (An unknown_token stands for whatever character it replaced; it is
    counted as its own character's bytes.)
    """
    if hasattr(tokenizer, "decode_bytes"):
        return np.array([len(tokenizer.decode_bytes([token])) for token in range(tokenizer.vocab_size)],
                        dtype=np.int64)
    return np.array([len(tokenizer.decode([token]).encode("utf-8")) for token in range(tokenizer.vocab_size)],
                    dtype=np.int64)


def evaluate(model: TransformerLM, ids: Sequence[int] | np.ndarray, tokenizer: Tokenizer | None = None,
             context: int | None = None, stride: int | None = None,
             batch_size: int | None = None, progress: Callable[[int, int], None] | None = None) -> Evaluation:
    """Score the token ids (N,) with strided sliding windows (see sliding_windows) in eval mode.

    context: tokens per window, 2..max_seq_len (default max_seq_len); stride: 1..context (default context).
    tokenizer: the one that produced ids, for bits per byte (None: bits per byte is not reported).
    batch_size: windows per forward pass (default: see default_batch_size).
    progress: called as progress(windows done, windows in all) after each forward pass.
    The model's training mode is restored afterwards, so a trainer can call this between steps.
    """
    ids = check_token_ids(ids, model.config.vocab_size)
    context, stride = check_window(context, stride, model.config.max_seq_len)
    batch_size = default_batch_size(model.config, context) if batch_size is None else batch_size
    if not is_positive_integer(python_scalar(batch_size)):
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    windows = sliding_windows(len(ids), context, stride)

    was_training = model.training
    model.eval()  # no dropout, and no adaptive-span penalty added to the loss
    total_nats, tokens_scored, windows_done = 0.0, 0, 0
    try:
        for batch in window_batches(windows, batch_size):
            inputs = np.stack([ids[window.begin:window.end - 1] for window in batch])       # (B, T)
            targets = np.stack([target_row(ids, window) for window in batch])             # (B, T)
            count = int(np.count_nonzero(targets != IGNORE_INDEX))
            # loss() is the mean over the scored targets (its sum is taken in float64); times count = their sum.
            total_nats += model.loss(inputs, targets) * count
            tokens_scored += count
            windows_done += len(batch)
            if progress is not None:
                progress(windows_done, len(windows))
    finally:
        model.train(was_training)

    if not math.isfinite(total_nats):
        raise ValueError(f"the model's cross-entropy on this text is not finite ({total_nats}); "
                         "its weights may hold NaN or infinity")
    nats_per_token = total_nats / tokens_scored
    n_bytes = bits_per_byte = None
    if tokenizer is not None:
        byte_lengths = token_byte_lengths(tokenizer)
        if int(ids.max()) >= len(byte_lengths):
            raise ValueError(f"token id {int(ids.max())} is outside the tokenizer's {len(byte_lengths)} tokens: "
                             "these ids were not produced by this tokenizer")
        # The windows score disjoint stretches [first_scored, end), so their bytes add up.
        n_bytes = int(sum(byte_lengths[ids[window.first_scored:window.end]].sum() for window in windows))
        bits_per_byte = total_nats / math.log(2) / n_bytes
    # exp overflows a float past 709 nats per token, which only a broken model reaches.
    perplexity = math.exp(nats_per_token) if nats_per_token < 709.0 else math.inf
    return Evaluation(nats_per_token, perplexity, bits_per_byte, tokens_scored, n_bytes, len(windows),
                      context, stride)


def evaluate_text(model: TransformerLM, tokenizer: Tokenizer, text: str, **options: object) -> Evaluation:
    """Encode `text` with `tokenizer` and evaluate it; options as for `evaluate`."""
    if not text:
        raise ValueError("the text is empty: there is nothing to score")
    return evaluate(model, np.asarray(tokenizer.encode(text), dtype=np.int64), tokenizer, **options)


def default_batch_size(config: TransformerConfig, context: int) -> int:
    """Windows per forward pass whose logits (context * vocab_size) and attention maps (context^2 per head
    and layer) fit in BATCH_MEMORY_FLOATS floats, between 1 and MAX_DEFAULT_BATCH."""
    floats_per_window = context * (config.vocab_size + config.n_layers * config.n_heads * context)
    return max(1, min(MAX_DEFAULT_BATCH, BATCH_MEMORY_FLOATS // floats_per_window))


def check_token_ids(ids: Sequence[int] | np.ndarray, vocab_size: int) -> np.ndarray:
    """ids as a (N,) integer array of at least 2 ids in [0, vocab_size), or a ValueError/TypeError."""
    ids = np.asarray(ids)
    if ids.dtype.kind not in "iu":
        raise TypeError(f"ids must be an integer array of token ids, got dtype {ids.dtype}")
    if ids.ndim != 1:
        raise ValueError(f"ids must be one sequence of shape (N,), got shape {ids.shape}")
    if len(ids) < 2:
        raise ValueError(f"{len(ids)} token(s) are too few to score: need at least 2 (a token and the one "
                         "that follows it)")
    low, high = int(ids.min()), int(ids.max())
    if low < 0 or high >= vocab_size:
        bad = low if low < 0 else high
        raise ValueError(f"token id {bad} at position {int(np.flatnonzero(ids == bad)[0])} is out of range "
                         f"[0, {vocab_size}) of the model's vocabulary")
    return ids


def check_window(context: int | None, stride: int | None, max_seq_len: int) -> tuple[int, int]:
    """(context, stride) with the defaults filled in, or a ValueError saying which bound was broken."""
    context = max_seq_len if context is None else context
    for name, value in (("context", context), ("stride", stride)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer))):
            raise ValueError(f"{name} must be an integer, got {value!r}")
    if not 2 <= context <= max_seq_len:
        raise ValueError(f"context must be between 2 (a token and its successor) and the model's max_seq_len "
                         f"{max_seq_len}, got {context}")
    stride = context if stride is None else stride
    if not 1 <= stride <= context:
        raise ValueError(f"stride must be between 1 and the context ({context}), got {stride}")
    return int(context), int(stride)


def target_row(ids: np.ndarray, window: Window) -> np.ndarray:
    """(T,) the next-token targets of the window, IGNORE_INDEX where an earlier window scored them."""
    targets = ids[window.begin + 1:window.end].astype(np.int64)
    targets[:window.first_scored - window.begin - 1] = IGNORE_INDEX
    return targets


def window_batches(windows: Sequence[Window], batch_size: int) -> Iterator[list[Window]]:
    """Runs of up to batch_size consecutive windows of equal length (only the last window can be shorter)."""
    for _, same_length in itertools.groupby(windows, key=lambda window: window.end - window.begin):
        same_length = list(same_length)
        for start in range(0, len(same_length), batch_size):
            yield same_length[start:start + batch_size]


# ------------------------------------------------------------------------------------------------- CLI


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_source_arguments(parser)
    parser.add_argument("--text", required=True, help="the UTF-8 text file to score")
    parser.add_argument("--context", type=int, help="tokens per window (default: the model's max_seq_len)")
    parser.add_argument("--stride", type=int, help="tokens between window starts; smaller = more context per "
                                                   "scored token, more forward passes (default: --context)")
    parser.add_argument("--batch-size", type=int, help="windows per forward pass (default: as many as keep the "
                                                       "logits and attention maps near 256 MB, at most 64)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    return parser.parse_args(argv)


def read_text(path: str | os.PathLike) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SystemExit(f"error: text file {path} does not exist") from None
    except IsADirectoryError:
        raise SystemExit(f"error: {path} is a directory; --text needs a UTF-8 text file") from None
    except UnicodeDecodeError as error:
        raise SystemExit(f"error: {path} is not UTF-8 text ({error})") from None
    except OSError as error:
        raise SystemExit(f"error: cannot read {path} ({error})") from None


def progress_reporter(stream: TextIO) -> Callable[[int, int], None]:
    """A progress callback that writes "evaluated i/n windows" to stream at most every PROGRESS_INTERVAL_S seconds."""
    last = time.monotonic()

    def report(done: int, total: int) -> None:
        nonlocal last
        if time.monotonic() - last >= PROGRESS_INTERVAL_S:
            print(f"evaluated {done}/{total} windows", file=stream, flush=True)
            last = time.monotonic()

    return report


def format_table(result: Evaluation, model_source: str, text_source: str) -> str:
    rows = [
        ("model", model_source),
        ("text", f"{text_source} ({result.bytes:,} bytes scored)"),
        ("tokens scored", f"{result.tokens_scored:,} in {result.windows:,} windows "
                          f"(context {result.context}, stride {result.stride})"),
        ("nats per token", f"{result.nats_per_token:.4f}"),
        ("perplexity", f"{result.perplexity:.4f}"),
        ("bits per byte", f"{result.bits_per_byte:.4f}"),
    ]
    return "\n".join(f"{name:<15} {value}" for name, value in rows)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    text = read_text(args.text)
    try:
        model, tokenizer = load_model_and_tokenizer(args.checkpoint, args.hf_model, require_tokenizer=True)
    except (OSError, ValueError) as error:
        raise SystemExit(f"error: cannot load the model: {error}") from None
    try:
        result = evaluate_text(model, tokenizer, text, context=args.context, stride=args.stride,
                               batch_size=args.batch_size, progress=progress_reporter(sys.stderr))
    except (TypeError, ValueError) as error:
        raise SystemExit(f"error: {error}") from None
    model_source = args.checkpoint or args.hf_model
    if args.json:
        print(json.dumps({**dataclasses.asdict(result), "source": args.text, "model": model_source}))
    else:
        print(format_table(result, model_source, args.text))


if __name__ == "__main__":
    main()
