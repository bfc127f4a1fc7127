"""The GPU check (issue 14): one script, at most ~8 minutes on one NVIDIA GPU, that writes a JSON of results.

    pip install -r requirements-gpu.txt          # CuPy; PyTorch with CUDA for the comparisons
    python gpu_check.py --out gpu-check.json     # on the GPU machine
    python gpu_check.py --dry-run                # here: every step at toy sizes, NumPy as the "device", torch on CPU

1. The GPU tests (also run by pytest where CuPy sees a GPU, tests/test_device.py): float32 logits and every
   gradient on the GPU equal a float64 CPU model's within 1e-4 relative, for GPT-2's layers, the modern ones (RoPE,
   RMSNorm, SwiGLU, grouped-query attention), the sparse patterns, adaptive span and tiled attention; bf16 and fp16
   within precision.ERROR_BOUNDS; KV-cache generation equals full recomputation; a short training run follows the
   CPU's loss curve.
2. nanoGPT's shakespeare-char GPU configuration (6 layers, 6 heads, 384 wide, batch 64 x 256): ms/iter for ours in
   fp32 and bf16 against PyTorch eager in fp32 and under bf16 autocast (the PyTorch peer, torch_peer.py, has no
   dropout: the timings run both without it), then a training run with dropout 0.2 toward 5000 iterations for the
   time left, validation losses every 250 iterations as in nanoGPT's log (on VAL_BATCHES batches, not 200).
3. GPT-2 small: forward at T=1024, batch 8, and greedy KV-cache generation at batch 1 and 32, against PyTorch.
Each part writes the JSON as it finishes, so a run cut short still leaves what it measured; a part that fails
records its error and the next one runs.
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import numpy as np

import device
from generation import greedy_without_cache
from optim import AdamW, clip_grad_norm, lr_schedule
from precision import ERROR_BOUNDS, INITIAL_LOSS_SCALE
from precision import relative_error as host_relative_error
from transformer_config import TransformerConfig
from transformer_lm import TransformerLM

ROOT = Path(__file__).resolve().parent
SHAKESPEARE = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"

# Errors against the float64 CPU model are precision.relative_error (relative to the reference's largest magnitude),
# bounded by precision.ERROR_BOUNDS: 1e-4 for float32, 8 unit roundoffs for bf16 and fp16.
# The short training run on the device against the same run on the CPU (both float32): the largest relative gap
# between their losses at any step.
TRAINING_TOLERANCE = 1e-3
VAL_BATCHES = 20

# The shapes of the two runs: the GPU's, and the dry run's toy sizes (the whole script in a few seconds).
SIZES = {
    "gpu": dict(batch=4, seq=64, d_model=64, n_heads=4, n_layers=2, vocab=97, tile=16, train_steps=30,
                prompt=8, new_tokens=16,
                shakespeare=dict(n_layers=6, n_heads=6, d_model=384, block=256, batch=64, timing_iters=20),
                gpt2=dict(preset="gpt2", seq=1024, batch=8, prompt=32, new_tokens=64, generation_batches=(1, 32))),
    "dry": dict(batch=2, seq=32, d_model=16, n_heads=4, n_layers=2, vocab=31, tile=8, train_steps=5,
                prompt=4, new_tokens=4,
                shakespeare=dict(n_layers=1, n_heads=2, d_model=16, block=16, batch=4, timing_iters=2),
                gpt2=dict(preset=None, seq=32, batch=2, prompt=4, new_tokens=4, generation_batches=(1, 2))),
}
# nanoGPT's config/train_shakespeare_char.py.
NANOGPT = dict(dropout=0.2, lr=1e-3, min_lr=1e-4, warmup_iters=100, max_iters=5000, beta2=0.99, weight_decay=0.1,
               grad_clip=1.0, eval_interval=250)


def synchronize(xp: ModuleType) -> None:
    """Wait for the device's queued work (timings); nothing to wait for with NumPy."""
    if xp is not np:
        xp.cuda.Device().synchronize()


