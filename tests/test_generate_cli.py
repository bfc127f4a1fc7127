import subprocess
import sys

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
    from checkpoint import load_model, load_tokenizer
    tokenizer = load_tokenizer(char_checkpoint)
    ids = load_model(char_checkpoint).generate(tokenizer.encode("this"), 25, temperature=0.8, top_k=5, seed=4,
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
])
def test_errors_are_one_clear_line(char_checkpoint, tmp_path, flags, message):
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "config.json").write_text("{ not json")
    flags = [str(char_checkpoint) if flag == "CKPT" else str(corrupt) if flag == "CORRUPT" else flag
             for flag in flags]
    completed = run_cli(*flags)
    assert completed.returncode == 1
    assert len(completed.stderr.strip().splitlines()) == 1
    assert message.lower() in completed.stderr.lower()


def test_help():
    completed = run_cli("--help")
    assert completed.returncode == 0
    for flag in ("--checkpoint", "--hf-model", "--prompt", "--max-new-tokens", "--temperature", "--top-k", "--top-p",
                 "--seed"):
        assert flag in completed.stdout
