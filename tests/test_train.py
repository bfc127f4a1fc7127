import json
import math
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT, run_train_cli

import train

run = run_train_cli


def tiny_run(corpus, out_dir, *flags):
    return run("--data", corpus, "--out-dir", out_dir, "--n-layers", 2, "--n-heads", 2, "--d-model", 16,
               "--block-size", 16, "--batch-size", 4, "--eval-iters", 2, "--warmup-iters", 1, "--sample-tokens", 0,
               *flags)


def eval_rows(out_dir):
    rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    return [row for row in rows if row["kind"] == "eval"]


def arrays(path):
    with np.load(path) as archive:
        return {name: archive[name] for name in archive.files}


def test_resume_continues_exactly(corpus, tmp_path):
    common = ("--dtype", "float64", "--dropout", 0.1, "--lr-decay-iters", 8, "--warmup-iters", 2,
              "--eval-interval", 3, "--seed", 5)
    tiny_run(corpus, tmp_path / "straight", "--max-iters", 8, *common)
    tiny_run(corpus, tmp_path / "resumed", "--max-iters", 4, *common)
    run("--out-dir", tmp_path / "resumed", "--resume", "--max-iters", 8)
    for name in ("model.npz", "optimizer.npz"):
        straight = arrays(tmp_path / "straight" / "checkpoint" / name)
        resumed = arrays(tmp_path / "resumed" / "checkpoint" / name)
        assert straight.keys() == resumed.keys()
        for key, value in straight.items():
            np.testing.assert_allclose(resumed[key], value, rtol=1e-12, atol=1e-12)
    # The weights did move: a resume that restored nothing would differ from a fresh start.
    fresh = arrays(tmp_path / "straight" / "checkpoint" / "model.npz")["decoder.token_embedding.weight"]
    assert json.loads((tmp_path / "resumed" / "checkpoint" / "state.json").read_text())["iteration"] == 8
    assert not np.allclose(fresh, 0.0)


def test_byte_level_bpe_tokenizer_option(corpus, tmp_path, capsys):
    tiny_run(corpus, tmp_path / "run", "--max-iters", 3, "--tokenizer", "bpe", "--bpe-vocab-size", 300,
             "--sample-tokens", 5)
    from checkpoint import load_tokenizer
    from transformer_lm import TransformerLM
    tokenizer = load_tokenizer(tmp_path / "run")
    assert tokenizer.vocab_size == 300 == TransformerLM.load(tmp_path / "run").config.vocab_size
    assert tokenizer.decode(tokenizer.encode("Speak, speak.")) == "Speak, speak."
    assert "sample:" in capsys.readouterr().out
    run("--out-dir", tmp_path / "run", "--resume", "--max-iters", 5)  # resumes with the saved tokenizer


def test_loss_falls_on_a_tiny_corpus_and_metrics_are_logged(corpus, tmp_path, capsys):
    tiny_run(corpus, tmp_path / "run", "--max-iters", 60, "--eval-interval", 30, "--lr", 3e-3, "--log-interval", 10)
    all_rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all_rows[0]["kind"] == "settings" and all_rows[0]["resumed"] is False
    assert [row["iter"] for row in all_rows if row["kind"] == "train"] == list(range(60))
    rows = eval_rows(tmp_path / "run")
    assert [row["iter"] for row in rows] == [0, 30, 60]
    assert set(rows[0]) == {"kind", "iter", "train_loss", "val_loss", "lr", "ms_per_iter"}
    assert rows[-1]["train_loss"] < rows[0]["train_loss"] - 0.5
    # The final row: bits per byte of the validation split; the corpus is ASCII, one byte per character token,
    # so it is the val loss in bits (measured on every window instead of eval_iters random ones).
    assert 0.5 < rows[-1]["val_bits_per_byte"] / (rows[-1]["val_loss"] / math.log(2)) < 1.5
    output = capsys.readouterr().out
    assert "iter 10: loss" in output and "tokens/s" in output and "eta" in output
    assert "step 60: train loss" in output and "val bits per byte" in output


def test_the_sorting_task_learns(tmp_path, capsys):
    run("--out-dir", tmp_path / "sort", "--max-iters", 250, "--eval-interval", 250)
    output = capsys.readouterr().out
    accuracy = float(output.split("held-out sorting problems: ")[1].split("%")[0])
    assert accuracy >= 90.0


