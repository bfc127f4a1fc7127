"""Generate text from a trained checkpoint or a Hugging Face GPT-2 directory, streaming it as it comes.

    python generate.py --checkpoint out-shakespeare --prompt "ROMEO:" --max-new-tokens 300
    python generate.py --hf-model gpt2-dir --prompt "The meaning of life is" --top-k 40 --seed 1
"""
import argparse
import sys

from checkpoint import CheckpointError, load_model, load_tokenizer


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="a checkpoint directory written by train.py (or its --out-dir)")
    source.add_argument("--hf-model", help="a Hugging Face GPT-2 directory: config.json, model.safetensors, "
                                           "vocab.json, merges.txt")
    parser.add_argument("--prompt", default="", help="text to continue (default: start of text)")
    parser.add_argument("--max-new-tokens", type=int, default=200)
    parser.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    parser.add_argument("--top-k", type=int, help="sample only among the k most likely tokens")
    parser.add_argument("--top-p", type=float, help="sample only from the smallest set with probability >= p")
    parser.add_argument("--seed", type=int, help="fixes the sampling (default: the model's own generator)")
    return parser.parse_args(argv)


def load(args):
    """(model, tokenizer) from either source; any problem becomes one clear line."""
    try:
        if args.checkpoint:
            model, tokenizer = load_model(args.checkpoint), load_tokenizer(args.checkpoint)
        else:
            from transformer_lm import TransformerLM
            model = TransformerLM.from_pretrained(args.hf_model)
            tokenizer = model.tokenizer
    except (CheckpointError, OSError, ValueError) as error:
        raise SystemExit(f"error: cannot load the model: {error}") from None
    if tokenizer is None:
        raise SystemExit("error: the model has no tokenizer saved beside it, so text cannot be encoded")
    return model, tokenizer


def start_ids(tokenizer, prompt):
    """The prompt's ids; an empty prompt starts from <|endoftext|> if the vocabulary has it, else a newline,
    else the first token."""
    if prompt:
        return tokenizer.encode(prompt)
    if getattr(tokenizer, "eot_token", None) is not None:
        return [tokenizer.eot_token]
    try:
        return tokenizer.encode("\n")
    except ValueError:  # a character vocabulary without newlines
        return [0]


def main(argv=None):
    args = parse_args(argv)
    model, tokenizer = load(args)
    try:
        prompt_ids = start_ids(tokenizer, args.prompt)
        # Past max_seq_len (a long prompt too), condition on the last max_seq_len tokens (nanoGPT's policy).
        tokens = model.stream(prompt_ids, args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                              top_p=args.top_p, seed=args.seed, crop_context=True)
    except (TypeError, ValueError) as error:
        raise SystemExit(f"error: {error}") from None
    sys.stdout.write(args.prompt)
    generated, printed = [], ""
    try:
        for token in tokens:
            generated.append(int(token[0]))
            text = tokenizer.decode(generated)
            # A byte-level token can end inside a multi-byte character; wait for the rest of it.
            if not text.endswith("\ufffd"):
                sys.stdout.write(text[len(printed):])
                sys.stdout.flush()
                printed = text
    except ValueError as error:  # the model itself fails mid-stream, e.g. NaN logits from non-finite weights
        sys.stdout.write("\n")
        raise SystemExit(f"error: {error}") from None
    sys.stdout.write(tokenizer.decode(generated)[len(printed):] + "\n")


if __name__ == "__main__":
    main()
