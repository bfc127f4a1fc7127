import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT, require_gpt2_tokenizer

import generate
from checkpoint import save_checkpoint
from tokenizer import ByteBPETokenizer, CharTokenizer
from transformer_lm import TransformerConfig, TransformerLM

TEXT = "hello world, this is a tiny corpus.\n"


@pytest.fixture
def char_checkpoint(tmp_path):
    tokenizer = CharTokenizer.from_text(TEXT)
    model = TransformerLM(TransformerConfig(vocab_size=tokenizer.vocab_size, d_model=16, n_heads=2, n_layers=1,
                                            max_seq_len=64), seed=0)
    save_checkpoint(tmp_path / "ckpt", model, tokenizer=tokenizer)
    return tmp_path / "ckpt"


def run_cli(*flags):
    return subprocess.run([sys.executable, str(ROOT / "generate.py"), *map(str, flags)], capture_output=True,
                          text=True)


def test_streams_the_prompt_and_its_continuation(char_checkpoint):
    first = run_cli("--checkpoint", char_checkpoint, "--prompt", "hello", "--max-new-tokens", 30, "--seed", 3)
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("hello") and len(first.stdout) == len("hello") + 30 + 1
    again = run_cli("--checkpoint", char_checkpoint, "--prompt", "hello", "--max-new-tokens", 30, "--seed", 3)
    assert again.stdout == first.stdout
    greedy = run_cli("--checkpoint", char_checkpoint, "--prompt", "hi", "--max-new-tokens", 10, "--temperature", 0)
    assert greedy.returncode == 0 and greedy.stdout.startswith("hi")


def test_streamed_text_equals_generate(char_checkpoint, capsys):
    generate.main(["--checkpoint", str(char_checkpoint), "--prompt", "this", "--max-new-tokens", "25",
                   "--seed", "4", "--top-k", "5"])
    from checkpoint import load_tokenizer
    from transformer_lm import TransformerLM
    tokenizer = load_tokenizer(char_checkpoint)
    ids = TransformerLM.load(char_checkpoint).generate(tokenizer.encode("this"), 25, temperature=0.8, top_k=5, seed=4,
                                               crop_context=True)
    assert capsys.readouterr().out == tokenizer.decode(ids.tolist()) + "\n"


def test_byte_level_tokens_that_split_a_character_are_printed_whole(tmp_path, capsys):
    directory = require_gpt2_tokenizer()
    tokenizer = ByteBPETokenizer.from_files(directory / "vocab.json", directory / "merges.txt")
    model = TransformerLM(TransformerConfig(vocab_size=tokenizer.vocab_size, d_model=8, n_heads=2, n_layers=1,
                                            max_seq_len=64), seed=0)
    save_checkpoint(tmp_path / "ckpt", model, tokenizer=tokenizer)
    generate.main(["--checkpoint", str(tmp_path / "ckpt"), "--prompt", "日本", "--max-new-tokens", "20",
                   "--seed", "1"])
    ids = model.generate(tokenizer.encode("日本"), 20, temperature=0.8, seed=1, crop_context=True)
    assert capsys.readouterr().out == tokenizer.decode(ids.tolist()) + "\n"