def test_nan_loss_stops_training_and_keeps_the_last_checkpoint(corpus, tmp_path):
    tiny_run(corpus, tmp_path / "run", "--max-iters", 3)
    before = {path.name: path.read_bytes() for path in (tmp_path / "run" / "checkpoint").iterdir()}
    with pytest.raises(SystemExit, match=r"loss became nan at iteration \d+; stopping. The last good checkpoint"):
        run("--out-dir", tmp_path / "run", "--resume", "--max-iters", 20, "--lr", 1e30, "--grad-clip", 0,
            "--schedule", "constant")
    after = {path.name: path.read_bytes() for path in (tmp_path / "run" / "checkpoint").iterdir()}
    assert after == before


def test_plot_draws_the_loss_curves(corpus, tmp_path):
    image = pytest.importorskip("matplotlib.image", reason="matplotlib is optional: pip install matplotlib")
    tiny_run(corpus, tmp_path / "run", "--max-iters", 4, "--eval-interval", 2)
    run("--plot", tmp_path / "run")
    pixels = image.imread(tmp_path / "run" / "loss.png")
    assert pixels.shape[:2] == (450, 700)
    assert pixels.std() > 0.01  # not blank


@pytest.mark.parametrize("flags,message", [
    (["--data", "no-such-file.txt"], "error: cannot read --data no-such-file.txt"),
    (["--resume", "--out-dir", "no-such-run"], "error: --resume found no readable run in no-such-run"),
    (["--max-iters", "0"], "error: --max-iters must be >= 1"),
    (["--min-lr", "0.5", "--lr", "0.1"], "error: min_lr must be in [0, lr=0.1], got 0.5"),
    (["--plot", "no-such-run"], "error: cannot read no-such-run/metrics.jsonl"),
])
def test_cli_errors_are_one_clear_line(tmp_path, flags, message):
    completed = subprocess.run([sys.executable, str(ROOT / "train.py"), *flags], cwd=tmp_path,
                               capture_output=True, text=True)
    assert completed.returncode == 1
    assert completed.stderr.strip().splitlines() == [completed.stderr.strip()]
    assert message in completed.stderr


def help_entries(text):
    """flag -> its help text, from the option lines of an argparse --help output."""
    entries, current = {}, None
    for line in text.splitlines():
        stripped = line.strip()
        if line.startswith("  -"):
            current = stripped.split()[0].rstrip(",")
            entries[current] = stripped
        elif current and line.startswith(" " * 10):
            entries[current] += " " + stripped
        else:
            current = None
    return entries


def test_help_lists_every_flag_with_its_default_and_every_preset():
    completed = subprocess.run([sys.executable, str(ROOT / "train.py"), "--help"], capture_output=True, text=True,
                               env={**os.environ, "COLUMNS": "200"})
    entries = help_entries(completed.stdout)
    settings = train.preset_settings("small")  # the defaults
    for action in train.build_parser()._actions:
        flag = action.option_strings[0]
        assert flag in entries, flag
        default = settings.get(action.dest)
        if default is not None:
            assert f"(default: {default})" in " ".join(entries[flag].split()), flag
    # Every preset, with each value it changes.
    epilog = " ".join(completed.stdout.split("presets (")[1].split())
    for name in train.PRESET_NAMES:
        values = [f"{key}={value}" for key, value in train.preset_settings(name).items() if settings[key] != value]
        line = epilog.split(f" {name} ")[1]
        assert all(value in line for value in values), name


def test_readme_lists_every_flag_and_preset():
    readme = (ROOT / "README.md").read_text()
    for action in train.build_parser()._actions:
        assert any(f"`{flag}" in readme for flag in action.option_strings), action.option_strings
    for name in train.PRESET_NAMES:
        assert f"`{name}`" in readme


@pytest.mark.parametrize("preset", train.PRESET_NAMES)
@pytest.mark.parametrize("max_iters", [1, 2, 20])
def test_a_short_run_shortens_the_warmup_and_ends_at_min_lr(preset, max_iters):
    settings = {**train.preset_settings(preset), "max_iters": max_iters}
    rates = [train.learning_rate(settings, iteration) for iteration in range(max_iters + 1)]
    assert all(0 < rate <= settings["lr"] * (1 + 1e-12) for rate in rates[:-1])
    assert rates[-1] == pytest.approx(settings["min_lr"])  # the whole schedule, compressed into the run
    warmup, horizon = train.schedule_horizon(settings)
    assert horizon == max_iters and warmup < horizon


