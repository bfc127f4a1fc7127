"""Demo: build a TransformerLM, run a forward pass on random token ids, print the shape and some logits."""
from __future__ import annotations

import argparse
from collections.abc import Sequence

import numpy as np

from transformer_config import CHOICES, PRESETS, TransformerConfig
from transformer_lm import TransformerLM


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The demo's options: a preset, any config field overridden, and the random batch's shape and seed."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", default="demo", choices=sorted(PRESETS), help="starting shape")
    parser.add_argument("--vocab-size", type=int, help="number of distinct tokens")
    parser.add_argument("--d-model", type=int, help="width of the residual stream (C)")
    parser.add_argument("--n-heads", type=int, help="attention heads per layer")
    parser.add_argument("--n-layers", type=int, help="decoder blocks")
    parser.add_argument("--d-ff", type=int, help="feed-forward width (default 4 * d_model)")
    parser.add_argument("--max-seq-len", type=int, help="longest sequence the model accepts")
    parser.add_argument("--dropout", type=float, help="dropout probability (off in this eval-mode demo)")
    parser.add_argument("--positional", choices=CHOICES["positional"])
    parser.add_argument("--norm-first", action=argparse.BooleanOptionalAction, default=None,
                        help="pre-LN (GPT-2) instead of post-LN (the original Transformer)")
    parser.add_argument("--activation", choices=CHOICES["activation"])
    parser.add_argument("--init", choices=CHOICES["init"])
    parser.add_argument("--dtype", choices=CHOICES["dtype"])
    parser.add_argument("--batch-size", type=int, default=2, help="sequences in the random batch (B)")
    parser.add_argument("--seq-len", type=int, default=16, help="tokens per sequence (T)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the weights and the random ids")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    """Build the model, run one forward pass on random ids, print what came out."""
    args = parse_args(argv)
    overrides = {field: value for field, value in vars(args).items()
                 if field in TransformerConfig.__dataclass_fields__ and value is not None}
    try:
        config = TransformerConfig.from_preset(args.preset, **overrides)
    except (TypeError, ValueError) as error:
        raise SystemExit(f"error: {error}") from None
    model = TransformerLM(config, seed=args.seed).eval()
    ids = np.random.default_rng(args.seed).integers(0, config.vocab_size, size=(args.batch_size, args.seq_len))
    try:
        logits = model(ids)
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None

    print(f"config: {config}")
    print(f"parameters: {model.num_parameters():,}")
    print(f"input ids: shape {ids.shape}, first row {ids[0, :8].tolist()}...")
    print(f"output logits: shape {logits.shape} (batch, seq_len, vocab_size), dtype {logits.dtype}")
    with np.printoptions(precision=4, suppress=True):
        print(f"logits[0, 0, :8] = {logits[0, 0, :8]}")
        print(f"logits[0, -1, :8] = {logits[0, -1, :8]}")
    probabilities = np.exp(logits[0, -1] - logits[0, -1].max())
    probabilities /= probabilities.sum()
    print(f"most likely next token after the first sequence: {int(probabilities.argmax())} "
          f"(p = {probabilities.max():.4f}, uniform would be {1.0 / config.vocab_size:.4f})")


if __name__ == "__main__":
    main()
