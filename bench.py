"""Benchmarks: this NumPy model against an equivalent PyTorch CPU model, measured in the same run.

    python bench.py             # every section, 1 and 2 threads, and tiny Shakespeare (about 35 minutes)
    python bench.py --quick     # a smoke run: 1 thread, fewer repetitions, small shapes (about a minute)
    python bench.py --render BENCHMARKS.json    # BENCHMARKS.md again from saved results, measuring nothing

Only a complete run (or --out PATH) writes BENCHMARKS.md and BENCHMARKS.json; a partial one (--quick, --only,
--threads, --repeats, --no-shakespeare) writes under bench-runs/, so the committed results stay those of a full
run. Progress goes to stderr, a line per measurement.

Each thread count runs in its own subprocess, because BLAS reads its thread count from the
environment when NumPy is first imported. Ratios are quoted at one thread: on a shared 2-core
machine two-thread timings swing by several times when the other core is busy.
torch is a benchmark-only dependency (requirements-oracle.txt).
"""
from __future__ import annotations

import argparse
import functools
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from atomic_files import write_text

if TYPE_CHECKING:
    import numpy as np
    import tiktoken
    import torch

    from attention import AttentionPattern, CausalSelfAttention
    from transformer_config import TransformerConfig
    from transformer_lm import TransformerLM

THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
ROOT = Path(__file__).resolve().parent
SHARED = ROOT.parent / "shared"  # the project's data and reference figures, beside its own checkout


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a short smoke run: fewer repetitions and shapes")
    parser.add_argument("--threads", type=int, nargs="+", help="thread counts to measure (default 1 2; quick: 1)")
    parser.add_argument("--repeats", type=int, help="timed repetitions per measurement (default 5, quick 2)")
    parser.add_argument("--only", nargs="+", default=list(SECTIONS), choices=list(SECTIONS),
                        help="sections to run (default: all)")
    parser.add_argument("--shakespeare", action=argparse.BooleanOptionalAction, default=None,
                        help="also reproduce nanoGPT's tiny-Shakespeare run with train.py, with and without adaptive "
                             "span (about 5 minutes; default: on, off with --quick)")
    parser.add_argument("--out", "--output", help="where to write the Markdown (the raw JSON goes beside it, "
                        "same name with .json); default: BENCHMARKS.md for a complete run, bench-runs/DATE-TIME.md "
                        "for a partial one")
    parser.add_argument("--render", metavar="JSON", help="measure nothing: write the Markdown for results saved "
                        "earlier (to --out, default: the JSON's name with .md)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="cuda: the GPU timings of "
                        "gpu_check.py instead (CuPy against PyTorch on the GPU; its --out, default gpu-check.json)")
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)  # internal: run at this thread count
    parser.add_argument("--memory-probe", choices=["ours", "theirs"], help=argparse.SUPPRESS)  # internal
    parser.add_argument("--data-parallel-probe", nargs=3, help=argparse.SUPPRESS)  # internal: case, side, repeats
    parser.add_argument("--attention-memory-probe", nargs=2, type=int, help=argparse.SUPPRESS)  # internal: T, tile
    return parser.parse_args(argv)


def time_pair(ours: Callable[[], object], theirs: Callable[[], object],
              repeats: int) -> tuple[list[float], list[float]]:
    """Run both callables alternately (so both see the same background load) after one warm-up each.
    Returns the list of seconds for each."""
    ours()
    theirs()
    our_times, their_times = [], []
    for _ in range(repeats):
        for function, times in ((ours, our_times), (theirs, their_times)):
            start = time.perf_counter()
            function()
            times.append(time.perf_counter() - start)
    return our_times, their_times


def random_batches(np: ModuleType, config: TransformerConfig, batch_size: int, count: int,
                   seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [(rng.integers(0, config.vocab_size, (batch_size, config.max_seq_len)),
             rng.integers(0, config.vocab_size, (batch_size, config.max_seq_len))) for _ in range(count)]


def bench_matmul(threads: int, quick: bool, repeats: int, context: dict[str, float]) -> Iterator[dict[str, object]]:
    """The float32 matrix-product peak this run's MFU figures are measured against."""
    import numpy as np
    import torch

    import torch_peer
    rates = torch_peer.matmul_gflops(np, torch)
    context["peak_gflops"] = rates["numpy"]
    seconds = 2 * 1024 ** 3 / 1e9
    yield dict(section="matmul", case="1024 x 1024 x 1024 float32, best of 10", ours=[seconds / rates["numpy"]],
               theirs=[seconds / rates["torch"]],
               note=f"NumPy {rates['numpy']:.0f} GFLOP/s, torch {rates['torch']:.0f} GFLOP/s")


def bench_training(threads: int, quick: bool, repeats: int, context: dict[str, float]) -> Iterator[dict[str, object]]:
    """One optimizer step (forward, backward, clip 1.0, AdamW) at nanoGPT's CPU config, a mid-size one and the
    mid-size model at T=1024 (where full causal attention runs in tiles)."""
    import numpy as np
    import torch

    import torch_peer
    from transformer_lm import TransformerConfig

    shapes = [(f"{case}, V65", shape, batch_size) for case, (shape, batch_size) in TRAINING_CASES.items()]
    shapes.append(("long: L6 H6 C384, B4 T1024, V65", dict(MID_SIZE, max_seq_len=1024), 4))
    for case, shape, batch_size in shapes[:1] if quick else shapes:
        progress(f"  training step, {case} ...")
        config = TransformerConfig.from_preset("nanogpt-cpu", **shape)
        our_times, their_times = time_training_steps(np, torch, config, batch_size, 3 * repeats)
        tokens = batch_size * config.max_seq_len
        flops = torch_peer.training_flops_per_token(config) * tokens
        yield dict(section="training step", case=case, ours=our_times, theirs=their_times,
                   note=f"tokens/s ours {tokens / median(our_times):,.0f}, torch "
                        f"{tokens / median(their_times):,.0f}; MFU ours "
                        f"{flops / median(our_times) / 1e9 / context['peak_gflops']:.0%}, torch "
                        f"{flops / median(their_times) / 1e9 / context['peak_gflops']:.0%}")


def time_training_steps(np: ModuleType, torch: ModuleType, config: TransformerConfig, batch_size: int, repeats: int,
                        only: str | None = None) -> tuple[list[float] | None, list[float] | None]:
    """Seconds per training step for ours and the torch peer, alternating; only="ours"/"theirs" builds and runs
    one side alone (for memory measurements) and returns (times, None) or (None, times)."""
    import torch_peer
    from optim import AdamW, clip_grad_norm
    from transformer_lm import TransformerLM

    model = TransformerLM(config, seed=0)
    optimizer = AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.99), weight_decay=0.1)
    if only != "ours":
        peer = torch_peer.build(torch, model)
        peer_optimizer = torch_peer.adamw(torch, peer, lr=1e-3, betas=(0.9, 0.99), weight_decay=0.1)
    if only == "theirs":
        del model, optimizer  # measure the peer's memory alone
    batches = random_batches(np, config, batch_size, 4)
    torch_batches = [tuple(torch.from_numpy(array) for array in batch) for batch in batches]
    steps = {"ours": 0, "theirs": 0}

    def ours() -> None:
        ids, targets = batches[steps["ours"] % len(batches)]
        steps["ours"] += 1
        model.loss(ids, targets)
        grads = model.backward()
        clip_grad_norm(grads, 1.0)
        optimizer.step(grads)

    def theirs() -> None:
        ids, targets = torch_batches[steps["theirs"] % len(batches)]
        steps["theirs"] += 1
        peer_optimizer.zero_grad(set_to_none=True)
        peer(ids, targets).backward()
        torch.nn.utils.clip_grad_norm_(peer.parameters(), 1.0)
        peer_optimizer.step()

    if only is not None:
        times = [timed(ours if only == "ours" else theirs) for _ in range(repeats)]
        return (times, None) if only == "ours" else (None, times)
    return time_pair(ours, theirs, repeats)