@pytest.mark.parametrize("preset", ["sort", "small", "shakespeare-char-cpu", "shakespeare-char-modern", "demo"])
def test_short_runs_with_each_preset_do_not_fail(preset, corpus, tmp_path, capsys):
    # nanogpt-cpu is shakespeare-char-cpu's shape; gpt2 (124M parameters, 1024-token windows) is too large for a
    # test: the schedules of all of them are checked above.
    data = () if preset == "sort" else ("--data", corpus)
    for max_iters in (1, 20):
        run("--preset", preset, *data, "--out-dir", tmp_path / f"run-{max_iters}", "--max-iters", max_iters,
            "--eval-iters", 1, "--sample-tokens" if data else "--seed", 0)
        assert eval_rows(tmp_path / f"run-{max_iters}")[-1]["iter"] == max_iters
    assert "cut to a tenth of the horizon" in capsys.readouterr().out


def lrs_of_train_rows(out_dir):
    rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    return {row["iter"]: row["lr"] for row in rows if row["kind"] == "train"}


def test_extending_a_finished_run_keeps_its_decay_horizon(corpus, tmp_path, capsys):
    tiny_run(corpus, tmp_path / "run", "--max-iters", 8, "--lr", 1e-3, "--min-lr", 1e-4)
    tiny_run(corpus, tmp_path / "moved", "--max-iters", 8, "--lr", 1e-3, "--min-lr", 1e-4)
    capsys.readouterr()
    run("--out-dir", tmp_path / "run", "--resume", "--max-iters", 12)
    assert "cosine decay from 1.00e-03 to 1.00e-04 at iteration 8, then 1.00e-04 until iteration 12" in \
        capsys.readouterr().out
    lrs = lrs_of_train_rows(tmp_path / "run")
    assert [lrs[iteration] for iteration in range(8, 12)] == pytest.approx([1e-4] * 4)
    assert lrs[7] > 1e-4  # still decaying before the saved horizon
    # --lr-decay-iters moves the horizon: iteration 8 is then mid-decay again.
    run("--out-dir", tmp_path / "moved", "--resume", "--max-iters", 12, "--lr-decay-iters", 12)
    assert lrs_of_train_rows(tmp_path / "moved")[8] > 2e-4


def test_resuming_below_the_saved_iteration_is_an_error(corpus, tmp_path):
    tiny_run(corpus, tmp_path / "run", "--max-iters", 6)
    with pytest.raises(SystemExit, match="error: the run in .* is at iteration 6, past --max-iters 4"):
        run("--out-dir", tmp_path / "run", "--resume", "--max-iters", 4)


def test_the_eta_reads_steady_state_steps_and_counts_the_evaluations():
    # The first steps (slow: allocations, caches) are left out; the median ignores one slow step.
    steps = [5.0, 5.0, 5.0] + [0.1] * 20 + [3.0]
    # After iteration 23 of 100: 76 steps left at 0.1 s; evaluations at 25, 50, 75, 100 at 2 s each.
    assert train.estimate_remaining(steps, 2.0, 23, 100, 25) == pytest.approx(76 * 0.1 + 4 * 2.0)
    # max_iters not a multiple of eval_interval: the final evaluation counts too (30, 60, 90 and 100).
    assert train.estimate_remaining(steps, 1.0, 23, 100, 30) == pytest.approx(76 * 0.1 + 4 * 1.0)
    assert train.estimate_remaining(steps[:3], 2.0, 2, 100, 25) is None  # nothing steady measured yet
    assert train.format_eta(None) == "eta --"
    assert [train.format_eta(seconds) for seconds in (59.9, 61, 3725)] == ["eta 59s", "eta 1m01s", "eta 1h02m"]


def test_ctrl_c_saves_the_current_iteration_and_exits_130(corpus, tmp_path):
    out_dir = tmp_path / "run"
    flags = ["--data", str(corpus), "--out-dir", str(out_dir), "--n-layers", "1", "--n-heads", "2", "--d-model", "8",
             "--block-size", "8", "--batch-size", "2", "--eval-iters", "1", "--max-iters", "1000000",
             "--log-interval", "1", "--eval-interval", "1000000", "--sample-tokens", "0"]
    process = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *flags], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        for line in process.stdout:
            if line.startswith("iter 0:"):
                break
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 130
    assert "Traceback" not in stderr
    assert "interrupted: saved the run at iteration " in stderr and str(out_dir / "checkpoint") in stderr
    from checkpoint import read_checkpoint
    iteration = read_checkpoint(out_dir / "checkpoint", training=True).state["iteration"]
    assert iteration >= 1 and f"at iteration {iteration} in" in stderr
    run("--out-dir", out_dir, "--resume", "--max-iters", iteration + 2)
    assert read_checkpoint(out_dir / "checkpoint", training=True).state["iteration"] == iteration + 2


