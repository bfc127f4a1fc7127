"""Hostile inputs to the training CLI (train.py), its optimizer (optim.py), its data (data.py) and visualize.py.

Every bad value is a one-line `error: ...` (SystemExit) from the CLIs or a ValueError from the Python API,
found before any training; no flag silently means its default; a good value is used as given.
"""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import CORPUS, ROOT, run_train_cli
from hypothesis import given, settings
from hypothesis import strategies as st

import train
import visualize
from data import TokenDataset, check_text_file, prepare_text_dataset
from optim import AdamW, clip_grad_norm, lr_schedule
from tokenizer import CharTokenizer

FEW_EXAMPLES = settings(max_examples=25, deadline=None)
PER_FLAG_EXAMPLES = settings(max_examples=12, deadline=None)  # twenty flags: the module stays within seconds


run = run_train_cli


def tiny_run(corpus, out_dir, *flags):
    return run("--data", corpus, "--out-dir", out_dir, "--n-layers", 1, "--n-heads", 2, "--d-model", 8,
               "--block-size", 8, "--batch-size", 2, "--eval-iters", 1, "--warmup-iters", 0, "--sample-tokens", 0,
               "--max-iters", 1, *flags)


def resolve(*flags, saved=None):
    return train.resolve_settings(train.parse_args([str(flag) for flag in flags]), saved)


# ----------------------------------------------------------------------------------------------
# Every numeric flag: a value is either used exactly as given, or refused with `error: --flag ...`

# flag -> (whether a finite value is valid, the other flags the case needs). Written from the issue's
# rules, not read from train.py: rates and coefficients >= 0, betas and dropout in [0, 1).
FLOAT_FLAGS = {
    "lr": (lambda value: value >= 0, ("--schedule", "constant")),
    "min_lr": (lambda value: 0 <= value <= 1.0, ("--lr", 1.0)),  # at most the peak
    "weight_decay": (lambda value: value >= 0, ()),
    "grad_clip": (lambda value: value >= 0, ()),
    "span_loss_coefficient": (lambda value: value >= 0, ("--adaptive-span",)),
    "dropout": (lambda value: 0 <= value < 1, ()),
    "rope_theta": (lambda value: value > 0, ("--positional", "rope")),
    "beta1": (lambda value: 0 <= value < 1, ()),
    "beta2": (lambda value: 0 <= value < 1, ()),
}

INT_FLAGS = {
    **{name: (lambda value: value >= 1, ()) for name in ("batch_size", "eval_interval", "eval_iters", "log_interval",
                                                         "grad_accum_steps", "n_layers", "n_heads", "d_model",
                                                         "n_kv_heads", "head_dim", "d_ff")},
    "max_iters": (lambda value: value >= 1, ("--warmup-iters", 0)),
    "block_size": (lambda value: value >= 1, ("--data", "corpus.txt")),
    "span_ramp": (lambda value: value >= 1, ("--adaptive-span",)),
    "max_span": (lambda value: value >= 1, ("--adaptive-span",)),
    "window": (lambda value: value >= 1, ("--attention", "sliding")),
    "stride": (lambda value: value >= 1, ("--attention", "strided")),
    "warmup_iters": (lambda value: value >= 0, ("--lr-decay-iters", 10**40)),
    "lr_decay_iters": (lambda value: value >= 1, ("--warmup-iters", 0)),
    "sample_tokens": (lambda value: value >= 0, ("--data", "corpus.txt")),
    "seed": (lambda value: value >= 0, ()),
    "bpe_vocab_size": (lambda value: 257 <= value <= 65536, ("--data", "corpus.txt", "--tokenizer", "bpe")),
}


def check_outcome(name, value, valid, needs):
    option = "--" + name.replace("_", "-")
    # "--lr=-inf": a separate "-inf" would read as an option to argparse.
    flags = (*needs, f"{option}={value!r}")
    if valid:
        assert resolve(*flags)[name] == value  # used as given: not replaced by a default
    else:
        # min_lr above lr is found by the schedule, which names its own argument.
        with pytest.raises(SystemExit, match=f"^error: ({option}|{name}) must be "):
            resolve(*flags)


@pytest.mark.parametrize("name", sorted(FLOAT_FLAGS))
@PER_FLAG_EXAMPLES
@given(value=st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([0.0, -0.0, 1.0, 1e-300]))
def test_float_flags_are_used_as_given_or_refused(name, value):
    is_valid, needs = FLOAT_FLAGS[name]
    check_outcome(name, value, math.isfinite(value) and is_valid(value), needs)