def bench_forward(threads: int, quick: bool, repeats: int, context: dict[str, float]) -> Iterator[dict[str, object]]:
    """Forward pass at GPT-2 small's shape (random weights, float32, batch 1)."""
    import numpy as np
    import torch

    import torch_peer
    from transformer_lm import TransformerConfig, TransformerLM

    config = TransformerConfig.from_preset("gpt2", dropout=0.0)
    model = TransformerLM(config, seed=0).eval()
    peer = torch_peer.build(torch, model).eval()
    for seq_len in ([64, 256] if quick else [64, 256, 1024]):
        progress(f"  forward, GPT-2 small, T={seq_len} ...")
        ids = np.random.default_rng(seq_len).integers(0, config.vocab_size, (1, seq_len))
        torch_ids = torch.from_numpy(ids)
        with torch.inference_mode():
            difference = np.abs(model(ids) - peer(torch_ids).numpy()).max()
            our_times, their_times = time_pair(lambda ids=ids: model(ids), lambda ids=torch_ids: peer(ids), repeats)
        flops = torch_peer.forward_flops_per_token(config, seq_len) * seq_len
        yield dict(section="forward", case=f"GPT-2 small, B=1, T={seq_len}", ours=our_times, theirs=their_times,
                   note=f"max logit difference {difference:.1e}; MFU ours "
                        f"{flops / median(our_times) / 1e9 / context['peak_gflops']:.0%}")