def test_a_second_ctrl_c_during_the_save_exits_130_and_keeps_the_previous_checkpoint(corpus, tmp_path, monkeypatch,
                                                                                       capsys):
    tiny_run(corpus, tmp_path / "run", "--max-iters", 2)
    before = {path.name: path.read_bytes() for path in (tmp_path / "run" / "checkpoint").iterdir()}

    class Requested:
        """A first Ctrl-C already received when the loop starts."""
        def __enter__(self):
            return {"requested": True}

        def __exit__(self, *exc):
            return False

    def second_ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(train, "deferred_interrupt", Requested)
    monkeypatch.setattr(train, "save_checkpoint", second_ctrl_c)
    with pytest.raises(SystemExit) as exit_info:
        run("--out-dir", tmp_path / "run", "--resume", "--max-iters", 5)
    assert exit_info.value.code == 130
    assert "stopped without saving; the last complete checkpoint, if any, is kept" in capsys.readouterr().err
    assert {path.name: path.read_bytes() for path in (tmp_path / "run" / "checkpoint").iterdir()} == before


def test_gradient_accumulation_equals_one_large_batch():
    from transformer_lm import TransformerConfig, TransformerLM
    model = TransformerLM(TransformerConfig(vocab_size=9, d_model=8, n_heads=2, n_layers=1, max_seq_len=6,
                                            dropout=0.0, dtype="float64"), seed=0)
    rng = np.random.default_rng(1)
    ids, targets = rng.integers(0, 9, (4, 6)), rng.integers(0, 9, (4, 6))

    class HalvesTask:
        """Serves the batch's two halves in turn, as two micro-batches."""
        calls = 0

        def get_batch(self, split, batch_size, rng):
            half = slice(0, 2) if self.calls % 2 == 0 else slice(2, 4)
            self.calls += 1
            return ids[half], targets[half]

    loss, grads = train.accumulate_step(model, HalvesTask(), {"grad_accum_steps": 2, "batch_size": 2}, rng)
    full_loss = model.loss(ids, targets)
    full_grads = model.backward()
    assert loss == pytest.approx(full_loss, rel=1e-12)
    for name, grad in full_grads.items():
        np.testing.assert_allclose(grads[name], grad, rtol=1e-10, atol=1e-14)


def test_adaptive_span_training_logs_and_clamps_the_spans(corpus, tmp_path, capsys):
    tiny_run(corpus, tmp_path / "run", "--max-iters", 6, "--eval-interval", 3, "--adaptive-span", "--max-span", 8,
             "--span-ramp", 4, "--lr", 0.5, "--span-loss-coefficient", 0.0)
    assert "layer 1 spans:" in capsys.readouterr().out
    rows = eval_rows(tmp_path / "run")
    spans = np.array(rows[-1]["spans"])
    assert spans.shape == (2, 2)
    # The spans learn (they start at 0), and a large learning rate would push them out of [0, max_span]
    # unless they were clamped after each step.
    assert np.any(spans != np.array(rows[0]["spans"]))
    assert np.all((spans >= 0.0) & (spans <= 8.0))


def test_llama_component_flags_reach_the_model_and_a_resumed_run_keeps_them(corpus, tmp_path):
    tiny_run(corpus, tmp_path / "run", "--max-iters", 2, "--norm", "rmsnorm", "--activation", "swiglu", "--no-bias")
    from checkpoint import load_config
    config = load_config(tmp_path / "run")
    assert (config.norm, config.activation, config.bias) == ("rmsnorm", "swiglu", False)
    tiny_run(corpus, tmp_path / "run", "--resume", "--max-iters", 3)
    assert load_config(tmp_path / "run") == config


def test_attention_pattern_flags_reach_the_model(corpus, tmp_path):
    tiny_run(corpus, tmp_path / "run", "--max-iters", 2, "--attention", "sliding", "--window", 4)
    from checkpoint import load_config
    config = load_config(tmp_path / "run")
    assert (config.attention, config.window) == ("sliding", 4)
    with pytest.raises(SystemExit, match="window must be a positive integer"):
        tiny_run(corpus, tmp_path / "bad", "--max-iters", 2, "--attention", "sliding")