@pytest.mark.parametrize("name", sorted(INT_FLAGS))
@PER_FLAG_EXAMPLES
@given(value=st.integers(-10**30, 10**30) | st.integers(-2, 3) | st.sampled_from([256, 257, 65536, 65537]))
def test_int_flags_are_used_as_given_or_refused(name, value):
    is_valid, needs = INT_FLAGS[name]
    check_outcome(name, value, is_valid(value), needs)


@FEW_EXAMPLES
@given(lr=st.floats(0, 10), beta1=st.floats(0, 1, exclude_max=True), beta2=st.floats(0, 1, exclude_max=True),
       weight_decay=st.floats(0, 10), grad_clip=st.floats(0, 1e6))
def test_settings_that_pass_are_accepted_by_the_optimizer(lr, beta1, beta2, weight_decay, grad_clip):
    settings = resolve(f"--lr={lr!r}", f"--min-lr={lr!r}", f"--beta1={beta1!r}", f"--beta2={beta2!r}",
                       f"--weight-decay={weight_decay!r}", f"--grad-clip={grad_clip!r}")
    params = {"w": np.ones((2, 2), dtype=np.float32)}
    optimizer = AdamW(params, lr=settings["lr"], betas=(settings["beta1"], settings["beta2"]),
                      weight_decay=settings["weight_decay"])
    grads = {"w": np.full((2, 2), 3.0, dtype=np.float32)}
    if settings["grad_clip"] > 0:
        clip_grad_norm(grads, settings["grad_clip"])
    optimizer.step(grads, lr=train.learning_rate(settings, 10))
    assert np.all(np.isfinite(params["w"]))


@pytest.mark.parametrize("flags, message", [
    # The reproducers: 0 used to mean "the default" through `value or default`.
    (["--lr-decay-iters", "0"], "error: --lr-decay-iters must be >= 1, got 0"),
    (["--adaptive-span", "--max-span", "0"], "error: --max-span must be >= 1, got 0"),
    (["--grad-clip", "nan"], "error: --grad-clip must be a finite number, got nan"),
    (["--weight-decay", "-1"], "error: --weight-decay must be >= 0, got -1.0"),
    (["--weight-decay", "nan"], "error: --weight-decay must be a finite number, got nan"),
    (["--beta1", "1"], "error: --beta1 must be in [0, 1), got 1.0"),
    (["--beta2", "-0.1"], "error: --beta2 must be in [0, 1), got -0.1"),
    (["--seed", "-1"], "error: --seed must be >= 0, got -1"),
    (["--data", ""], "error: --data must be a text file's path, got ''"),  # "" used to select the sorting task
    # Flags the run would ignore are refused instead.
    (["--max-span", "8"], "error: --max-span 8 is only used with --adaptive-span"),
    (["--data", "c.txt", "--bpe-vocab-size", "300"], "error: --bpe-vocab-size 300 is only used with --tokenizer bpe"),
    (["--schedule", "constant", "--min-lr", "0.1"], "error: --min-lr 0.1 is only used with --schedule cosine"),
    (["--tokenizer", "bpe"], "error: --tokenizer bpe is only used with --data"),
    (["--block-size", "8"], "error: --block-size 8 is only used with --data"),
])
def test_reported_flags_are_clear_errors(flags, message):
    with pytest.raises(SystemExit) as exit_info:
        resolve(*flags)
    assert str(exit_info.value).startswith(message)


def test_small_values_are_used_not_replaced_by_defaults(corpus, tmp_path):
    tiny_run(corpus, tmp_path / "run", "--max-iters", 3, "--eval-interval", 1, "--lr", 1e-3, "--min-lr", 2e-4,
             "--lr-decay-iters", 1, "--adaptive-span", "--max-span", 1)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    rows = [row for row in rows if row.get("kind", "eval") == "eval"]
    # Decay over 1 iteration: min_lr from iteration 2 on (with the default, max-iters 3, it would be higher).
    assert [row["lr"] for row in rows] == pytest.approx([1e-3, 2e-4, 2e-4, 2e-4])
    from checkpoint import load_config
    assert load_config(tmp_path / "run").max_span == 1  # not the block size