@pytest.mark.parametrize("flags,message", [
    (["--checkpoint", "no-such-dir"], "error: cannot load the model: no checkpoint in no-such-dir"),
    (["--checkpoint", "CKPT", "--prompt", "Z"], "error: character 'Z' at position 0 is not in the vocabulary"),
    (["--checkpoint", "CKPT", "--temperature", "-1"], "error: temperature must be a number >= 0"),
    (["--checkpoint", "CKPT", "--top-p", "2"], r"error: top_p must be in (0, 1]"),
    (["--checkpoint", "CORRUPT"], "error: cannot load the model: no complete checkpoint in"),
    (["--checkpoint", "CKPT", "--num-samples", "0"], "error: --num-samples must be a positive integer, got 0"),
    (["--checkpoint", "CKPT", "--stop", ""], "error: --stop needs a non-empty string"),
    (["--checkpoint", "CKPT", "--prompt", "Zoo", "--unknown-token", "Q"], "error: unknown_token 'Q' is not in the "
                                                                          "vocabulary"),
    (["--checkpoint", "CKPT", "--prompt", "Zoo", "--unknown-token", "ab"], "unknown_token must be a single character"),
    (["--checkpoint", "CKPT", "--prompt-file", "no-such-prompt.txt"], "error: cannot read the prompt file "
                                                                      "no-such-prompt.txt"),
    (["--checkpoint", "CKPT", "--prompt", "FILE:no-such-prompt.txt"], "error: cannot read the prompt file"),
    (["--checkpoint", "CKPT", "--prompt-file", "NOT-UTF8"], "is not UTF-8 text"),
])
def test_errors_are_one_clear_line(char_checkpoint, tmp_path, flags, message):
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "config.json").write_text("{ not json")
    (tmp_path / "latin1.txt").write_bytes(b"caf\xe9")
    stand_ins = {"CKPT": str(char_checkpoint), "CORRUPT": str(corrupt), "NOT-UTF8": str(tmp_path / "latin1.txt")}
    flags = [stand_ins.get(flag, flag) for flag in flags]
    completed = run_cli(*flags)
    assert completed.returncode == 1
    assert len(completed.stderr.strip().splitlines()) == 1
    assert message.lower() in completed.stderr.lower()


def test_help():
    completed = run_cli("--help")
    assert completed.returncode == 0
    for flag in ("--checkpoint", "--hf-model", "--prompt", "--max-new-tokens", "--temperature", "--top-k", "--top-p",
                 "--seed", "--num-samples", "--prompt-file", "--stop", "--unknown-token"):
        assert flag in completed.stdout


def main_output(capsys, *flags):
    generate.main([str(flag) for flag in flags])
    return capsys.readouterr().out


def test_num_samples_differ_and_repeat_with_the_seed(char_checkpoint, capsys):
    flags = ("--checkpoint", char_checkpoint, "--prompt", "this", "--max-new-tokens", 20, "--seed", 7)
    output = main_output(capsys, *flags, "--num-samples", 3)
    samples = output.split("\n" + generate.SAMPLE_SEPARATOR + "\n")
    assert len(samples) == 3 and samples[-1].endswith("\n")
    samples[-1] = samples[-1][:-1]
    assert all(sample.startswith("this") and len(sample) == len("this") + 20 for sample in samples)
    assert len(set(samples)) == 3  # each sample draws its own continuation
    assert main_output(capsys, *flags, "--num-samples", 3) == output  # the seed fixes all of them
    assert main_output(capsys, *flags) == samples[0] + "\n"  # the first is what a single sample would be
    # They are the samples one generator gives in turn (nanoGPT's sample.py draws its samples the same way).
    from checkpoint import load_tokenizer
    from transformer_lm import TransformerLM
    model, rng = TransformerLM.load(char_checkpoint), np.random.default_rng(7)
    tokenizer = load_tokenizer(char_checkpoint)
    expected = [tokenizer.decode(model.generate(tokenizer.encode("this"), 20, temperature=0.8, seed=rng,
                                                crop_context=True).tolist()) for _ in range(3)]
    assert samples == expected


def test_prompt_from_a_file(char_checkpoint, tmp_path, capsys):
    (tmp_path / "prompt.txt").write_text("this is\n", encoding="utf-8")  # used as it is, final newline included
    flags = ("--checkpoint", char_checkpoint, "--max-new-tokens", 15, "--seed", 2)
    expected = main_output(capsys, *flags, "--prompt", "this is\n")
    assert expected.startswith("this is\n")
    assert main_output(capsys, *flags, "--prompt-file", tmp_path / "prompt.txt") == expected
    assert main_output(capsys, *flags, "--prompt", f"FILE:{tmp_path / 'prompt.txt'}") == expected
    with pytest.raises(SystemExit):  # one prompt or the other, not both
        generate.main(["--checkpoint", str(char_checkpoint), "--prompt", "a", "--prompt-file", "b"])


