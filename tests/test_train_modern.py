"""train.py with the modern decoder's options (issue 12): the flags --positional rope, --rope-theta, --n-kv-heads,
--head-dim, --qkv-bias and --d-ff, and the modern-cpu / shakespeare-char-modern presets."""
import json
import math
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT, run_train_cli
from test_hostile_train import resolve
from test_hostile_train import tiny_run as hostile_tiny_run

import train
from transformer_config import CHOICES, TransformerConfig
from transformer_lm import TransformerLM


def tiny_run(corpus, out_dir, *flags):
    """test_hostile_train's tiny run with 4 heads of 4 (room for grouped-query attention) and 2 iterations."""
    return hostile_tiny_run(corpus, out_dir, "--n-heads", 4, "--d-model", 16, "--max-iters", 2, *flags)




def test_positional_flag_offers_every_config_choice():
    action = next(action for action in train.build_parser()._actions if action.dest == "positional")
    assert tuple(action.choices) == CHOICES["positional"] and "rope" in action.choices


def test_each_flag_reaches_the_config_and_a_resumed_run_keeps_them(corpus, tmp_path):
    tiny_run(corpus, tmp_path / "run", "--positional", "rope", "--rope-theta", 2.5, "--n-kv-heads", 2,
             "--head-dim", 6, "--d-ff", 24, "--no-bias", "--qkv-bias", "--norm", "rmsnorm", "--activation", "swiglu")
    from checkpoint import load_config
    config = load_config(tmp_path / "run")
    assert (config.positional, config.rope_theta, config.n_kv_heads, config.head_dim, config.d_ff) == \
        ("rope", 2.5, 2, 6, 24)
    assert (config.bias, config.qkv_bias) == (False, True)
    run_train_cli("--out-dir", tmp_path / "run", "--resume", "--max-iters", 3)
    assert load_config(tmp_path / "run") == config


@pytest.mark.parametrize("flags, message", [
    (["--n-kv-heads", "0"], "error: --n-kv-heads must be >= 1, got 0"),
    (["--n-kv-heads=-1"], "error: --n-kv-heads must be >= 1, got -1"),
    (["--head-dim", "0"], "error: --head-dim must be >= 1, got 0"),
    (["--head-dim=-1"], "error: --head-dim must be >= 1, got -1"),
    (["--d-ff", "0"], "error: --d-ff must be >= 1, got 0"),
    (["--positional", "rope", "--rope-theta", "0"], "error: --rope-theta must be a finite number > 0, got 0.0"),
    (["--positional", "rope", "--rope-theta=-1"], "error: --rope-theta must be a finite number > 0, got -1.0"),
    (["--positional", "rope", "--rope-theta", "inf"], "error: --rope-theta must be a finite number > 0, got inf"),
    (["--rope-theta", "500"], "error: --rope-theta 500.0 is only used with --positional rope"),
])
def test_bad_values_are_one_line_errors(flags, message):
    with pytest.raises(SystemExit) as exit_info:
        resolve(*flags)
    assert str(exit_info.value).startswith(message) and "\n" not in str(exit_info.value)


@pytest.mark.parametrize("name, value", [("n_kv_heads", 2.5), ("head_dim", 2.5), ("d_ff", 2.5),
                                         ("qkv_bias", "yes"), ("rope_theta", "1e4")])
def test_bad_saved_or_given_values_name_their_flag(name, value):
    # From a resumed run's state.json or train()'s keywords, where argparse does not check the type.
    with pytest.raises(train.TrainingError, match=f"^--{name.replace('_', '-')} must be "):
        train.merge_settings({name: value})