def test_errors_reach_the_shell_as_one_line(tmp_path):
    completed = subprocess.run([sys.executable, str(ROOT / "train.py"), "--grad-clip", "nan"], cwd=tmp_path,
                               capture_output=True, text=True)
    assert completed.returncode == 1
    assert completed.stderr == "error: --grad-clip must be a finite number, got nan\n"
    assert not (tmp_path / "out").exists()  # refused before anything was made


# ----------------------------------------------------------------------------------------------
# Resuming: what the run keeps, and a damaged state.json


@pytest.fixture
def char_run(corpus, tmp_path):
    tiny_run(corpus, tmp_path / "run")
    return tmp_path / "run"


@pytest.mark.parametrize("flags, message", [
    (["--tokenizer", "bpe"], "error: --tokenizer bpe: the resumed run has --tokenizer char"),
    (["--preset", "shakespeare-char-cpu"], "error: --preset shakespeare-char-cpu: the resumed run has --preset small"),
    (["--bpe-vocab-size", "300"], "error: --bpe-vocab-size 300 is only used with --tokenizer bpe"),
])
def test_resume_refuses_to_change_what_the_run_keeps(char_run, flags, message):
    with pytest.raises(SystemExit) as exit_info:
        run("--out-dir", char_run, "--resume", *flags)
    assert str(exit_info.value).startswith(message)


def test_resume_keeps_a_bpe_runs_vocabulary_size(corpus):
    saved = resolve("--data", corpus, "--tokenizer", "bpe", "--bpe-vocab-size", 300)
    assert resolve("--resume", "--bpe-vocab-size", 300, saved=saved)["bpe_vocab_size"] == 300
    with pytest.raises(SystemExit, match="^error: --bpe-vocab-size 400: the resumed run has --bpe-vocab-size 300"):
        resolve("--resume", "--bpe-vocab-size", 400, saved=saved)


@pytest.mark.parametrize("edit, message", [
    (dict(lr="0.001"), "error: --lr must be a finite number, got '0.001' (saved in the resumed run's state.json)"),
    (dict(eval_iters=2.5), "error: --eval-iters must be an integer, got 2.5 (saved in"),
    (dict(grad_clip=None), "error: --grad-clip must be a finite number, got None (saved in"),
    (dict(tokenizer="words"), "error: --tokenizer must be one of ['char', 'bpe'], got 'words' (saved in"),
    (dict(adaptive_span=1), "error: --adaptive-span must be true or false, got 1 (saved in"),
    (dict(preset=None, data=None), "error: --block-size 8 is only used with --data"),
    (dict(surprise=1), "error: the resumed run's settings have unknown entries ['surprise']"),
])
def test_resume_checks_the_saved_settings(corpus, edit, message):
    saved = resolve("--data", corpus)  # what a run saves in state.json
    saved.update(edit)
    with pytest.raises(SystemExit) as exit_info:
        resolve("--resume", "--block-size", 8, saved=saved)
    assert str(exit_info.value).startswith(message)


# ----------------------------------------------------------------------------------------------
# Data files, found bad before training


@pytest.mark.parametrize("block_size, split, n_tokens", [(300, "val", 244), (2200, "train", 2196)])
def test_a_data_file_too_short_for_the_block_size_is_found_before_training(tmp_path, block_size, split, n_tokens):
    path = tmp_path / "short.txt"
    path.write_text(CORPUS[:2440])  # 2,440 characters: 2,196 train and 244 val tokens
    with pytest.raises(SystemExit) as exit_info:
        run("--data", path, "--out-dir", tmp_path / "run", "--block-size", block_size)
    message = str(exit_info.value)
    assert message.startswith(f"error: --data {path} (2,440 tokens) is too short for --block-size {block_size}")
    assert f"the {split} split has {n_tokens} tokens, fewer than block_size + 1 = {block_size + 1}" in message
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_bpe_tokens_too_short_for_the_block_size(tmp_path):
    path = tmp_path / "short.txt"
    path.write_text(CORPUS[:600])
    with pytest.raises(SystemExit, match=r"is too short for --block-size 64: the val split has \d+ tokens"):
        run("--data", path, "--out-dir", tmp_path / "run", "--tokenizer", "bpe", "--bpe-vocab-size", 300)