def bench_generation(threads: int, quick: bool, repeats: int, context: dict[str, float]) -> Iterator[dict[str, object]]:
    """Greedy generation at GPT-2 small's shape: 64-token prompt, 256 new tokens (quick: 16)."""
    import numpy as np
    import torch

    import torch_peer
    from transformer_lm import TransformerConfig, TransformerLM

    config = TransformerConfig.from_preset("gpt2", dropout=0.0)
    model = TransformerLM(config, seed=0).eval()
    peer = torch_peer.build(torch, model).eval()
    new_tokens = 16 if quick else 256
    for batch_size in (1,) if quick else (1, 8):
        progress(f"  generation, GPT-2 small, B={batch_size}, {new_tokens} tokens ...")
        prompt = np.random.default_rng(batch_size).integers(0, config.vocab_size, (batch_size, 64))
        torch_prompt = torch.from_numpy(prompt)
        same = np.array_equal(model.generate(prompt, new_tokens, temperature=0),
                              peer.generate_greedy(torch_prompt, new_tokens).numpy())
        our_times, their_times = time_pair(lambda p=prompt: model.generate(p, new_tokens, temperature=0),
                                           lambda p=torch_prompt: peer.generate_greedy(p, new_tokens),
                                           max(1, repeats // 2))
        tokens = batch_size * new_tokens
        yield dict(section="generation (KV cache)", case=f"GPT-2 small, B={batch_size}, 64 + {new_tokens} tokens",
                   ours=our_times, theirs=their_times,
                   note=f"tokens/s ours {tokens / median(our_times):.1f}, torch "
                        f"{tokens / median(their_times):.1f}; same tokens as torch: {same}")
        if batch_size == 1:
            progress("  greedy decoding without the KV cache: the slowest measurement (minutes at full size)")
            uncached = uncached_generation_seconds(model, prompt, new_tokens)
            yield dict(section="generation, no cache", case=f"GPT-2 small, B=1, 64 + {new_tokens} tokens",
                       ours=[uncached], theirs=our_times,
                       note=f"the cache is {uncached / median(our_times):.1f}x faster; tokens/s without "
                            f"{new_tokens / uncached:.1f}")


def uncached_generation_seconds(model: TransformerLM, prompt: np.ndarray, new_tokens: int) -> float:
    """Greedy decoding without the cache, timed once: it is slow."""
    from generation import greedy_without_cache
    return timed(lambda: greedy_without_cache(model, prompt, new_tokens))


MID_SIZE = dict(n_layers=6, n_heads=6, d_model=384, max_seq_len=256)
MID_BATCH = 8
# The two training configs with their batch sizes: nanoGPT's CPU quick start and the mid-size one.
TRAINING_CASES = {
    "nanoGPT CPU: L4 H4 C128, B12 T64": (dict(n_layers=4, n_heads=4, d_model=128, max_seq_len=64), 12),
    "mid: L6 H6 C384, B8 T256": (MID_SIZE, MID_BATCH)}


def analytic_training_bytes(config: TransformerConfig, batch_size: int) -> int:
    """The least memory a training step can live in: parameters, gradients and AdamW's two moments, plus the
    activations backward needs per layer (the block input and both LayerNorm outputs, q/k/v, the attention
    output, the residual after attention, the feed-forward pre- and post-activation: 16 B*T*C numbers; the
    attention probabilities: B*H*T*T) and the logits (B*T*V), all float32."""
    from transformer_lm import TransformerLM
    parameters = TransformerLM(config).num_parameters()
    B, T, C, H = batch_size, config.max_seq_len, config.d_model, config.n_heads
    activations = config.n_layers * (16 * B * T * C + B * H * T * T) + B * T * config.vocab_size
    return 4 * (4 * parameters + activations)


def peak_rss_megabytes() -> float:
    """This process's peak resident memory. VmHWM from /proc (Linux) rather than ru_maxrss, which a
    process started by a larger one inherits from it across fork and exec."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise OSError("no VmHWM in /proc/self/status: the memory benchmark needs Linux")


def run_probe(flag: str, *arguments: str, threads: int = 1, ranks: int = 1) -> dict:
    """Runs `bench.py flag *arguments` (a probe) in a new process of `threads` threads, or in `ranks` of them under
    mpirun; returns the JSON of its last line."""
    environment = {**os.environ, **{name: str(threads) for name in THREAD_VARIABLES}}
    launcher = []
    if ranks > 1:
        launcher = ["mpirun", "-n", str(ranks), "--oversubscribe"]
        if os.geteuid() == 0:  # Open MPI refuses root unless told
            environment.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    completed = subprocess.run([*launcher, sys.executable, __file__, flag, *arguments], capture_output=True,
                               text=True, env=environment, timeout=1800)
    if completed.returncode:
        raise SystemExit(f"{flag.lstrip('-').replace('-', ' ')} failed:\n{completed.stderr}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def memory_probe(side: str) -> None:
    """Runs in its own process: peak RSS growth over three training steps at the mid-size config."""
    import numpy as np
    import torch

    from transformer_lm import TransformerConfig
    config = TransformerConfig.from_preset("nanogpt-cpu", **MID_SIZE)
    torch.set_num_threads(1)
    baseline = peak_rss_megabytes()
    time_training_steps(np, torch, config, MID_BATCH, 3, only=side)
    print(json.dumps({"megabytes": peak_rss_megabytes() - baseline}))


def bench_memory(threads: int, quick: bool, repeats: int, context: dict[str, float]) -> Iterator[dict[str, object]]:
    """Peak resident memory of the training step at the mid-size config, each side in its own process."""
    from transformer_lm import TransformerConfig
    config = TransformerConfig.from_preset("nanogpt-cpu", **MID_SIZE)
    growth = {}
    for side in ("ours", "theirs"):
        progress(f"  peak memory of three training steps, {side}, in a new process ...")
        growth[side] = run_probe("--memory-probe", side)["megabytes"]
    minimum = analytic_training_bytes(config, MID_BATCH) / 2**20
    yield dict(section="peak memory", case="training step, mid: L6 H6 C384, B8 T256 (RSS growth)",
               ours=[growth["ours"]], theirs=[growth["theirs"]],
               note=f"ours = {growth['ours'] / minimum:.2f}x the analytic minimum {minimum:.0f} MB (weights, grads, "
                    f"AdamW moments, saved activations)")


def bench_transformers(threads: int, quick: bool, repeats: int,
                       context: dict[str, float]) -> Iterator[dict[str, object]]:
    """Against transformers' own GPT2LMHeadModel: GPT-2 small forward at B=1 and greedy generation after a
    prompt. Ours is exported with save_pretrained and transformers loads that directory."""
    import tempfile

    import numpy as np
    import torch
    import transformers

    from transformer_lm import TransformerConfig, TransformerLM

    model = TransformerLM(TransformerConfig.from_preset("gpt2", dropout=0.0), seed=0).eval()
    with tempfile.TemporaryDirectory() as directory:
        model.save_pretrained(directory)
        hf_model = transformers.GPT2LMHeadModel.from_pretrained(directory).eval()
    vocab_size = model.config.vocab_size

    seq_len = 64 if quick else 256
    progress(f"  transformers, GPT-2 small forward, T={seq_len} ...")
    ids = np.random.default_rng(seq_len).integers(0, vocab_size, (1, seq_len))
    torch_ids = torch.from_numpy(ids)
    with torch.inference_mode():
        difference = np.abs(model(ids) - hf_model(torch_ids, use_cache=False).logits.numpy()).max()
        our_times, their_times = time_pair(lambda: model(ids), lambda: hf_model(torch_ids, use_cache=False), repeats)
    yield dict(section="transformers", case=f"GPT-2 small forward, B=1, T={seq_len}", ours=our_times,
               theirs=their_times, note=f"GPT2LMHeadModel; max |logit difference| {difference:.1e}")

    prompt_len, new_tokens = (16, 16) if quick else (64, 128)
    progress(f"  transformers, GPT-2 small greedy generation, {new_tokens} tokens ...")
    prompt = np.random.default_rng(prompt_len).integers(0, vocab_size, (1, prompt_len))
    generate_ours, generate_theirs = greedy_generators(model, hf_model, prompt, new_tokens)
    with torch.inference_mode():
        same_tokens = np.array_equal(generate_ours(), generate_theirs().numpy())
        our_times, their_times = time_pair(generate_ours, generate_theirs, max(1, repeats // 2))  # as bench_generation
    yield dict(section="transformers", case=f"GPT-2 small greedy, {new_tokens} tokens after {prompt_len}",
               ours=our_times, theirs=their_times,
               note=f"KV cache both; tokens/s {new_tokens / median(our_times):.1f} vs "
                    f"{new_tokens / median(their_times):.1f}; same tokens: {'yes' if same_tokens else 'no'}")


def greedy_generators(model: TransformerLM, hf_model: torch.nn.Module, prompt: np.ndarray, new_tokens: int
                      ) -> tuple[Callable[[], np.ndarray], Callable[[], torch.Tensor]]:
    """Greedy KV-cache generation of new_tokens after prompt (1, T), ours and transformers' (whose saved configs have
    no end-of-text token, so neither side stops early): the two functions the generation benchmarks time."""
    import torch

    torch_prompt = torch.from_numpy(prompt)

    def generate_ours() -> np.ndarray:
        return model.generate(prompt, new_tokens, temperature=0)

    def generate_theirs() -> torch.Tensor:
        return hf_model.generate(torch_prompt, attention_mask=torch.ones_like(torch_prompt), do_sample=False,
                                 max_new_tokens=new_tokens, use_cache=True, pad_token_id=0)

    return generate_ours, generate_theirs


# HuggingFaceTB/SmolLM2-135M's shape (its config.json), random weights; quick: 2 layers and a smaller vocabulary.
SMOLLM2_135M = dict(vocab_size=49152, d_model=576, n_heads=9, n_kv_heads=3, n_layers=30, d_ff=1536, max_seq_len=2048,
                    rope_theta=100000.0, layer_norm_eps=1e-5, tie_weights=True)
SMOLLM2_QUICK = dict(SMOLLM2_135M, n_layers=2, vocab_size=2048)


def llama_pair(shape: dict) -> tuple[TransformerLM, torch.nn.Module]:
    """transformers' LlamaForCausalLM of `shape` with its own random initialization (seeded), in evaluation mode,
    and our TransformerLM loaded from its save_pretrained directory: the same function on both sides."""
    import tempfile

    import torch
    import transformers

    from transformer_lm import TransformerLM

    config = transformers.LlamaConfig(
        vocab_size=shape["vocab_size"], hidden_size=shape["d_model"], intermediate_size=shape["d_ff"],
        num_hidden_layers=shape["n_layers"], num_attention_heads=shape["n_heads"],
        num_key_value_heads=shape["n_kv_heads"], max_position_embeddings=shape["max_seq_len"],
        rms_norm_eps=shape["layer_norm_eps"], tie_word_embeddings=shape["tie_weights"],
        rope_parameters={"rope_type": "default", "rope_theta": shape["rope_theta"]},
        bos_token_id=None, eos_token_id=None, pad_token_id=None)  # no end-of-text token: neither side stops early
    torch.manual_seed(0)
    hf_model = transformers.LlamaForCausalLM(config).eval()
    transformers.utils.logging.disable_progress_bar()  # save_pretrained's, on stderr among the progress lines
    with tempfile.TemporaryDirectory() as directory:
        hf_model.save_pretrained(directory)
        model = TransformerLM.from_pretrained(directory).eval()
    return model, hf_model


def kv_cache_bytes(model: TransformerLM, prompt: np.ndarray, new_tokens: int) -> int:
    """nbytes of the keys and values that every layer's KV cache holds after greedy decoding of new_tokens
    after prompt (1, T), as model.generate runs it."""
    from generation import DecodingState, decode

    state = DecodingState(model, 1, prompt.shape[1] + new_tokens)
    logits = decode(model, state, prompt)
    for _ in range(new_tokens - 1):
        logits = decode(model, state, logits.argmax(axis=-1)[:, None])
    return sum(cache.keys.nbytes + cache.values.nbytes for cache in state.kv_caches)


def bench_modern(threads: int, quick: bool, repeats: int, context: dict[str, float]) -> Iterator[dict[str, object]]:
    """The modern decoder (RoPE, RMSNorm, SwiGLU, grouped-query attention) at SmolLM2-135M's shape against
    transformers' LlamaForCausalLM with the same random weights, one thread: forward at B=1, T=256, and greedy
    KV-cache generation of 128 tokens after 64 (quick: T=64, 16 after 16, 2 layers); then the bytes our KV caches
    hold with 3 key/value heads against the same model with 9 (multi-head attention). Targets (issue 12): forward
    <= 1.1x transformers' time, generation >= 1.0x its tokens/s with the same tokens, cache 1/3."""
    if threads != 1:
        return
    import dataclasses

    import numpy as np

    from transformer_lm import TransformerLM

    shape = SMOLLM2_QUICK if quick else SMOLLM2_135M
    name = "SmolLM2-135M shape" + (" (2 layers, vocabulary 2048)" if quick else "")
    seq_len, prompt_len, new_tokens = (64, 16, 16) if quick else (256, 64, 128)
    prompt = np.random.default_rng(prompt_len).integers(0, shape["vocab_size"], (1, prompt_len))
    config = yield from modern_against_transformers(shape, name, seq_len, prompt, new_tokens, repeats)

    progress(f"  modern: KV-cache bytes after {prompt_len} + {new_tokens} tokens, n_kv_heads 3 and 9 ...")
    cache_bytes = {}
    for n_kv_heads in (config.n_kv_heads, config.n_heads):
        model = TransformerLM(dataclasses.replace(config, n_kv_heads=n_kv_heads), seed=0).eval()
        cache_bytes[n_kv_heads] = kv_cache_bytes(model, prompt, new_tokens)
    grouped, full = cache_bytes[config.n_kv_heads], cache_bytes[config.n_heads]
    yield dict(section="modern, KV-cache memory",
               case=f"{name}, {prompt_len} + {new_tokens} tokens, B=1, float32 (nbytes of every layer's keys + values)",
               ours=[grouped / 2**20], theirs=[full / 2**20],
               note=f"{grouped:,} vs {full:,} bytes: {grouped / full:.4f} (target 1/3); caches of the same slots")


def modern_against_transformers(shape: dict, name: str, seq_len: int, prompt: np.ndarray, new_tokens: int,
                                repeats: int) -> Generator[dict[str, object], None, TransformerConfig]:
    """bench_modern's timings: forward at (1, seq_len) and greedy generation of new_tokens after prompt (1, T),
    ours against LlamaForCausalLM with the same weights. Returns our model's config."""
    import numpy as np
    import torch

    model, hf_model = llama_pair(shape)
    progress(f"  modern: {name} forward, T={seq_len} ...")
    ids = np.random.default_rng(seq_len).integers(0, shape["vocab_size"], (1, seq_len))
    torch_ids = torch.from_numpy(ids)
    with torch.no_grad():
        difference = np.abs(model(ids) - hf_model(torch_ids, use_cache=False).logits.numpy()).max()
        our_times, their_times = time_pair(lambda: model(ids), lambda: hf_model(torch_ids, use_cache=False), repeats)
    ratio = median(our_times) / median(their_times)
    yield dict(section="modern", case=f"{name} forward, B=1, T={seq_len}", ours=our_times, theirs=their_times,
               note=f"LlamaForCausalLM; max logit difference {difference:.1e}; target <= 1.1x its time: "
                    f"{'met' if ratio <= 1.1 else 'missed'}")

    prompt_len = prompt.shape[1]
    progress(f"  modern: {name} greedy generation, {new_tokens} tokens after {prompt_len} ...")
    generate_ours, generate_theirs = greedy_generators(model, hf_model, prompt, new_tokens)
    with torch.no_grad():
        ours_tokens, their_tokens = generate_ours()[0, prompt_len:], generate_theirs().numpy()[0, prompt_len:]
        agree = int(np.cumprod(ours_tokens == their_tokens).sum()) if ours_tokens.shape == their_tokens.shape else 0
        our_times, their_times = time_pair(generate_ours, generate_theirs, max(1, repeats // 2))
    speed = median(their_times) / median(our_times)
    yield dict(section="modern", case=f"{name} greedy, KV cache, B=1, {new_tokens} tokens after {prompt_len}",
               ours=our_times, theirs=their_times,
               note=f"tokens/s {new_tokens / median(our_times):.1f} vs {new_tokens / median(their_times):.1f} "
                    f"({speed:.2f}x; target >= 1.0x: {'met' if speed >= 1.0 else 'missed'}); same {new_tokens} "
                    "tokens: " + ("yes" if agree == new_tokens else f"no, the first {agree} agree"))
    return model.config


def bench_safetensors(threads: int, quick: bool, repeats: int,
                      context: dict[str, float]) -> Iterator[dict[str, object]]:
    """Loading a GPT-2-small-sized safetensors file (random float32 weights, written here) and touching every
    tensor: safetensors_io.load_file against the safetensors library's NumPy loader."""
    import tempfile

    from safetensors.numpy import load_file as library_load_file

    from safetensors_io import load_file, save_file
    from transformer_lm import TransformerConfig, TransformerLM

    config = TransformerConfig.from_preset("gpt2", n_layers=2 if quick else 12)
    tensors = TransformerLM(config, seed=0).parameters()
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "model.safetensors")
        save_file(tensors, path)
        megabytes = os.path.getsize(path) / 1e6

        def load_and_sum(loader: Callable[[str], dict[str, np.ndarray]]) -> float:
            return sum(float(array.sum()) for array in loader(path).values())

        our_times, their_times = time_pair(lambda: load_and_sum(load_file), lambda: load_and_sum(library_load_file),
                                           repeats)
        same = load_and_sum(load_file) == load_and_sum(library_load_file)
    yield dict(section="safetensors load", case=f"{megabytes:.0f} MB, load + sum every tensor", ours=our_times,
               theirs=their_times, note=f"ours memory-maps (no copy); same sums: {same}")


ATTENTION_D_MODEL, ATTENTION_HEADS, WINDOW = 256, 4, 256


def attention_layer(pattern: AttentionPattern | None, seed: int = 0, d_model: int = ATTENTION_D_MODEL,
                    n_heads: int = ATTENTION_HEADS) -> CausalSelfAttention:
    """A float32 attention layer without dropout, its weights drawn from N(0, 0.02^2)."""
    import numpy as np

    from attention import CausalSelfAttention

    rng = np.random.default_rng(seed)
    layer = CausalSelfAttention(d_model, n_heads, 0.0, rng, np.float32, pattern=pattern)
    for value in layer.params.values():
        value[...] = rng.normal(0.0, 0.02, value.shape)
    return layer


def forward_backward(layer: CausalSelfAttention, x: np.ndarray, dout: np.ndarray) -> None:
    """One forward and backward pass of an attention layer."""
    layer.forward(x)
    layer.backward(dout)


def peak_memory_mib(function: Callable[[], object]) -> float:
    """Peak bytes that `function()` allocates while it runs (its allocations still alive at the peak), in MiB."""
    import tracemalloc
    tracemalloc.start()
    try:
        function()
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


def bench_attention(threads: int, quick: bool, repeats: int, context: dict[str, float]) -> Iterator[dict[str, object]]:
    """One attention layer, forward + backward, sparse patterns against full causal attention ("PyTorch"
    column = our full attention, the peer in this section), batch 1, d_model 256, 4 heads, float32.
    sliding (window 256) is O(T * window): its time should grow linearly in T; strided uses
    stride = the smallest power of two >= sqrt(T) (Child et al. take stride ~ sqrt(T)). Peak memory of one
    forward + backward of each, measured with tracemalloc (NumPy reports its allocations to it)."""
    import numpy as np

    from sparse_attention import SlidingWindow, Strided

    sliding_time_at_shortest = None
    for seq_len in ([1024] if quick else [1024, 2048, 4096, 8192]):
        progress(f"  attention, T={seq_len}: memory, then sliding and strided against full ...")
        rng = np.random.default_rng(seq_len)
        x = rng.standard_normal((1, seq_len, ATTENTION_D_MODEL)).astype(np.float32)
        dout = rng.standard_normal((1, seq_len, ATTENTION_D_MODEL)).astype(np.float32)
        stride = 2 ** math.ceil(math.log2(math.sqrt(seq_len)))
        layers = {"full": attention_layer(None), f"sliding, window {WINDOW}": attention_layer(SlidingWindow(WINDOW)),
                  f"strided, stride {stride}": attention_layer(Strided(stride))}
        runs = {name: functools.partial(forward_backward, layer, x, dout) for name, layer in layers.items()}
        memory = {name: peak_memory_mib(run) for name, run in runs.items()}
        for name in list(layers)[1:]:
            ours, theirs = time_pair(runs[name], runs["full"], repeats)
            note = f"peak memory {memory[name]:.0f} MiB vs full {memory['full']:.0f} MiB"
            if name.startswith("sliding"):
                sliding_time_at_shortest = sliding_time_at_shortest or median(ours)
                note += f"; {median(ours) / sliding_time_at_shortest:.1f}x its T=1024 time"
            yield dict(section="attention", ours=ours, theirs=theirs, note=note,
                       case=f"{name}, B=1, C={ATTENTION_D_MODEL}, H={ATTENTION_HEADS}, T={seq_len}")


def tiled_attention_layer(d_model: int, n_heads: int, tile_size: int | None, window: int | None = None
                          ) -> CausalSelfAttention:
    """A float32 attention layer, full causal or a sliding window of `window` keys, that runs tiles of tile_size
    queries at any length (None: never, the dense or window-block layout)."""
    from sparse_attention import SlidingWindow

    layer = attention_layer(None if window is None else SlidingWindow(window), d_model=d_model, n_heads=n_heads)
    layer.pattern.tiled_from = None if tile_size is None else 1
    layer.pattern.tile_size = tile_size
    return layer


def attention_memory_probe(seq_len: int, tile_size: int) -> None:
    """Runs in its own process: peak RSS growth of one forward + backward of the C256 H4 attention layer, B=1
    (tile_size 0: dense)."""
    import numpy as np

    layer = tiled_attention_layer(ATTENTION_D_MODEL, ATTENTION_HEADS, tile_size or None)
    rng = np.random.default_rng(seq_len)
    x = rng.standard_normal((1, seq_len, ATTENTION_D_MODEL)).astype(np.float32)
    dout = rng.standard_normal((1, seq_len, ATTENTION_D_MODEL)).astype(np.float32)
    baseline = peak_rss_megabytes()
    forward_backward(layer, x, dout)
    print(json.dumps({"megabytes": peak_rss_megabytes() - baseline}))


def bench_tiles(threads: int, quick: bool, repeats: int, context: dict[str, float]) -> Iterator[dict[str, object]]:
    """Tiled attention against the untiled layouts: the tile-size sweep of one attention layer (GPT-2 small's,
    forward in evaluation; nanoGPT-mid's at B=4, forward + backward; a sliding window of 256 keys, C256 H4 B1,
    forward + backward, against its window blocks), then the peak memory (RSS growth, each run in its own
    process) of one C256 H4 full-attention layer's forward + backward at long lengths, where the dense (T, T)
    scores would need tens of GB at T=32768 (not run)."""
    import numpy as np

    from attention import TILE_SIZE

    layers = [("GPT-2 small layer forward, C768 H12 B1", 768, 12, 1, False, None),
              ("mid layer forward + backward, C384 H6 B4", 384, 6, 4, True, None),
              (f"sliding window {WINDOW} forward + backward, C256 H4 B1", 256, 4, 1, True, WINDOW)]
    for case, d_model, n_heads, batch_size, training, window in layers:
        for seq_len in ([256, 1024] if quick else [128, 256, 512, 1024]):
            x = np.random.default_rng(seq_len).standard_normal((batch_size, seq_len, d_model)).astype(np.float32)
            dense = tiled_attention_layer(d_model, n_heads, None, window).train(training)
            for tile_size in ([TILE_SIZE] if quick else [64, 128, 256]):
                progress(f"  tiles: {case}, T={seq_len}, tile {tile_size} ...")
                tiled = tiled_attention_layer(d_model, n_heads, tile_size, window).train(training)
                # dout = x: any array of the output's shape serves the backward.
                runs = [functools.partial(forward_backward, layer, x, x) if training
                        else functools.partial(layer.forward, x) for layer in (tiled, dense)]
                ours, theirs = time_pair(*runs, repeats)
                yield dict(section="tiled attention", case=f"{case}, T={seq_len}, tile {tile_size}",
                           ours=ours, theirs=theirs, note="")
    for seq_len in ([2048] if quick else [8192, 16384, 32768]):
        megabytes = {}
        for tile_size in ([TILE_SIZE] if seq_len > 16384 else [TILE_SIZE, 0]):
            progress(f"  tiles: peak memory, T={seq_len}, {'tile ' + str(tile_size) if tile_size else 'dense'} ...")
            megabytes[tile_size] = run_probe("--attention-memory-probe", str(seq_len), str(tile_size))["megabytes"]
        dense = megabytes.get(0)
        yield dict(section="tiled attention, peak memory", ours=[megabytes[TILE_SIZE]],
                   theirs=None if dense is None else [dense],
                   case=f"layer forward + backward, C{ATTENTION_D_MODEL} H{ATTENTION_HEADS} B1, T={seq_len}, "
                        f"tile {TILE_SIZE} (RSS growth)",
                   note="dense not run: its (T, T) scores alone would be "
                        f"{ATTENTION_HEADS * seq_len ** 2 * 4 / 2**30:.0f} GiB" if dense is None else "")


# Data parallelism (parallel.py): the two training configs, each with its global batch.
DATA_PARALLEL_CASES = TRAINING_CASES
DATA_PARALLEL_RUNS = {"2 ranks x 1 thread": (2, 1, "ours"), "2 ranks x 1 thread, --zero 1": (2, 1, "zero"),
                      "1 process x 1 thread": (1, 1, "ours"), "1 process x 2 threads": (1, 2, "ours")}
RING_PROJECTION = [(ranks, gbits) for ranks in (8, 64) for gbits in (10, 100)]


class FixedBatches:
    """A train.Task stand-in for timing: the same few random global batches, whatever the generator says."""

    def __init__(self, batches: list[tuple[np.ndarray, np.ndarray]]) -> None:
        self.batches = batches

    def get_batch(self, split: str, batch_size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        return self.batches[int(rng.integers(len(self.batches)))]


def data_parallel_probe(case: str, side: str, repeats: int) -> None:
    """Runs in its own process (every rank of an mpirun job runs one): seconds per training step of the case's
    global batch as train.py takes it (train.accumulate_step, then parallel.Ranks.step: all-reduce, clip 1.0,
    AdamW), printed as JSON by rank 0. side: "ours", "zero" (--zero 1) or "torch" (the peer, one process). With
    several ranks, also the all-reduce alone of a float32 buffer of the gradient's size."""
    import numpy as np
    import torch

    import parallel
    import train
    from transformer_lm import TransformerConfig, TransformerLM

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    shape, batch_size = DATA_PARALLEL_CASES[case]
    config = TransformerConfig.from_preset("nanogpt-cpu", **shape)
    if side == "torch":
        print(json.dumps({"seconds": time_training_steps(np, torch, config, batch_size, repeats, only="theirs")[1]}))
        return
    ranks = parallel.world()
    model = TransformerLM(config, seed=0)
    optimizer = ranks.optimizer(model.parameters(), int(side == "zero"), lr=1e-3, betas=(0.9, 0.99),
                                weight_decay=0.1)
    task, rng = FixedBatches(random_batches(np, config, batch_size, 4)), np.random.default_rng(0)
    settings = {"grad_accum_steps": 1, "batch_size": batch_size // ranks.size}

    def step() -> None:
        ranks.step(optimizer, train.accumulate_step(model, task, settings, rng, ranks)[1], 1e-3, 1.0)

    def lined_up(function: Callable[[], object]) -> float:
        if ranks.comm is not None:
            ranks.comm.Barrier()  # every rank starts together: rank 0's time includes the slowest rank
        return timed(function)

    step()
    result = {"seconds": [lined_up(step) for _ in range(repeats)], "parameters": model.num_parameters()}
    result["optimizer_bytes"] = (optimizer.state_bytes() if isinstance(optimizer, parallel.ShardedAdamW) else
                                 sum(moment.nbytes for moments in (optimizer.exp_avg, optimizer.exp_avg_sq)
                                     for moment in moments.values()))
    if ranks.comm is not None:
        gradient = np.zeros(model.num_parameters(), np.float32)
        result["allreduce"] = [lined_up(functools.partial(ranks.comm.Allreduce, parallel.require_mpi4py().IN_PLACE,
                                                          gradient)) for _ in range(3 * repeats)]
    if ranks.is_root:
        print(json.dumps(result))


def bench_data_parallel(threads: int, quick: bool, repeats: int,
                        context: dict[str, float]) -> Iterator[dict[str, object]]:
    """Training step of the whole global batch: 2 ranks x 1 thread under mpirun (plain and --zero 1), 1 process at
    1 and 2 threads, each against PyTorch at 2 threads; then the scaling model from the measured compute and
    all-reduce times. Each run is its own process (or mpirun job) with its thread count, so this section runs
    once, from the one-thread worker; it needs mpi4py and Open MPI's mpirun (requirements-mpi.txt)."""
    if threads != 1:
        return
    if shutil.which("mpirun") is None:
        progress("  data parallel: skipped, no mpirun (pip install -r requirements-mpi.txt)")
        return
    for case, (shape, batch_size) in list(DATA_PARALLEL_CASES.items())[:1 if quick else 2]:
        progress(f"  data parallel, {case}: PyTorch at 2 threads ...")
        theirs = run_probe("--data-parallel-probe", case, "torch", str(3 * repeats), threads=2)["seconds"]
        tokens = batch_size * shape["max_seq_len"]
        measured = {}
        for name, (n_ranks, run_threads, side) in DATA_PARALLEL_RUNS.items():
            progress(f"  data parallel, {case}: {name} ...")
            measured[name] = run_probe("--data-parallel-probe", case, side, str(3 * repeats), threads=run_threads,
                                       ranks=n_ranks)
        single = median(measured["1 process x 1 thread"]["seconds"])
        for name, result in measured.items():
            ours = median(result["seconds"])
            yield dict(section="data parallel", case=f"{case}, {name}", ours=result["seconds"], theirs=theirs,
                       note=f"tokens/s {tokens / ours:,.0f} ({single / ours:.2f}x 1 process x 1 thread, "
                            f"{median(theirs) / ours:.2f}x PyTorch at 2 threads: {tokens / median(theirs):,.0f}); "
                            f"AdamW state {result['optimizer_bytes'] / 2**20:.1f} MiB per rank")
        allreduce = measured["2 ranks x 1 thread"]["allreduce"]
        gradient_bytes = 4 * measured["2 ranks x 1 thread"]["parameters"]
        seconds_per_sequence = single / batch_size  # compute of one sequence of T tokens, one thread
        projections = []
        for n_ranks, gbits in RING_PROJECTION:
            ring = 2 * (n_ranks - 1) / n_ranks * gradient_bytes * 8 / (gbits * 1e9)  # ring all-reduce, seconds
            # communication <= 10% of the step: compute >= 9 x communication
            projections.append(f"{n_ranks} ranks at {gbits} Gbit/s: all-reduce {1e3 * ring:.1f} ms, < 10% of the step "
                               f"from {math.ceil(9 * ring / seconds_per_sequence)} sequences per rank")
        yield dict(section="data parallel, scaling model", case=case, ours=allreduce, theirs=[single],
                   note=f"all-reduce of the float32 gradient ({gradient_bytes / 2**20:.1f} MiB) between 2 ranks here; "
                        f"compute {1e3 * seconds_per_sequence:.1f} ms per sequence; " + "; ".join(projections))


def bench_tokenizer(threads: int, quick: bool, repeats: int, context: dict[str, float]) -> Iterator[dict[str, object]]:
    """Byte-level BPE: encoding tiny Shakespeare with GPT-2's files against tiktoken (same ids checked), and
    training a 4,096-token vocabulary on it. Skipped when ../shared is absent."""
    from tokenizer import ByteBPETokenizer

    shared = SHARED / "data"
    if not (shared / "gpt2-tokenizer" / "vocab.json").exists() or not (shared / "tinyshakespeare.txt").exists():
        return
    text = (shared / "tinyshakespeare.txt").read_text(encoding="utf-8")
    megabytes = len(text.encode("utf-8")) / 1e6
    files = shared / "gpt2-tokenizer" / "vocab.json", shared / "gpt2-tokenizer" / "merges.txt"
    reference = tiktoken_gpt2(*files)
    same = ByteBPETokenizer.from_files(*files).encode(text) == reference.encode_ordinary(text)
    # A fresh tokenizer for every repetition: its word cache starts empty, as on a new text.
    our_times, their_times = time_pair(lambda: ByteBPETokenizer.from_files(*files).encode(text),
                                       lambda: reference.encode_ordinary(text), repeats)
    load_seconds = median_seconds(lambda: ByteBPETokenizer.from_files(*files), repeats)
    encode_seconds = [seconds - load_seconds for seconds in our_times]
    yield dict(section="tokenizer", case="GPT-2 BPE encode, tiny Shakespeare (1.1 MB)", ours=encode_seconds,
               theirs=their_times, note=f"MB/s ours {megabytes / median(encode_seconds):.1f} (cold word cache; "
               f"loading the files {1000 * load_seconds:.0f} ms more), tiktoken "
               f"{megabytes / median(their_times):.1f}; same ids: {same}")
    train_times = [timed(lambda: ByteBPETokenizer.train(text, 4096)) for _ in range(max(1, repeats // 2))]
    yield dict(section="tokenizer", case="train a 4,096-token BPE on tiny Shakespeare", ours=train_times,
               theirs=None, note="no peer measured")


def tiktoken_gpt2(vocab_path: str | os.PathLike, merges_path: str | os.PathLike) -> tiktoken.Encoding:
    """tiktoken's GPT-2 encoding built from local files (get_encoding("gpt2") would download them)."""
    import tiktoken
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks
    ranks = data_gym_to_mergeable_bpe_ranks(vocab_bpe_file=str(merges_path), encoder_json_file=str(vocab_path))
    pattern = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
    special = {"<|endoftext|>": json.loads(Path(vocab_path).read_text(encoding="utf-8"))["<|endoftext|>"]}
    return tiktoken.Encoding(name="gpt2-local", pat_str=pattern, mergeable_ranks=ranks, special_tokens=special)


def timed(function: Callable[[], object]) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def median_seconds(function: Callable[[], object], repeats: int) -> float:
    return median([timed(function) for _ in range(repeats)])


def shakespeare_reproduction(quick: bool) -> dict[str, dict] | None:
    """Train nanoGPT's CPU quick-start config on tiny Shakespeare with train.py (2 threads, as the reference run),
    then the same run with adaptive attention spans, and the same training of the modern preset (RoPE, RMSNorm,
    SwiGLU, grouped-query attention, same parameter count), at equal steps. Returns {"full" | "adaptive" |
    "modern": {"rows": the run's metrics.jsonl rows, "seconds": its wall time}, "reference": nanoGPT's losses},
    or None when ../shared has no tiny Shakespeare."""
    corpus = SHARED / "data" / "tinyshakespeare.txt"
    if not corpus.exists():
        progress(f"tiny Shakespeare skipped: {corpus} is absent")
        return None
    flags = ["--max-iters", "200", "--eval-interval", "100"] if quick else []
    runs = {"reference": nanogpt_reference()}
    for name, extra in (("full", []), ("adaptive", ["--adaptive-span"]),
                        ("modern", ["--preset", "shakespeare-char-modern"])):
        progress(f"training on tiny Shakespeare ({name}) with train.py at 2 threads; its log follows")
        rows, seconds = train_run(corpus, [*flags, *extra])
        runs[name] = dict(rows=rows, seconds=seconds)
    return runs


def train_run(corpus: Path, flags: list[str]) -> tuple[list[dict], float]:
    """One train.py run on tiny Shakespeare at 2 threads, preset shakespeare-char-cpu unless flags name another:
    (rows of metrics.jsonl, wall seconds). Its log goes to stderr as progress."""
    import tempfile
    with tempfile.TemporaryDirectory() as out_dir:
        start = time.perf_counter()
        completed = subprocess.run([sys.executable, str(ROOT / "train.py"), "--data", str(corpus), "--preset",
                                    "shakespeare-char-cpu", "--out-dir", out_dir, "--sample-tokens", "0", *flags],
                                   env={**os.environ, **{name: "2" for name in THREAD_VARIABLES}}, stdout=sys.stderr)
        seconds = time.perf_counter() - start
        if completed.returncode:
            raise SystemExit(f"error: train.py failed with exit status {completed.returncode} (its output is above)")
        rows = [json.loads(line) for line in (Path(out_dir) / "metrics.jsonl").read_text().splitlines()]
        return [row for row in rows if row.get("kind", "eval") == "eval"], seconds


def nanogpt_reference() -> dict[str, list[float]]:
    """nanoGPT's (train, val) losses by iteration (as a string: JSON's keys are) from ../shared/reference, kept
    with the results so that they render without ../shared; {} when absent."""
    reference, reference_file = {}, SHARED / "reference" / "nanogpt-cpu-shakespeare-char.md"
    if reference_file.exists():
        for line in reference_file.read_text().splitlines():
            cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
            if len(cells) == 3 and cells[0].isdigit():
                reference[cells[0]] = [float(cells[1]), float(cells[2])]
    return reference


def shakespeare_lines(runs: dict[str, dict] | None) -> list[str]:
    """Markdown for shakespeare_reproduction's result, nanoGPT's losses beside ours (and the modern preset's, in
    runs that trained it)."""
    title = "## Tiny Shakespeare, nanoGPT's CPU quick start"
    if runs is None:
        return [title, "", "skipped: ../shared/data/tinyshakespeare.txt was absent", ""]
    reference = runs["reference"]
    full, adaptive = runs["full"]["rows"], runs["adaptive"]["rows"]
    modern = runs["modern"]["rows"] if "modern" in runs else None
    lines = [title, "",
             "`python train.py --data ../shared/data/tinyshakespeare.txt --preset shakespeare-char-cpu` "
             "(L4 H4 C128, B12 T64, 2000 iterations, lr 1e-3 -> 1e-4, 2 threads); nanoGPT's figures from "
             "`../shared/reference/nanogpt-cpu-shakespeare-char.md`. Eval losses average 20 batches: a few "
             "hundredths of noise. " + ("Last column" if modern is None else "Adaptive span column")
             + ": the same run with `--adaptive-span` (max span 64 = block size, ramp 32, span loss 2e-6, as the "
             "reference implementation's defaults)."
             + ("" if modern is None else " Modern column: `--preset shakespeare-char-modern`, the same training of "
                "model preset modern-cpu (RoPE, RMSNorm, SwiGLU, 2 key/value heads for 4 query heads, no biases, "
                "d_ff 393: 809,728 parameters against 809,856)."), "",
             "| iter | ours train | ours val | nanoGPT train | nanoGPT val | val difference | adaptive span val |"
             + ("" if modern is None else " modern val |"),
             "|---:|---:|---:|---:|---:|---:|---:|" + ("" if modern is None else "---:|")]
    for index, (row, adaptive_row) in enumerate(zip(full, adaptive)):
        theirs = reference.get(str(row["iter"]))
        their_cells = f"{theirs[0]:.4f} | {theirs[1]:.4f} | {row['val_loss'] - theirs[1]:+.4f}" if theirs else " | |"
        modern_cell = "" if modern is None else f" {modern[index]['val_loss']:.4f} |"
        lines.append(f"| {row['iter']} | {row['train_loss']:.4f} | {row['val_loss']:.4f} | {their_cells} | "
                     f"{adaptive_row['val_loss']:.4f} |{modern_cell}")
    lines += ["", f"Whole run {runs['full']['seconds']:.0f} s wall including evaluation; median "
              f"{full[-1]['ms_per_iter']:.1f} ms/iter (nanoGPT's reference: 42.6 ms/iter, 3 min 05 s, on this kind of "
              f"machine at 2 threads). With adaptive span: {runs['adaptive']['seconds']:.0f} s, median "
              f"{adaptive[-1]['ms_per_iter']:.1f} ms/iter."
              + ("" if modern is None else f" Modern: {runs['modern']['seconds']:.0f} s, median "
                 f"{modern[-1]['ms_per_iter']:.1f} ms/iter."), "",
              "Learned spans (tokens) per head at the end of the adaptive-span run:", ""]
    lines += [f"- layer {layer}: " + ", ".join(f"{span:.1f}" for span in spans)
              for layer, spans in enumerate(adaptive[-1]["spans"])]
    return lines + [""]


SECTIONS = {"matmul": bench_matmul, "training": bench_training, "forward": bench_forward,
            "generation": bench_generation, "memory": bench_memory, "tokenizer": bench_tokenizer,
            "transformers": bench_transformers, "safetensors": bench_safetensors, "attention": bench_attention,
            "tiles": bench_tiles, "data-parallel": bench_data_parallel, "modern": bench_modern}

# What each row section's two measured columns hold, and the unit: times are kept in seconds and shown in
# milliseconds, memory is kept and shown in MB.
COLUMNS = {
    "matmul": ("NumPy", "PyTorch", "ms"),
    "training step": ("ours", "PyTorch", "ms"),
    "forward": ("ours", "PyTorch", "ms"),
    "generation (KV cache)": ("ours", "PyTorch", "ms"),
    "generation, no cache": ("ours without the cache", "ours with the KV cache", "ms"),
    "peak memory": ("ours", "PyTorch", "MB"),
    "tokenizer": ("ours", "tiktoken", "ms"),
    "data parallel": ("ours", "PyTorch at 2 threads", "ms"),
    "data parallel, scaling model": ("all-reduce, 2 ranks here", "compute per step, 1 thread", "ms"),
    "transformers": ("ours", "transformers", "ms"),
    "safetensors load": ("safetensors_io", "safetensors library", "ms"),
    "attention": ("sparse pattern", "full causal attention", "ms"),
    "tiled attention": ("tiled", "untiled (dense or window blocks)", "ms"),
    "tiled attention, peak memory": ("tiled", "dense", "MB"),
    "modern": ("ours", "transformers", "ms"),
    "modern, KV-cache memory": ("n_kv_heads 3", "n_kv_heads 9 (multi-head)", "MB"),
}


def progress(message: str) -> None:
    """One line on stderr, so that a run of many minutes shows where it is."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def worker(args: argparse.Namespace) -> None:
    """Runs inside a subprocess whose thread variables are already set; prints JSON rows on stdout, progress on
    stderr."""
    import numpy as np
    import torch
    repeats = args.repeats or (2 if args.quick else 5)
    torch.set_num_threads(args.worker)
    rows, context = [], {}
    for name in ["matmul", *[name for name in args.only if name != "matmul"]]:
        progress(f"{args.worker} thread(s): {name}")
        for row in SECTIONS[name](args.worker, args.quick, repeats, context):
            rows.append(row)
            ours_label, theirs_label, unit = COLUMNS[row["section"]]
            progress(f"  done: {row['section']}, {row['case']}: {ours_label} {cell(row['ours'], unit)}, "
                     f"{theirs_label} {cell(row['theirs'], unit)}")
    info = dict(numpy=np.__version__, blas=blas_description(np), blas_kernel=openblas_kernel(),
                torch=torch.__version__, torch_cpu_capability=torch.backends.cpu.get_cpu_capability())
    print(json.dumps(dict(rows=rows, info=info)))


def blas_description(np: ModuleType) -> str:
    try:
        config = np.show_config(mode="dicts")
        blas = config["Build Dependencies"]["blas"]
        return f"{blas.get('name')} {blas.get('version', '')}".strip()
    except (TypeError, KeyError):
        return "unknown"


# The instruction set of OpenBLAS's kernels for the core types it names most often on x86.
KERNEL_SIMD = {"Sandybridge": "AVX", "Haswell": "AVX2", "Zen": "AVX2", "SkylakeX": "AVX-512", "Cooperlake": "AVX-512",
               "SapphireRapids": "AVX-512"}


def openblas_kernel() -> str | None:
    """The core type whose kernels OpenBLAS picked at run time (a DYNAMIC_ARCH build picks by CPU, and not always
    the widest: an AVX-512 CPU may run Haswell's AVX2 kernels), or None when NumPy's BLAS is not OpenBLAS.
    Asked as threadpoolctl does, through the loaded library's get_corename function."""
    try:
        import threadpoolctl
    except ImportError:
        threadpoolctl = None
    if threadpoolctl is not None:
        return next((library.get("architecture") for library in threadpoolctl.threadpool_info()
                     if library.get("internal_api") == "openblas"), None)
    import ctypes
    try:
        with open("/proc/self/maps") as maps:  # the libraries loaded into this process (Linux)
            paths = {line.split()[-1] for line in maps if "openblas" in line.lower() and "/" in line}
    except OSError:
        return None
    for path in sorted(paths, key=lambda path: "numpy" not in path):  # NumPy's own copy first
        library = ctypes.CDLL(path)
        for symbol in ("openblas_get_corename", "openblas_get_corename64_", "scipy_openblas_get_corename64_",
                       "scipy_openblas_get_corename"):
            get_corename = getattr(library, symbol, None)
            if get_corename is not None:
                get_corename.restype = ctypes.c_char_p
                return get_corename().decode()
    return None


def machine_description() -> dict[str, object]:
    """The CPU the run measures on: its model, cores and widest vector extension (OpenBLAS and PyTorch choose
    their kernels by it, and the ratios change with them)."""
    model, flags = platform.processor() or "unknown", set()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    model = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
    except OSError:
        pass  # not Linux: the model from platform, the SIMD level unknown
    return dict(cpu=model, cores=os.cpu_count(), architecture=platform.machine(), simd=simd_level(flags),
                python=platform.python_version())


def simd_level(flags: set[str]) -> str:
    """The widest x86 vector extension among a CPU's flags (as /proc/cpuinfo spells them)."""
    for flag, name in (("avx512f", "AVX-512"), ("avx2", "AVX2"), ("avx", "AVX")):
        if flag in flags:
            return name
    return "unknown"


def median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else 0.5 * (ordered[middle - 1] + ordered[middle])


def cell(values: Sequence[float] | None, unit: str) -> str:
    """'median [min - max]' of measurements in seconds shown as ms, or in MB as they are; '-' when none."""
    if not values:
        return "-"
    scale = 1e3 if unit == "ms" else 1.0
    return f"{median(values) * scale:.1f} [{min(values) * scale:.1f} - {max(values) * scale:.1f}]"


def markdown(results: dict) -> str:
    """BENCHMARKS.md's text from a run's results (the JSON bench.py saves): the machine at the top, then one table
    per benchmark with its own column names, a row per case and thread count, then tiny Shakespeare."""
    machine = results["machine"]
    info = next(iter(results["threads"].values()))["info"]
    kernel = info.get("blas_kernel")
    kernel = f"{kernel} kernels ({KERNEL_SIMD[kernel]})" if kernel in KERNEL_SIMD else f"{kernel} kernels"
    lines = ["# Benchmarks", "",
             f"Command: `{results['command']}`  ", f"Date: {results['date']}  ",
             f"CPU: {machine['cpu']}, {machine['cores']} cores ({machine['architecture']}), widest SIMD: "
             f"{machine['simd']}  ",
             f"NumPy {info['numpy']} with {info['blas']}, running {kernel}; PyTorch {info['torch']}, CPU "
             f"capability {info['torch_cpu_capability']}; Python {machine['python']}"]
    if machine.get("source"):
        lines += ["", machine["source"]]
    lines += ["", "Times in milliseconds (memory in MB): median over the repetitions, [min - max] beside it. Ratio = "
              "the first measured column / the second (below 1: the first is faster or smaller). Both sides run with "
              "the same thread count, in the same process, alternating.", ""]
    sections = {}  # section -> [(threads, row)], in the order the run measured them
    for threads, result in results["threads"].items():
        for row in result["rows"]:
            sections.setdefault(row["section"], []).append((threads, row))
    for section, rows in sections.items():
        ours_label, theirs_label, unit = COLUMNS[section]
        lines += [f"## {section}", "",
                  f"| threads | case | {ours_label} ({unit}) | {theirs_label} ({unit}) | ratio | note |",
                  "|---:|---|---:|---:|---:|---|"]
        for threads, row in rows:
            measured_peer = bool(row["theirs"]) and median(row["theirs"]) > 0
            ratio = f"{median(row['ours']) / median(row['theirs']):.2f}" if measured_peer else "-"
            lines.append(f"| {threads} | {row['case']} | {cell(row['ours'], unit)} | {cell(row['theirs'], unit)} | "
                         f"{ratio} | {row['note']} |")
        lines.append("")
    if "shakespeare" in results:
        lines += shakespeare_lines(results["shakespeare"])
    return "\n".join(lines)


def is_complete(args: argparse.Namespace) -> bool:
    """Whether a run measures everything a full run does (and so may replace the committed BENCHMARKS.md)."""
    return (not args.quick and args.threads is None and args.repeats is None and set(args.only) == set(SECTIONS)
            and args.shakespeare is not False)


def output_path(args: argparse.Namespace) -> Path:
    """Where the Markdown goes (the raw JSON beside it, same name with .json): --out when given; BENCHMARKS.md for
    a complete run; a partial one (--quick, --only, --threads, --repeats, --no-shakespeare) goes under bench-runs/,
    which git ignores, so a smoke run never replaces the committed results."""
    if args.out:
        return Path(args.out)
    if is_complete(args):
        return ROOT / "BENCHMARKS.md"
    return ROOT / "bench-runs" / time.strftime("%Y%m%d-%H%M%S.md")


def render(json_path: str | os.PathLike, out: str | os.PathLike | None) -> None:
    """Write the Markdown for results saved earlier, measuring nothing."""
    try:
        results = json.loads(Path(json_path).read_text(encoding="utf-8"))
        text = markdown(results)
    except (OSError, ValueError, KeyError, TypeError, StopIteration) as error:
        raise SystemExit(f"error: cannot render {json_path}: bench.py's results JSON expected ({error!r})") from None
    path = Path(out) if out else Path(json_path).with_suffix(".md")
    write_text(path, text + "\n")
    progress(f"written to {path}")


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.memory_probe:
        return memory_probe(args.memory_probe)
    if args.data_parallel_probe:
        case, side, repeats = args.data_parallel_probe
        return data_parallel_probe(case, side, int(repeats))
    if args.attention_memory_probe:
        return attention_memory_probe(*args.attention_memory_probe)
    if args.worker is not None:
        return worker(args)
    if args.render:
        return render(args.render, args.out)
    if args.device == "cuda":  # the GPU has its own script; it says what is missing without CuPy or a GPU
        import gpu_check
        return gpu_check.main(["--skip-tests", *(["--out", args.out] if args.out else [])])
    try:
        import torch  # noqa: F401  (checked here so the user hears about it before any timing)
    except ImportError:
        raise SystemExit("bench.py compares against PyTorch: pip install -r requirements-oracle.txt") from None
    markdown_path = output_path(args)
    json_path = markdown_path.with_suffix(".json")
    results = dict(command=" ".join(["python bench.py", *(sys.argv[1:] if argv is None else argv)]),
                   date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), machine=machine_description(), threads={})
    for threads in args.threads or ([1] if args.quick else [1, 2]):
        environment = {**os.environ, **{name: str(threads) for name in THREAD_VARIABLES}}
        command = [sys.executable, __file__, "--worker", str(threads)]
        command += ["--quick"] if args.quick else []
        command += ["--repeats", str(args.repeats)] if args.repeats else []
        command += ["--only", *args.only]
        progress(f"running at {threads} thread(s) in a new process")
        completed = subprocess.run(command, env=environment, stdout=subprocess.PIPE, text=True)  # progress: stderr
        if completed.returncode:
            raise SystemExit(f"error: the benchmark worker failed with exit status {completed.returncode} (its "
                             f"output is above)")
        results["threads"][str(threads)] = json.loads(completed.stdout.strip().splitlines()[-1])
        # The raw seconds, kept even if anything below fails: hours of measurement are not to be lost.
        write_text(json_path, json.dumps(results, indent=1))
    if args.shakespeare if args.shakespeare is not None else not args.quick:
        results["shakespeare"] = shakespeare_reproduction(args.quick)
        write_text(json_path, json.dumps(results, indent=1))
    text = markdown(results)
    print(text)
    write_text(markdown_path, text + "\n")
    progress(f"written to {markdown_path} and {json_path}")
    if not is_complete(args) and not args.out:
        progress("a partial run: BENCHMARKS.md keeps the full run's results (--out BENCHMARKS.md replaces them)")


if __name__ == "__main__":
    main()