def relative_error(value: object, reference: np.ndarray) -> float:
    """precision.relative_error of a device array against a host reference."""
    return host_relative_error(device.to_host(value).astype(np.float64), reference)


# ------------------------------------------------------------------------------------------------------- the tests

def test_configs(size: dict) -> dict[str, TransformerConfig]:
    """One small model per family of layers the device must run."""
    base = dict(vocab_size=size["vocab"], d_model=size["d_model"], n_heads=size["n_heads"], n_layers=size["n_layers"],
                max_seq_len=size["seq"], dropout=0.0)
    gpt2 = dict(base, positional="learned", norm_first=True, init="gpt2")
    return {
        "gpt2": TransformerConfig(**gpt2),
        "post_ln_sinusoidal": TransformerConfig(**base, norm_first=False, activation="gelu"),
        "modern": TransformerConfig(**base, positional="rope", norm="rmsnorm", activation="swiglu",
                                    n_kv_heads=size["n_heads"] // 2, bias=False),
        "sliding": TransformerConfig(**gpt2, attention="sliding", window=size["seq"] // 4),
        "strided": TransformerConfig(**gpt2, attention="strided", stride=size["seq"] // 8),
        "fixed": TransformerConfig(**gpt2, attention="fixed", stride=size["seq"] // 4, summary=2),
        "adaptive_span": TransformerConfig(**gpt2, adaptive_span=True, max_span=size["seq"] // 2, span_ramp=4),
        "tiled": TransformerConfig(**gpt2),
    }


def model_pair(name: str, config: TransformerConfig, size: dict, device_name: str, precision: str = "fp32"
               ) -> tuple[TransformerLM, TransformerLM]:
    """(the float64 CPU reference, the same weights in float32 on the device, in `precision`)."""
    reference = prepare(name, TransformerLM(dataclasses.replace(config, dtype="float64"), seed=0), size)
    model = prepare(name, TransformerLM(dataclasses.replace(config, precision=precision), seed=0), size)
    for parameter_name, value in model.parameters().items():
        value[...] = reference.parameters()[parameter_name]
    return reference, model.to(device_name)


def prepare(name: str, model: TransformerLM, size: dict) -> TransformerLM:
    """What test config `name` needs beyond its TransformerConfig, on a model still on the host."""
    for pattern in model.attention_patterns():
        if name == "tiled":  # tiles of `tile` queries from `tile` tokens on (the default starts at 512)
            pattern.tiled_from = pattern.tile_size = size["tile"]
        if name == "adaptive_span":  # spans part-way, so that the ramp (and its gradient) is inside the window
            pattern.params["span"][...] = np.linspace(0.1, 0.6, model.config.n_heads)
    return model


def gradient_check(name: str, config: TransformerConfig, size: dict, device_name: str, precision: str = "fp32"
                   ) -> dict:
    """Logits, loss and every gradient of the device model against the float64 CPU reference: relative errors."""
    reference, model = model_pair(name, config, size, device_name, precision)
    rng = np.random.default_rng(1)
    ids = rng.integers(0, config.vocab_size, (size["batch"], size["seq"]))
    targets = rng.integers(0, config.vocab_size, (size["batch"], size["seq"]))
    errors = {"logits": relative_error(model.forward(ids), reference.forward(ids))}
    reference_loss, loss = reference.loss(ids, targets), model.loss(ids, targets)
    errors["loss"] = abs(loss - reference_loss) / abs(reference_loss)
    # fp16 runs scale the loss (as its training does), else small gradients would flush to zero in the products
    scale = INITIAL_LOSS_SCALE if precision == "fp16" else 1.0
    reference_grads = reference.backward()
    grads = {parameter: grad / scale for parameter, grad in model.backward(loss_scale=scale).items()}
    errors.update({parameter: relative_error(grads[parameter], reference_grads[parameter])
                   for parameter in reference_grads})
    tolerance = ERROR_BOUNDS[precision]
    worst = max(errors, key=errors.get)
    return dict(passed=errors[worst] <= tolerance, tolerance=tolerance, worst=worst, worst_error=errors[worst],
                logits_error=errors["logits"], loss_error=errors["loss"])


def generation_check(config: TransformerConfig, size: dict, device_name: str) -> dict:
    """Greedy KV-cache generation (and with left-padded prompts) against recomputing the whole sequence per token."""
    model = TransformerLM(config, seed=0).to(device_name).eval()
    prompt = np.random.default_rng(2).integers(0, config.vocab_size, (size["batch"], size["prompt"]))
    cached = model.generate(prompt, size["new_tokens"], temperature=0)
    recomputed = greedy_without_cache(model, prompt, size["new_tokens"])
    ragged = [list(row[: size["prompt"] - index]) for index, row in enumerate(prompt)]
    padded = model.generate(ragged, size["new_tokens"], temperature=0)
    alone = [model.generate(row, size["new_tokens"], temperature=0).tolist() for row in ragged]
    return dict(passed=bool(np.array_equal(cached, recomputed)) and padded == alone,
                equal_tokens=float(np.mean(cached == recomputed)), left_padding_equal=padded == alone)


def training_losses(config: TransformerConfig, size: dict, device_name: str) -> list[float]:
    """Losses of a short AdamW run (nanoGPT's settings, clipping included) on a learnable sequence task."""
    model = TransformerLM(config, seed=0).to(device_name)
    optimizer = AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.99), weight_decay=0.1)
    rng, losses = np.random.default_rng(3), []
    for _ in range(size["train_steps"]):
        starts = rng.integers(0, config.vocab_size, (size["batch"], 1))
        ids = (starts + np.arange(size["seq"] + 1)) % config.vocab_size  # each token follows from the last
        losses.append(model.loss(ids[:, :-1], ids[:, 1:]))
        grads = model.backward()
        clip_grad_norm(grads, 1.0)
        optimizer.step(grads)
    return losses


def run_tests(device_name: str, size: dict) -> dict:
    """The GPU tests (see the module docstring): name -> result with "passed"."""
    configs = test_configs(size)
    results = {f"gradients_{name}": gradient_check(name, config, size, device_name)
               for name, config in configs.items()}
    for precision in ("bf16", "fp16"):
        results[f"gradients_gpt2_{precision}"] = guarded(
            lambda precision=precision: gradient_check("gpt2", configs["gpt2"], size, device_name, precision))
    for name in ("gpt2", "modern", "sliding"):
        results[f"generation_{name}"] = generation_check(configs[name], size, device_name)
    cpu_losses = training_losses(configs["gpt2"], size, "cpu")
    device_losses = training_losses(configs["gpt2"], size, device_name)
    gap = max(abs(ours - cpu) / cpu for ours, cpu in zip(device_losses, cpu_losses))
    results["training_curve"] = dict(passed=gap <= TRAINING_TOLERANCE, tolerance=TRAINING_TOLERANCE, largest_gap=gap,
                                     cpu_losses=cpu_losses, device_losses=device_losses)
    return results


def guarded(part: Callable[[], dict]) -> dict:
    """part(), or its error as the result (passed False), so that one failing part does not stop the script."""
    try:
        return part()
    except Exception as error:  # noqa: BLE001  (recorded, not hidden: the JSON carries the traceback's last line)
        traceback.print_exc()
        return dict(passed=False, error=f"{type(error).__name__}: {error}")


# -------------------------------------------------------------------------------------------------- the timings

def median_ms(step: Callable[[], object], iterations: int, sync: Callable[[], None], warmup: int = 3) -> float:
    """Median milliseconds of `step`, each timed to the device's completion, after warm-up calls (CuPy compiles
    its kernels on first use)."""
    for _ in range(warmup):
        step()
    sync()
    times = []
    for _ in range(iterations):
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


def shakespeare_text(path: Path, dry_run: bool) -> str:
    if path.exists():
        return path.read_text(encoding="utf-8")
    if dry_run:  # the dry run needs no data
        return "First Citizen:\nBefore we proceed any further, hear me speak.\n" * 50
    raise FileNotFoundError(f"{path} is missing: pass --data with tiny Shakespeare's input.txt")


class CharData:
    """nanoGPT's shakespeare_char: characters as tokens, the first 90% for training, random windows."""

    def __init__(self, text: str, block: int) -> None:
        lookup = {char: index for index, char in enumerate(sorted(set(text)))}
        tokens = np.fromiter((lookup[char] for char in text), dtype=np.int64, count=len(text))
        split = int(0.9 * len(tokens))
        self.splits, self.vocab_size, self.block = {"train": tokens[:split], "val": tokens[split:]}, len(lookup), block

    def batch(self, split: str, batch_size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        tokens = self.splits[split]
        starts = rng.integers(0, len(tokens) - self.block - 1, batch_size)[:, None] + np.arange(self.block + 1)
        windows = tokens[starts]
        return np.ascontiguousarray(windows[:, :-1]), np.ascontiguousarray(windows[:, 1:])


def shakespeare_config(data: CharData, shape: dict, dropout: float, precision: str = "fp32") -> TransformerConfig:
    return TransformerConfig(vocab_size=data.vocab_size, d_model=shape["d_model"], n_heads=shape["n_heads"],
                             n_layers=shape["n_layers"], max_seq_len=shape["block"], dropout=dropout,
                             positional="learned", norm_first=True, init="gpt2", precision=precision)


def shakespeare_timings(data: CharData, shape: dict, xp: ModuleType, device_name: str, torch: ModuleType | None,
                        torch_device: str) -> dict:
    """ms/iter of a full training step (forward, backward, clipping, AdamW), ours and PyTorch's, dropout 0."""
    import torch_peer

    rng = np.random.default_rng(0)
    batches = [data.batch("train", shape["batch"], rng) for _ in range(4)]
    results = {}
    for precision in ("fp32", "bf16"):
        def measure(precision: str = precision) -> dict:
            model = TransformerLM(shakespeare_config(data, shape, 0.0, precision), seed=0).to(device_name)
            optimizer = AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.99), weight_decay=0.1)
            step = our_training_step(model, optimizer, itertools.cycle(batches))
            return dict(ms_per_iter=median_ms(step, shape["timing_iters"], lambda: synchronize(xp)))
        results[f"ours_{precision}"] = guarded(measure)
    if torch is None:
        return results
    cpu_model = TransformerLM(shakespeare_config(data, shape, 0.0), seed=0)
    peer = torch_peer.build(torch, cpu_model).to(torch_device)
    peer_optimizer = torch_peer.adamw(torch, peer, lr=1e-3, betas=(0.9, 0.99), weight_decay=0.1)
    torch_batches = [tuple(torch.from_numpy(array).to(torch_device) for array in batch) for batch in batches]
    for precision, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
        step = torch_training_step(torch, peer, peer_optimizer, itertools.cycle(torch_batches), dtype, torch_device)
        results[f"torch_{precision}"] = guarded(
            lambda step=step: dict(ms_per_iter=median_ms(step, shape["timing_iters"],
                                                         lambda: torch_synchronize(torch, torch_device))))
    for precision in ("fp32", "bf16"):
        ours, theirs = results[f"ours_{precision}"], results[f"torch_{precision}"]
        if "ms_per_iter" in ours and "ms_per_iter" in theirs:
            results[f"ratio_{precision}"] = ours["ms_per_iter"] / theirs["ms_per_iter"]
    return results


def our_training_step(model: TransformerLM, optimizer: AdamW, batches: Iterator) -> Callable[[], None]:
    """One training step of ours per call (forward, backward, clipping, AdamW), on the next batch."""
    def step() -> None:
        model.loss(*next(batches))
        grads = model.backward()
        clip_grad_norm(grads, 1.0)
        optimizer.step(grads)
    return step


def torch_training_step(torch: ModuleType, peer: object, optimizer: object, batches: Iterator, dtype: object,
                        torch_device: str) -> Callable[[], None]:
    """The same step of the PyTorch peer, under autocast to dtype unless it is None."""
    def step() -> None:
        ids, targets = next(batches)
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(torch_device, dtype=dtype, enabled=dtype is not None):
            loss = peer(ids, targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(peer.parameters(), 1.0)
        optimizer.step()
    return step


def torch_synchronize(torch: ModuleType, torch_device: str) -> None:
    if torch_device == "cuda":
        torch.cuda.synchronize()


def shakespeare_run(data: CharData, shape: dict, device_name: str, seconds: float, max_iters: int) -> dict:
    """nanoGPT's shakespeare-char training (dropout 0.2, its schedule) until max_iters or `seconds` run out, with
    validation losses every eval_interval iterations (VAL_BATCHES batches each)."""
    model = TransformerLM(shakespeare_config(data, shape, NANOGPT["dropout"]), seed=1337).to(device_name)
    optimizer = AdamW(model.parameters(), lr=NANOGPT["lr"], betas=(0.9, NANOGPT["beta2"]),
                      weight_decay=NANOGPT["weight_decay"])
    rng, evals, started = np.random.default_rng(1337), [], time.perf_counter()
    iteration = 0
    for iteration in range(max_iters + 1):
        if iteration % NANOGPT["eval_interval"] == 0 or iteration == max_iters:
            model.eval()
            val_rng = np.random.default_rng([1337, iteration])
            val = float(np.mean([model.loss(*data.batch("val", shape["batch"], val_rng)) for _ in range(VAL_BATCHES)]))
            model.train()
            evals.append(dict(iter=iteration, val_loss=val, seconds=time.perf_counter() - started))
            print(f"  shakespeare iter {iteration}: val loss {val:.4f}", flush=True)
        if iteration == max_iters or time.perf_counter() - started > seconds:
            break
        lr = lr_schedule(iteration, lr=NANOGPT["lr"], min_lr=NANOGPT["min_lr"], warmup_iters=NANOGPT["warmup_iters"],
                         decay_iters=NANOGPT["max_iters"])
        model.loss(*data.batch("train", shape["batch"], rng))
        grads = model.backward()
        clip_grad_norm(grads, NANOGPT["grad_clip"])
        optimizer.step(grads, lr)
        model.after_step()
    return dict(iterations=iteration, seconds=time.perf_counter() - started, evals=evals)


def gpt2_timings(shape: dict, size: dict, xp: ModuleType, device_name: str, torch: ModuleType | None,
                 torch_device: str) -> dict:
    """GPT-2 small: forward (batch, seq) and greedy KV-cache generation at each batch size, ours and PyTorch's."""
    import torch_peer

    if shape["preset"]:
        config = TransformerConfig.from_preset(shape["preset"], dropout=0.0)
    else:
        config = TransformerConfig(vocab_size=size["vocab"], d_model=size["d_model"], n_heads=size["n_heads"],
                                   n_layers=size["n_layers"], max_seq_len=shape["seq"], positional="learned",
                                   norm_first=True, init="gpt2", dropout=0.0)
    cpu_model = TransformerLM(config, seed=0).eval()
    peer = None if torch is None else torch_peer.build(torch, cpu_model).to(torch_device).eval()
    model = cpu_model.to(device_name)
    rng = np.random.default_rng(4)
    ids = rng.integers(0, config.vocab_size, (shape["batch"], shape["seq"]))
    sync = lambda: synchronize(xp)  # noqa: E731
    results = {"forward": {"ours_ms": median_ms(lambda: model.forward(ids), 5, sync)}}
    if peer is not None:
        torch_ids = torch.from_numpy(ids).to(torch_device)
        with torch.inference_mode():
            results["forward"]["torch_ms"] = median_ms(lambda: peer(torch_ids), 5,
                                                       lambda: torch_synchronize(torch, torch_device))
    for batch in shape["generation_batches"]:
        prompt = rng.integers(0, config.vocab_size, (batch, shape["prompt"]))
        row = {"ours_ms": median_ms(lambda prompt=prompt: model.generate(prompt, shape["new_tokens"], temperature=0),
                                    3, sync, warmup=1)}
        if peer is not None:
            torch_prompt = torch.from_numpy(prompt).to(torch_device)
            row["torch_ms"] = median_ms(lambda torch_prompt=torch_prompt: peer.generate_greedy(
                torch_prompt, shape["new_tokens"]), 3, lambda: torch_synchronize(torch, torch_device), warmup=1)
        row["new_tokens"] = shape["new_tokens"]
        results[f"generation_batch_{batch}"] = row
    return results


# ---------------------------------------------------------------------------------------------------------- main

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="toy sizes on the CPU, NumPy as the device, torch on "
                        "the CPU: checks the script itself up to the device calls")
    parser.add_argument("--out", type=Path, default=Path("gpu-check.json"), help="the JSON of results")
    parser.add_argument("--data", type=Path, default=SHAKESPEARE, help="tiny Shakespeare (default: %(default)s)")
    parser.add_argument("--seconds", type=float, default=420.0, help="the whole script's time budget; the "
                        "Shakespeare run gets what the other parts leave (default: %(default)s)")
    parser.add_argument("--skip-tests", action="store_true", help="only the timings (bench.py --device cuda)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Runs the parts in order, writing args.out after each; returns 1 when a test failed."""
    args = parse_args(argv)
    started = time.perf_counter()
    device_name = "cpu" if args.dry_run else "cuda"
    try:
        xp = device.device_module(device_name)
    except device.DeviceError as error:
        raise SystemExit(f"error: {error}") from None
    size = SIZES["dry" if args.dry_run else "gpu"]
    try:
        import torch
        torch_device = "cpu" if args.dry_run else "cuda"
        if torch_device == "cuda" and not torch.cuda.is_available():
            raise ImportError("PyTorch sees no GPU")
    except ImportError as error:
        print(f"PyTorch comparisons skipped: {error}", flush=True)
        torch, torch_device = None, None
    results = dict(dry_run=args.dry_run, device=describe_device(xp), torch=None if torch is None else torch.__version__)

    def save(part: str, value: dict) -> None:
        results[part] = value
        results["seconds"] = time.perf_counter() - started
        args.out.write_text(json.dumps(results, indent=2, default=float) + "\n", encoding="utf-8")
        print(f"{part}: done at {results['seconds']:.0f} s -> {args.out}", flush=True)

    failed = []
    if not args.skip_tests:
        save("tests", guarded(lambda: run_tests(device_name, size)))
        failed = [name for name, result in results["tests"].items() if isinstance(result, dict)
                  and not result.get("passed", True)] if "error" not in results["tests"] else ["tests"]
        print("tests: " + ("all passed" if not failed else f"FAILED: {', '.join(failed)}"), flush=True)
    shape = size["shakespeare"]
    data = CharData(shakespeare_text(args.data, args.dry_run), shape["block"])
    save("shakespeare_timings", guarded(lambda: shakespeare_timings(data, shape, xp, device_name, torch, torch_device)))
    save("gpt2_small", guarded(lambda: gpt2_timings(size["gpt2"], size, xp, device_name, torch, torch_device)))
    seconds_left = args.seconds - (time.perf_counter() - started) - 15  # the last evaluation and the write
    max_iters = NANOGPT["max_iters"] if not args.dry_run else 3
    save("shakespeare_run", guarded(lambda: shakespeare_run(data, shape, device_name, max(seconds_left, 0), max_iters)))
    return 1 if failed else 0


def describe_device(xp: ModuleType) -> str:
    if xp is np:
        return "NumPy on the CPU (dry run)"
    properties = xp.cuda.runtime.getDeviceProperties(xp.cuda.Device().id)
    return f"{properties['name'].decode()} (CuPy {xp.__version__}, CUDA runtime {xp.cuda.runtime.runtimeGetVersion()})"


if __name__ == "__main__":
    sys.exit(main())