@pytest.mark.parametrize("tokenizer", ["char", "bpe"])
@pytest.mark.parametrize("make, message", [
    (lambda path: None, "text file not found"),
    (lambda path: path.mkdir(), "is a directory, expected a UTF-8 text file"),
    (lambda path: path.write_bytes(b""), "text file is empty"),
    (lambda path: path.write_bytes(b"caf\xe9 " * 100), "is not UTF-8 text"),
])
def test_unusable_data_files_are_clear_errors(tmp_path, tokenizer, make, message):
    path = tmp_path / "data.txt"
    make(path)
    flags = ["--tokenizer", "bpe", "--bpe-vocab-size", 300] if tokenizer == "bpe" else []
    with pytest.raises(SystemExit) as exit_info:
        run("--data", path, "--out-dir", tmp_path / "run", *flags)
    assert str(exit_info.value).startswith(f"error: cannot read --data {path}: ")
    assert message in str(exit_info.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_an_unreadable_data_file_is_a_clear_error(corpus, tmp_path):
    corpus.chmod(0)
    with pytest.raises(SystemExit, match="not readable"):
        run("--data", corpus, "--out-dir", tmp_path / "run")


def test_check_text_file_and_check_block_size(tmp_path):
    with pytest.raises(IsADirectoryError, match="is a directory"):
        check_text_file(tmp_path)
    with pytest.raises(FileNotFoundError, match="absent.txt"):
        check_text_file(tmp_path / "absent.txt")
    dataset = TokenDataset(np.arange(100) % 3, CharTokenizer.from_text("abc"))  # 90 train, 10 val tokens
    dataset.check_block_size(9)
    with pytest.raises(ValueError, match="the val split has 10 tokens, fewer than block_size \\+ 1 = 11"):
        dataset.check_block_size(10)
    with pytest.raises(ValueError, match="block_size"):
        dataset.check_block_size(0)


def test_a_fifo_is_not_a_text_file(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match="not a regular file"):  # reading it would wait forever
        prepare_text_dataset(fifo, cache_dir=tmp_path)


@pytest.mark.parametrize("damage", [
    lambda record: record.update(n_tokens=float(record["n_tokens"])),  # a float count used to reach np.memmap
    lambda record: record.update(n_tokens=str(record["n_tokens"])),
    lambda record: record.update(tokenizer=["a", "b"]),
    lambda record: record.update(tokenizer={"type": "char", "chars": [1, 2]}),
    lambda record: record.pop("tokenizer"),
])
def test_a_damaged_token_cache_record_is_rebuilt(corpus, tmp_path, damage):
    first = prepare_text_dataset(corpus, cache_dir=tmp_path)
    expected = np.array(first.tokens)
    sidecar = first.token_path.with_suffix(".json")
    record = json.loads(sidecar.read_text())
    damage(record)
    sidecar.write_text(json.dumps(record))
    again = prepare_text_dataset(corpus, cache_dir=tmp_path)
    np.testing.assert_array_equal(again.tokens, expected)
    assert again.tokenizer.decode(again.tokens[:14].tolist()) == CORPUS[:14]
    assert json.loads(sidecar.read_text())["n_tokens"] == len(CORPUS)  # the record was written anew


# ----------------------------------------------------------------------------------------------
# --out-dir that cannot be a directory


@pytest.mark.parametrize("relative", ["a-file", "a-file/run"])
def test_out_dir_naming_a_file_is_a_clear_error(corpus, tmp_path, relative):
    (tmp_path / "a-file").write_text("not a directory")
    with pytest.raises(SystemExit, match=f"^error: --out-dir .*{relative}: .*a-file exists and is not a directory"):
        tiny_run(corpus, tmp_path / relative)
    assert (tmp_path / "a-file").read_text() == "not a directory"


# ----------------------------------------------------------------------------------------------
# --plot on damaged metrics


ROWS = [{"iter": step, "train_loss": 3.0 - step / 10, "val_loss": 3.1 - step / 10, "lr": 1e-3, "ms_per_iter": None}
        for step in (0, 5, 10)]


def write_metrics(directory, tail=b""):
    directory.mkdir(exist_ok=True)
    lines = b"".join(json.dumps(row).encode() + b"\n" for row in ROWS)
    (directory / "metrics.jsonl").write_bytes(lines + tail)


@pytest.mark.parametrize("bad_row, problem", [
    (b'{"iter": 15, "val_loss": 1.0}', "line 4 has no 'train_loss'"),
    (b"[15, 1.0, 1.0]", "line 4 is a JSON list, expected an object"),
    (b'{"iter": 15, "train_loss": "1.0", "val_loss": 1.0}', "line 4 has train_loss = '1.0', expected a number"),
    (b'{"iter": true, "train_loss": 1.0, "val_loss": 1.0}', "line 4 has iter = True, expected a number"),
    (b'{"iter": 15, "train_loss": 1.0, "val_loss": \xff}', "line 4 is not UTF-8 text"),
    (b'{"iter": 15, "train_loss": 1.0,', "line 4 is not valid JSON"),
    (b"[" * 100_000, "line 4 is not valid JSON"),
])
def test_plot_refuses_a_bad_row_naming_its_line(tmp_path, bad_row, problem):
    pytest.importorskip("matplotlib", reason="matplotlib is optional: pip install matplotlib")
    write_metrics(tmp_path / "run", bad_row + b"\n" + json.dumps(ROWS[0]).encode() + b"\n")
    with pytest.raises(SystemExit) as exit_info:
        run("--plot", tmp_path / "run")
    assert str(exit_info.value).startswith(f"error: {tmp_path / 'run' / 'metrics.jsonl'}: {problem}")
    assert not (tmp_path / "run" / "loss.png").exists()


@pytest.mark.parametrize("unfinished", [b'{"iter": 15, "train_lo', b'{"iter": 15, "train_loss": 1.0, "val_loss": \xc3'])
def test_plot_skips_an_unfinished_last_line_with_a_warning(tmp_path, capsys, unfinished):
    image = pytest.importorskip("matplotlib.image", reason="matplotlib is optional: pip install matplotlib")
    write_metrics(tmp_path / "run", unfinished)
    run("--plot", tmp_path / "run")
    captured = capsys.readouterr()
    assert "warning:" in captured.err and "skipped the unfinished last line 4" in captured.err
    assert image.imread(tmp_path / "run" / "loss.png").std() > 0.01  # the three good rows were drawn


@pytest.mark.parametrize("content", [b"", b"\n\n"])
def test_plot_of_no_rows_is_a_clear_error(tmp_path, content):
    pytest.importorskip("matplotlib", reason="matplotlib is optional: pip install matplotlib")
    (tmp_path / "metrics.jsonl").write_bytes(content)
    with pytest.raises(SystemExit, match="has no rows to plot"):
        run("--plot", tmp_path)


# ----------------------------------------------------------------------------------------------
# The optimizer's Python API


@pytest.mark.parametrize("hyperparameters, message", [
    ({"lr": math.inf}, "learning rate must be a finite number"),
    ({"lr": "0.1"}, "learning rate must be a finite number"),
    ({"betas": (0.9, math.nan)}, r"betas\[1\] must be a finite number"),
    ({"betas": (0.9,)}, "betas must be a pair"),
    ({"betas": 0.9}, "betas must be a pair"),
    ({"eps": math.inf}, "eps must be a finite number"),
    ({"eps": math.nan}, "eps must be a finite number"),
    ({"weight_decay": math.inf}, "weight_decay must be a finite number"),
    ({"weight_decay": True}, "weight_decay must be a finite number"),
])
def test_adamw_refuses_bad_hyperparameters(hyperparameters, message):
    with pytest.raises(ValueError, match=message):
        AdamW({"w": np.zeros((2, 2))}, **hyperparameters)


def test_adamw_refuses_params_that_are_not_a_dict():
    with pytest.raises(ValueError, match="params must be a dict"):
        AdamW([np.zeros(2)])


@FEW_EXAMPLES
@given(lr=st.floats(), beta1=st.floats(), beta2=st.floats(), eps=st.floats(), weight_decay=st.floats())
def test_adamw_takes_finite_steps_or_refuses(lr, beta1, beta2, eps, weight_decay):
    params = {"w": np.ones((2, 3)), "b": np.ones(3)}
    try:
        optimizer = AdamW(params, lr=lr, betas=(beta1, beta2), eps=eps, weight_decay=weight_decay)
    except ValueError:
        assert not (0 <= lr < math.inf and 0 <= beta1 < 1 and 0 <= beta2 < 1 and 0 < eps < math.inf
                    and 0 <= weight_decay < math.inf)
        return
    with np.errstate(over="ignore"):  # a huge lr may overflow; what matters is that nothing was refused wrongly
        optimizer.step({"w": np.full((2, 3), 0.5), "b": np.full(3, -0.5)})
    assert 0 <= lr < math.inf and 0 < eps < math.inf and 0 <= weight_decay < math.inf


@pytest.mark.parametrize("max_norm", [math.nan, math.inf, "1", None])
def test_clip_grad_norm_refuses_a_max_norm_that_is_not_finite(max_norm):
    grads = {"a": np.array([3.0, 4.0])}
    with pytest.raises(ValueError, match="max_norm must be a finite number"):
        clip_grad_norm(grads, max_norm)
    np.testing.assert_array_equal(grads["a"], [3.0, 4.0])


@pytest.mark.parametrize("arguments, message", [
    ({"lr": math.nan}, "lr must be a finite number"),
    ({"min_lr": math.nan}, "min_lr must be a finite number"),
    ({"warmup_iters": True}, "warmup_iters must be a non-negative integer"),
    ({"decay_iters": 10.0}, "decay_iters must be a non-negative integer"),
    ({"decay_iters": None}, "decay_iters must be a non-negative integer"),
])
def test_lr_schedule_refuses_bad_arguments(arguments, message):
    with pytest.raises(ValueError, match=message):
        lr_schedule(3, **{"lr": 1e-3, "min_lr": 1e-4, "warmup_iters": 2, "decay_iters": 10, **arguments})


# ----------------------------------------------------------------------------------------------
# visualize.py --out


def test_visualize_out_without_suffix_writes_and_prints_the_png(tmp_path, capsys):
    pytest.importorskip("matplotlib", reason="matplotlib is optional: pip install matplotlib")
    visualize.main(["patterns", "--seq-len", "8", "--out", str(tmp_path / "DIR")])
    written = tmp_path / "DIR.png"
    assert capsys.readouterr().out == f"written to {written}\n"
    assert written.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (tmp_path / "DIR").exists()


def test_visualize_out_with_a_suffix_picks_the_format(tmp_path, capsys):
    pytest.importorskip("matplotlib", reason="matplotlib is optional: pip install matplotlib")
    visualize.main(["patterns", "--seq-len", "8", "--out", str(tmp_path / "masks.svg")])
    assert capsys.readouterr().out == f"written to {tmp_path / 'masks.svg'}\n"
    assert b"<svg" in (tmp_path / "masks.svg").read_bytes()[:500]


@pytest.mark.parametrize("out, message", [
    ("masks.txt", "unknown picture format '.txt'"),
    (".", "is a directory; give a file name"),
    ("no-such-dir/masks.png", "cannot write no-such-dir/masks.png"),
])
def test_visualize_bad_out_is_a_clear_error(tmp_path, monkeypatch, out, message):
    pytest.importorskip("matplotlib", reason="matplotlib is optional: pip install matplotlib")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match="^error: .*" + message):
        visualize.main(["patterns", "--seq-len", "8", "--out", out])


