"""Generate text from a trained checkpoint or a Hugging Face directory (GPT-2, Llama, Mistral, Qwen2), streaming
it as it comes.

    python generate.py --checkpoint out-shakespeare --prompt "ROMEO:" --max-new-tokens 300
    python generate.py --hf-model gpt2-dir --prompt "The meaning of life is" --top-k 40 --seed 1
    python generate.py --checkpoint out-shakespeare --prompt FILE:prompt.txt --num-samples 3 --stop "\n\n"

Each sample is the prompt followed by its continuation; several samples are separated by a line of dashes.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from device import DeviceError
from generation import as_generator
from tokenizer import CharTokenizer, Tokenizer, start_ids
from transformer_config import is_positive_integer
from transformer_lm import TransformerLM, add_model_source_arguments, load_model_and_tokenizer

SAMPLE_SEPARATOR = "-" * 15  # nanoGPT's sample.py prints the same line between samples
FILE_PREFIX = "FILE:"  # nanoGPT's convention: --prompt FILE:path reads the prompt from a file


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_source_arguments(parser)
    prompt = parser.add_mutually_exclusive_group()
    prompt.add_argument("--prompt", default="", help=f"text to continue (default: start of text); "
                                                     f"{FILE_PREFIX}PATH reads it from a file, as in nanoGPT")
    prompt.add_argument("--prompt-file", type=Path, help="read the prompt from this UTF-8 file (used as it is, "
                                                         "a final newline included)")
    parser.add_argument("--num-samples", type=int, default=1, help="how many samples to draw (default 1); with "
                        "--seed they differ from each other and the whole run is reproducible")
    parser.add_argument("--max-new-tokens", type=int, default=200, help="tokens per sample (default 200)")
    parser.add_argument("--stop", action="append", metavar="STRING",
                        help="end a sample where its continuation first contains STRING (repeatable); the stop "
                             "string itself is not printed")
    parser.add_argument("--temperature", type=float, default=0.8, help="0 = greedy (default 0.8)")
    parser.add_argument("--top-k", type=int, help="sample only among the k most likely tokens")
    parser.add_argument("--top-p", type=float, help="sample only from the smallest set with probability >= p")
    parser.add_argument("--seed", type=int, help="fixes the sampling (default: the model's own generator)")
    parser.add_argument("--unknown-token", metavar="CHAR",
                        help="character-level models: a prompt character outside the vocabulary becomes CHAR "
                             "(itself in the vocabulary) instead of an error")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="cpu (NumPy) or cuda (CuPy on an NVIDIA GPU: pip install -r requirements-gpu.txt)")
    return parser.parse_args(argv)


def read_prompt(args: argparse.Namespace) -> str:
    """The prompt text: --prompt, or the file that --prompt-file or --prompt FILE:path names."""
    path = args.prompt_file
    if path is None and args.prompt.startswith(FILE_PREFIX):
        path = Path(args.prompt[len(FILE_PREFIX):])
    if path is None:
        return args.prompt
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise SystemExit(f"error: prompt file {path} is not UTF-8 text ({error})") from None
    except OSError as error:
        raise SystemExit(f"error: cannot read the prompt file {path}: {error.strerror or error}") from None


def with_unknown_token(tokenizer: Tokenizer, unknown_token: str | None) -> Tokenizer:
    """The tokenizer, as a CharTokenizer that maps characters outside its vocabulary to `unknown_token` if given."""
    if unknown_token is None:
        return tokenizer
    if not isinstance(tokenizer, CharTokenizer):
        raise ValueError("--unknown-token applies to character-level models only; a byte-level BPE encodes any text")
    return CharTokenizer(tokenizer.chars, unknown_token=unknown_token)


def check_stops(stops: Iterable[str] | None) -> list[str]:
    stops = list(stops or [])
    if "" in stops:
        raise ValueError("--stop needs a non-empty string (an empty one would end every sample at once)")
    return stops


def first_stop(text: str, stops: Sequence[str], start: int) -> int | None:
    """Where the earliest of `stops` begins in text[start:], as an index into text; None if none occurs."""
    found = [index for index in (text.find(stop, start) for stop in stops) if index >= 0]
    return min(found) if found else None


def held_back(text: str, stops: Sequence[str], start: int) -> int:
    """How many characters at the end of text[start:] could be the beginning of a stop string, and so must wait
    for the next tokens before they are printed."""
    longest = 0
    for stop in stops:
        for length in range(min(len(stop) - 1, len(text) - start), longest, -1):
            if text.endswith(stop[:length]):
                longest = length
                break
    return longest


def write_sample(model: TransformerLM, tokenizer: Tokenizer, prompt_ids: list[int], prompt_text: str,
                 args: argparse.Namespace, rng: np.random.Generator, stops: Sequence[str]) -> None:
    """Stream one sample to stdout: the prompt, then the continuation as it is produced, up to (not including) the
    first stop string; then a newline. rng: the np.random.Generator the samples of this run share."""
    try:
        # Past max_seq_len (a long prompt too), condition on the last max_seq_len tokens (nanoGPT's policy).
        tokens = model.stream(prompt_ids, args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                              top_p=args.top_p, seed=rng, crop_context=True)
    except (TypeError, ValueError) as error:
        raise SystemExit(f"error: {error}") from None
    sys.stdout.write(prompt_text)
    generated, text, printed = [], "", 0  # printed: characters of the continuation written so far
    try:
        for token in tokens:
            generated.append(int(token[0]))
            text = tokenizer.decode(generated)
            stop_at = first_stop(text, stops, printed)  # a stop string never starts in what was printed
            if stop_at is not None:
                text = text[:stop_at]
                break
            # A byte-level token can end inside a multi-byte character; wait for the rest of it.
            if not text.endswith("\ufffd"):
                end = len(text) - held_back(text, stops, printed)
                sys.stdout.write(text[printed:end])
                sys.stdout.flush()
                printed = end
    except ValueError as error:  # the model itself fails mid-stream, e.g. NaN logits from non-finite weights
        sys.stdout.write("\n")
        raise SystemExit(f"error: {error}") from None
    finally:
        tokens.close()
    sys.stdout.write(text[printed:] + "\n")


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    prompt = read_prompt(args)
    if not is_positive_integer(args.num_samples):
        raise SystemExit(f"error: --num-samples must be a positive integer, got {args.num_samples}")
    try:
        model, tokenizer = load_model_and_tokenizer(args.checkpoint, args.hf_model, require_tokenizer=True)
    except (OSError, ValueError) as error:
        raise SystemExit(f"error: cannot load the model: {error}") from None
    try:
        model.to(args.device)
    except DeviceError as error:
        raise SystemExit(f"error: {error}") from None
    try:
        stops = check_stops(args.stop)
        tokenizer = with_unknown_token(tokenizer, args.unknown_token)
        prompt_ids = start_ids(tokenizer, prompt)
        # One generator for the whole run: each sample continues where the previous one left it, so samples
        # differ and the same --seed gives the same samples (the first one as with --num-samples 1).
        rng = as_generator(model, args.seed)
    except (TypeError, ValueError) as error:
        raise SystemExit(f"error: {error}") from None
    prompt_text = tokenizer.decode(prompt_ids) if prompt else ""  # what the model sees (unknown characters mapped)
    for sample in range(args.num_samples):
        if sample:
            print(SAMPLE_SEPARATOR)
        write_sample(model, tokenizer, prompt_ids, prompt_text, args, rng, stops)


if __name__ == "__main__":
    main()