def test_stop_strings_end_a_sample_before_them(char_checkpoint, capsys):
    # A stop only cuts the sample short: the tokens before it are drawn exactly as without it.
    seeded = ("--checkpoint", char_checkpoint, "--prompt", "hello", "--max-new-tokens", 40, "--seed", 3)
    output = main_output(capsys, *seeded)
    assert output.startswith("hello") and output.endswith("\n")
    continuation = output[len("hello"):-1]
    assert len(set(continuation[:12])) > 4  # varied enough that the stops below are found at different places
    for stops in ([continuation[6:9]], [continuation[10:12], continuation[3:5]], ["never in it: \u00e9"]):
        cuts = [continuation.find(stop) for stop in stops if stop in continuation]
        expected = continuation[:min(cuts)] if cuts else continuation
        flags = [flag for stop in stops for flag in ("--stop", stop)]
        assert main_output(capsys, *seeded, *flags) == "hello" + expected + "\n"
    # The prompt is not searched: "l" of "hello" does not stop anything.
    cut = continuation.find("l")
    assert main_output(capsys, *seeded, "--stop", "l") == "hello" + (continuation[:cut] if cut >= 0 else
                                                                     continuation) + "\n"


def test_stop_strings_end_each_of_several_samples(char_checkpoint, capsys):
    output = main_output(capsys, "--checkpoint", char_checkpoint, "--prompt", "t", "--max-new-tokens", 60,
                         "--seed", 1, "--num-samples", 4, "--stop", " ")
    samples = output[:-1].split("\n" + generate.SAMPLE_SEPARATOR + "\n")
    assert len(samples) == 4
    assert all(" " not in sample for sample in samples)


def test_unknown_token_maps_characters_outside_the_vocabulary(char_checkpoint, capsys):
    flags = ("--checkpoint", char_checkpoint, "--max-new-tokens", 12, "--seed", 5)
    mapped = main_output(capsys, *flags, "--prompt", "Zhello\u00e9", "--unknown-token", " ")
    assert mapped == main_output(capsys, *flags, "--prompt", " hello ")  # what the model was given, printed
    assert mapped.startswith(" hello ")


def test_unknown_token_is_for_character_models(tmp_path, capsys):
    tokenizer = ByteBPETokenizer.train(TEXT * 10, 260)
    model = TransformerLM(TransformerConfig(vocab_size=tokenizer.vocab_size, d_model=8, n_heads=2, n_layers=1,
                                            max_seq_len=32), seed=0)
    save_checkpoint(tmp_path / "bpe", model, tokenizer=tokenizer)
    with pytest.raises(SystemExit, match="--unknown-token applies to character-level models only"):
        generate.main(["--checkpoint", str(tmp_path / "bpe"), "--prompt", "hi", "--unknown-token", "?"])


def test_one_loader_for_both_sources(char_checkpoint, tmp_path):
    from checkpoint import CheckpointError
    from transformer_lm import load_model_and_tokenizer
    model, tokenizer = load_model_and_tokenizer(checkpoint=char_checkpoint)
    assert tokenizer.chars == sorted(set(TEXT)) and model.config.vocab_size == len(set(TEXT))
    gpt2_shaped = TransformerLM(TransformerConfig(vocab_size=50, d_model=16, n_heads=2, n_layers=1, max_seq_len=32,
                                                  positional="learned", norm_first=True), seed=0)
    gpt2_shaped.save_pretrained(tmp_path / "hf")  # without a tokenizer
    hf_model, hf_tokenizer = load_model_and_tokenizer(hf_model=tmp_path / "hf")
    assert hf_tokenizer is None and hf_model.config.vocab_size == 50
    with pytest.raises(CheckpointError, match="has no tokenizer saved beside the model"):
        load_model_and_tokenizer(hf_model=tmp_path / "hf", require_tokenizer=True)
    for sources in ({}, {"checkpoint": char_checkpoint, "hf_model": tmp_path / "hf"}):
        with pytest.raises(ValueError, match="exactly one of checkpoint and hf_model"):
            load_model_and_tokenizer(**sources)
    completed = run_cli("--hf-model", tmp_path / "hf", "--prompt", "hi")
    assert completed.returncode == 1 and completed.stderr.startswith("error: cannot load the model: ")
    assert "has no tokenizer saved beside the model, so text cannot be encoded" in completed.stderr