@pytest.mark.parametrize("seq_len", ["0", "-3", str(10**6)])
def test_visualize_seq_len_out_of_range_is_refused_before_drawing(tmp_path, seq_len):
    pytest.importorskip("matplotlib", reason="matplotlib is optional: pip install matplotlib")
    with pytest.raises(SystemExit, match="^error: --seq-len must be in"):
        visualize.main(["patterns", "--seq-len", seq_len, "--out", str(tmp_path / "p.png")])


def test_visualize_refuses_a_prompt_too_long_to_draw(tmp_path):
    pytest.importorskip("matplotlib", reason="matplotlib is optional: pip install matplotlib")
    from checkpoint import save_checkpoint
    from transformer_lm import TransformerConfig, TransformerLM
    tokenizer = CharTokenizer.from_text("ab")
    model = TransformerLM(TransformerConfig(vocab_size=2, d_model=4, n_heads=1, n_layers=1, max_seq_len=8), seed=0)
    save_checkpoint(tmp_path / "run", model, tokenizer=tokenizer)  # sinusoidal positions: no length limit
    with pytest.raises(SystemExit, match="^error: the prompt is 2000 tokens; at most 1024 can be drawn"):
        visualize.main(["attention", "--checkpoint", str(tmp_path / "run"), "--prompt", "ab" * 1000,
                        "--out", str(tmp_path / "a.png")])
    assert not (tmp_path / "a.png").exists()