@pytest.mark.parametrize("flag", ["--n-kv-heads", "--head-dim"])
def test_a_fractional_count_is_refused_by_the_command_line(flag):
    completed = subprocess.run([sys.executable, str(ROOT / "train.py"), flag, "2.5"], capture_output=True, text=True)
    assert completed.returncode != 0
    errors = [line for line in completed.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and f"argument {flag}: invalid int value: '2.5'" in errors[0]


def test_kv_heads_that_do_not_divide_the_heads_are_refused_by_the_config(corpus, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        tiny_run(corpus, tmp_path / "run", "--n-kv-heads", 3)
    message = str(exit_info.value)
    assert message.startswith("error: ") and "\n" not in message and "n_kv_heads" in message
    assert not (tmp_path / "run" / "checkpoint").exists()
    completed = subprocess.run([sys.executable, str(ROOT / "train.py"), "--n-heads", "4", "--n-kv-heads", "3"],
                               cwd=tmp_path, capture_output=True, text=True)
    assert completed.returncode == 1 and completed.stderr.count("\n") == 1 and completed.stderr.startswith("error: ")


def test_a_preset_leaves_derived_settings_unset_so_flags_derive_them_again():
    settings = resolve("--preset", "nanogpt-cpu", "--n-heads", 8, "--d-model", 256, "--no-bias")
    assert settings["n_kv_heads"] is settings["head_dim"] is settings["qkv_bias"] is settings["d_ff"] is None
    task = train.Task(train.SortingTask())
    config = train.model_config(settings, task)
    assert (config.n_kv_heads, config.head_dim, config.qkv_bias, config.d_ff) == (8, 32, False, 1024)
    modern = resolve("--preset", "modern-cpu", "--n-heads", 8)
    assert (modern["n_kv_heads"], modern["d_ff"]) == (2, 393)  # what the preset sets, it keeps


def test_modern_preset_has_nanogpt_cpus_size_and_llamas_choices():
    modern, nanogpt = TransformerConfig.from_preset("modern-cpu"), TransformerConfig.from_preset("nanogpt-cpu")
    for name in ("vocab_size", "d_model", "n_layers", "n_heads", "max_seq_len", "dropout", "tie_weights"):
        assert getattr(modern, name) == getattr(nanogpt, name), name
    assert (modern.positional, modern.norm, modern.activation, modern.norm_first, modern.bias) == \
        ("rope", "rmsnorm", "swiglu", True, False)
    assert modern.n_kv_heads == 2 < modern.n_heads
    ours, theirs = TransformerLM(modern).num_parameters(), TransformerLM(nanogpt).num_parameters()
    assert (ours, theirs) == (809_728, 809_856)  # the counts transformer_config.py's comment states
    assert abs(ours - theirs) / theirs < 0.01
    # d_ff is the nearest: one unit more or less moves the count further away.
    for d_ff in (modern.d_ff - 1, modern.d_ff + 1):
        other = sum(math.prod(shape) for shape in TransformerConfig.from_preset("modern-cpu", d_ff=d_ff)
                    .parameter_shapes().values())
        assert abs(other - theirs) > abs(ours - theirs)


def test_shakespeare_char_modern_is_shakespeare_char_cpu_with_the_modern_model():
    modern, gpt2_style = train.preset_settings("shakespeare-char-modern"), train.preset_settings("shakespeare-char-cpu")
    model_keys = set(train.MODEL_KEYS)
    assert {key: value for key, value in modern.items() if key not in model_keys} == \
        {key: value for key, value in gpt2_style.items() if key not in model_keys}
    task = train.Task(train.SortingTask())
    assert train.model_config(modern, task) == TransformerConfig.from_preset(
        "modern-cpu", vocab_size=task.vocab_size, max_seq_len=task.block_size)  # the sorting task's tokens


def test_the_modern_preset_trains(corpus, tmp_path):
    run_train_cli("--preset", "shakespeare-char-modern", "--data", corpus, "--out-dir", tmp_path / "run",
                  "--max-iters", 30, "--eval-interval", 15, "--eval-iters", 2, "--block-size", 32, "--sample-tokens", 0)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [row["loss"] for row in rows if row["kind"] == "train"]
    evals = [row for row in rows if row["kind"] == "eval"]
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.5
    assert evals[-1]["val_loss"] < evals[0]["val_loss"] - 0.5
    assert rows[0]["config"]["positional"] == "rope" and rows[0]["config"]["n_kv_heads"] == 2


def test_train_accepts_a_models_derived_values_and_refuses_others(corpus):
    model = TransformerLM(TransformerConfig(vocab_size=64, d_model=16, n_heads=4, n_layers=1, max_seq_len=8,
                                            positional="rope", n_kv_heads=2))
    ids = np.arange(400) % 64
    train.train(model, ids, max_iters=1, eval_iters=1, batch_size=2, n_kv_heads=2, head_dim=4, qkv_bias=True)
    with pytest.raises(train.TrainingError, match="head_dim=8: the model has head_dim=4"):
        train.train(model, ids, max_iters=1, eval_iters=1, batch_size=2, head_dim=8)
