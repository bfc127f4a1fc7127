"""Export a checkpoint trained here to the Hugging Face GPT-2 layout, or check a Hugging Face GPT-2 directory.

    python convert.py --checkpoint out --out hf-model    # export train.py's checkpoint (add --check to verify)
    python convert.py --hf-model hf-model                 # load a GPT-2 directory and print a summary

The exported directory (config.json, model.safetensors, and vocab.json + merges.txt when the model uses
GPT-2's byte-level BPE tokenizer) loads with transformers.GPT2LMHeadModel.from_pretrained. Only
GPT-2-shaped models can be exported: pre-LN (norm_first) with learned positions.
"""
from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

import checkpoint
from tokenizer import ByteBPETokenizer
from transformer_lm import TransformerLM, load_model_and_tokenizer

CHECK_PROMPT = "Hello, I'm a language model,"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", metavar="DIR",
                        help="a checkpoint written by train.py (or the run's out dir holding it) to export")
    source.add_argument("--hf-model", metavar="HF_DIR", help="a Hugging Face GPT-2 directory to load and summarize")
    parser.add_argument("--out", metavar="HF_DIR", help="where to write the export (required with --checkpoint)")
    parser.add_argument("--check", action="store_true",
                        help="after exporting, load the written directory back and summarize it "
                             "(what --hf-model always does)")
    args = parser.parse_args(argv)
    if args.checkpoint and not args.out:
        parser.error("--checkpoint needs --out HF_DIR")
    if args.hf_model and args.out:
        parser.error("--out goes with --checkpoint, not with --hf-model")
    return args


def summary(model: TransformerLM) -> str:
    """A few lines describing a loaded model; with a tokenizer, a greedy continuation of CHECK_PROMPT."""
    config = model.config
    lines = [f"{config.n_layers} layers, d_model {config.d_model}, {config.n_heads} heads, d_ff {config.d_ff}, "
             f"vocab {config.vocab_size}, max_seq_len {config.max_seq_len}, activation {config.activation}, "
             f"{'tied' if config.tie_weights else 'untied'} head",
             f"parameters: {model.num_parameters():,}"]
    if model.tokenizer is None:
        lines.append("tokenizer: none (no vocab.json + merges.txt)")
    else:
        prompt = model.tokenizer.encode(CHECK_PROMPT)[: config.max_seq_len // 2]
        new_tokens = min(20, config.max_seq_len - len(prompt))  # learned positions end at max_seq_len
        continuation = model.generate(np.array(prompt), max_new_tokens=new_tokens, temperature=0)
        lines.append(f"tokenizer: byte-level BPE, {model.tokenizer.vocab_size} tokens")
        lines.append(f"greedy continuation: {model.tokenizer.decode(continuation.tolist())!r}")
    return "\n".join(lines)


def check_out_dir(checkpoint_dir: str | os.PathLike, out: str | os.PathLike) -> None:
    """Refuse an export into the checkpoint's directory (as given, or the copy of it that is read) or the run
    directory holding it: the export's config.json would replace the checkpoint's, or be found before it."""
    found = checkpoint.resolve_directory(checkpoint_dir).resolve()
    given = Path(checkpoint_dir).resolve()
    if Path(out).resolve() in (given, given / "checkpoint", found, found.parent):
        raise ValueError(f"--out {out} is where the checkpoint {checkpoint_dir} is found, and the export's "
                         "config.json would replace or hide the checkpoint's; export to a directory of its own")


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        if args.checkpoint:
            check_out_dir(args.checkpoint, args.out)
            model, tokenizer = load_model_and_tokenizer(checkpoint=args.checkpoint)
            model.save_pretrained(args.out)
            print(f"exported {args.checkpoint} to {args.out}")
            if not isinstance(tokenizer, ByteBPETokenizer):
                print("note: the checkpoint has no byte-level BPE tokenizer (the only kind GPT-2 directories "
                      "hold), so the export has no tokenizer files")
        if args.hf_model or args.check:
            print(summary(load_model_and_tokenizer(hf_model=args.hf_model or args.out)[0]))
    except (OSError, ValueError, TypeError) as error:
        raise SystemExit(f"error: {error}") from None


if __name__ == "__main__":
    main()
