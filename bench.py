"""Benchmarks: this NumPy model against an equivalent PyTorch CPU model, measured in the same run.

    python bench.py             # every section, 1 and 2 threads, and tiny Shakespeare (about 35 minutes)
    python bench.py --quick     # a smoke run: 1 thread, fewer repetitions, small shapes (about a minute)

Each thread count runs in its own subprocess, because BLAS reads its thread count from the
environment when NumPy is first imported. Ratios are quoted at one thread: on a shared 2-core
machine two-thread timings swing by several times when the other core is busy.
torch is a benchmark-only dependency (requirements-oracle.txt).
"""
import argparse
import functools
import json
import math
import os
import platform
import subprocess
import sys
import time

THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a short smoke run: fewer repetitions and shapes")
    parser.add_argument("--threads", type=int, nargs="+", help="thread counts to measure (default 1 2; quick: 1)")
    parser.add_argument("--repeats", type=int, help="timed repetitions per measurement (default 5, quick 2)")
    parser.add_argument("--only", nargs="+", default=list(SECTIONS), choices=list(SECTIONS),
                        help="sections to run (default: all)")
    parser.add_argument("--shakespeare", action=argparse.BooleanOptionalAction, default=None,
                        help="also reproduce nanoGPT's tiny-Shakespeare run with train.py, with and without adaptive "
                             "span (about 5 minutes; default: on, off with --quick)")
    parser.add_argument("--output", default="BENCHMARKS.md", help="where to write the Markdown table")
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)  # internal: run at this thread count
    parser.add_argument("--memory-probe", choices=["ours", "theirs"], help=argparse.SUPPRESS)  # internal
    return parser.parse_args(argv)


def time_pair(ours, theirs, repeats):
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


def random_batches(np, config, batch_size, count, seed=0):
    rng = np.random.default_rng(seed)
    return [(rng.integers(0, config.vocab_size, (batch_size, config.max_seq_len)),
             rng.integers(0, config.vocab_size, (batch_size, config.max_seq_len))) for _ in range(count)]


def bench_matmul(threads, quick, repeats, context):
    """The float32 matrix-product peak this run's MFU figures are measured against."""
    import numpy as np
    import torch

    import torch_peer
    rates = torch_peer.matmul_gflops(np, torch)
    context["peak_gflops"] = rates["numpy"]
    seconds = 2 * 1024 ** 3 / 1e9
    return [dict(section="matmul", case="1024 x 1024 x 1024 float32, best of 10", ours=[seconds / rates["numpy"]],
                 theirs=[seconds / rates["torch"]],
                 note=f"NumPy {rates['numpy']:.0f} GFLOP/s, torch {rates['torch']:.0f} GFLOP/s")]


def bench_training(threads, quick, repeats, context):
    """One optimizer step (forward, backward, clip 1.0, AdamW) at nanoGPT's CPU config and a mid-size one."""
    import numpy as np
    import torch

    import torch_peer
    from transformer_lm import TransformerConfig

    shapes = [("nanoGPT CPU: L4 H4 C128, B12 T64, V65", dict(n_layers=4, n_heads=4, d_model=128, max_seq_len=64), 12),
              ("mid: L6 H6 C384, B8 T256, V65", dict(n_layers=6, n_heads=6, d_model=384, max_seq_len=256), 8)]
    rows = []
    for case, shape, batch_size in shapes[:1] if quick else shapes:
        config = TransformerConfig.from_preset("nanogpt-cpu", **shape)
        our_times, their_times = time_training_steps(np, torch, config, batch_size, 3 * repeats)
        tokens = batch_size * config.max_seq_len
        flops = torch_peer.training_flops_per_token(config) * tokens
        rows.append(dict(section="training step", case=case, ours=our_times, theirs=their_times,
                         note=f"tokens/s ours {tokens / median(our_times):,.0f}, torch "
                              f"{tokens / median(their_times):,.0f}; MFU ours "
                              f"{flops / median(our_times) / 1e9 / context['peak_gflops']:.0%}, torch "
                              f"{flops / median(their_times) / 1e9 / context['peak_gflops']:.0%}"))
    return rows


def time_training_steps(np, torch, config, batch_size, repeats, only=None):
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

    def ours():
        ids, targets = batches[steps["ours"] % len(batches)]
        steps["ours"] += 1
        model.loss(ids, targets)
        grads = model.backward()
        clip_grad_norm(grads, 1.0)
        optimizer.step(grads)

    def theirs():
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


def bench_forward(threads, quick, repeats, context):
    """Forward pass at GPT-2 small's shape (random weights, float32, batch 1)."""
    import numpy as np
    import torch

    import torch_peer
    from transformer_lm import TransformerConfig, TransformerLM

    config = TransformerConfig.from_preset("gpt2", dropout=0.0)
    model = TransformerLM(config, seed=0).eval()
    peer = torch_peer.build(torch, model).eval()
    rows = []
    for seq_len in ([64, 256] if quick else [64, 256, 1024]):
        ids = np.random.default_rng(seq_len).integers(0, config.vocab_size, (1, seq_len))
        torch_ids = torch.from_numpy(ids)
        with torch.inference_mode():
            difference = np.abs(model(ids) - peer(torch_ids).numpy()).max()
            our_times, their_times = time_pair(lambda ids=ids: model(ids), lambda ids=torch_ids: peer(ids), repeats)
        flops = torch_peer.forward_flops_per_token(config, seq_len) * seq_len
        rows.append(dict(section="forward", case=f"GPT-2 small, B=1, T={seq_len}", ours=our_times,
                         theirs=their_times, note=f"max logit difference {difference:.1e}; MFU ours "
                         f"{flops / median(our_times) / 1e9 / context['peak_gflops']:.0%}"))
    return rows


def bench_generation(threads, quick, repeats, context):
    """Greedy generation at GPT-2 small's shape: 64-token prompt, 256 new tokens (quick: 32)."""
    import numpy as np
    import torch

    import torch_peer
    from transformer_lm import TransformerConfig, TransformerLM

    config = TransformerConfig.from_preset("gpt2", dropout=0.0)
    model = TransformerLM(config, seed=0).eval()
    peer = torch_peer.build(torch, model).eval()
    new_tokens = 16 if quick else 256
    rows = []
    for batch_size in (1,) if quick else (1, 8):
        prompt = np.random.default_rng(batch_size).integers(0, config.vocab_size, (batch_size, 64))
        torch_prompt = torch.from_numpy(prompt)
        same = np.array_equal(model.generate(prompt, new_tokens, temperature=0),
                              peer.generate_greedy(torch_prompt, new_tokens).numpy())
        our_times, their_times = time_pair(lambda p=prompt: model.generate(p, new_tokens, temperature=0),
                                           lambda p=torch_prompt: peer.generate_greedy(p, new_tokens),
                                           max(1, repeats // 2))
        tokens = batch_size * new_tokens
        rows.append(dict(section="generation (KV cache)", case=f"GPT-2 small, B={batch_size}, 64 + {new_tokens} "
                         "tokens", ours=our_times, theirs=their_times,
                         note=f"tokens/s ours {tokens / median(our_times):.1f}, torch "
                              f"{tokens / median(their_times):.1f}; same tokens as torch: {same}"))
        if batch_size == 1:
            uncached = uncached_generation_seconds(model, prompt, new_tokens)
            rows.append(dict(section="generation, no cache", case=f"GPT-2 small, B=1, 64 + {new_tokens} tokens",
                             ours=[uncached], theirs=our_times,
                             note=f"'PyTorch' column = ours WITH the KV cache: the cache is "
                                  f"{uncached / median(our_times):.1f}x faster; tokens/s without "
                                  f"{new_tokens / uncached:.1f}"))
    return rows


def uncached_generation_seconds(model, prompt, new_tokens):
    """Greedy decoding without the cache, timed once: it is slow."""
    from generation import greedy_without_cache
    return timed(lambda: greedy_without_cache(model, prompt, new_tokens))


MID_SIZE = dict(n_layers=6, n_heads=6, d_model=384, max_seq_len=256)
MID_BATCH = 8


def analytic_training_bytes(config, batch_size):
    """The least memory a training step can live in: parameters, gradients and AdamW's two moments, plus the
    activations backward needs per layer (the block input and both LayerNorm outputs, q/k/v, the attention
    output, the residual after attention, the feed-forward pre- and post-activation: 16 B*T*C numbers; the
    attention probabilities: B*H*T*T) and the logits (B*T*V), all float32."""
    from transformer_lm import TransformerLM
    parameters = TransformerLM(config).num_parameters()
    B, T, C, H = batch_size, config.max_seq_len, config.d_model, config.n_heads
    activations = config.n_layers * (16 * B * T * C + B * H * T * T) + B * T * config.vocab_size
    return 4 * (4 * parameters + activations)


def peak_rss_megabytes():
    """This process's peak resident memory. VmHWM from /proc (Linux) rather than ru_maxrss, which a
    process started by a larger one inherits from it across fork and exec."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise OSError("no VmHWM in /proc/self/status: the memory benchmark needs Linux")


def memory_probe(side):
    """Runs in its own process: peak RSS growth over three training steps at the mid-size config."""
    import numpy as np
    import torch

    from transformer_lm import TransformerConfig
    config = TransformerConfig.from_preset("nanogpt-cpu", **MID_SIZE)
    torch.set_num_threads(1)
    baseline = peak_rss_megabytes()
    time_training_steps(np, torch, config, MID_BATCH, 3, only=side)
    print(json.dumps({"megabytes": peak_rss_megabytes() - baseline}))


def bench_memory(threads, quick, repeats, context):
    """Peak resident memory of the training step at the mid-size config, each side in its own process."""
    from transformer_lm import TransformerConfig
    config = TransformerConfig.from_preset("nanogpt-cpu", **MID_SIZE)
    growth = {}
    for side in ("ours", "theirs"):
        completed = subprocess.run([sys.executable, __file__, "--memory-probe", side], capture_output=True, text=True,
                                   env={**os.environ, **{name: "1" for name in THREAD_VARIABLES}})
        if completed.returncode:
            raise SystemExit(f"memory probe failed:\n{completed.stderr}")
        growth[side] = json.loads(completed.stdout.strip().splitlines()[-1])["megabytes"]
    minimum = analytic_training_bytes(config, MID_BATCH) / 2**20
    return [dict(section="peak memory", case="training step, mid: L6 H6 C384, B8 T256 (RSS growth, MB)",
                 ours=[growth["ours"] / 1e3], theirs=[growth["theirs"] / 1e3],
                 note=f"columns in MB, not ms: ours {growth['ours']:.0f} MB = {growth['ours'] / minimum:.2f}x the "
                      f"analytic minimum {minimum:.0f} MB (weights, grads, AdamW moments, saved activations); "
                      f"torch {growth['theirs']:.0f} MB")]


def bench_transformers(threads, quick, repeats, context):
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
    rows = []

    seq_len = 64 if quick else 256
    ids = np.random.default_rng(seq_len).integers(0, vocab_size, (1, seq_len))
    torch_ids = torch.from_numpy(ids)
    with torch.inference_mode():
        difference = np.abs(model(ids) - hf_model(torch_ids, use_cache=False).logits.numpy()).max()
        our_times, their_times = time_pair(lambda: model(ids), lambda: hf_model(torch_ids, use_cache=False), repeats)
    rows.append(dict(section="transformers", case=f"GPT-2 small forward, B=1, T={seq_len}", ours=our_times,
                     theirs=their_times, note=f"GPT2LMHeadModel; max |logit difference| {difference:.1e}"))

    prompt_len, new_tokens = (16, 16) if quick else (64, 128)
    prompt = np.random.default_rng(prompt_len).integers(0, vocab_size, (1, prompt_len))
    torch_prompt = torch.from_numpy(prompt)

    def generate_ours():
        return model.generate(prompt, new_tokens, temperature=0)

    def generate_theirs():
        # The saved config has no end-of-text token, so neither side stops early.
        return hf_model.generate(torch_prompt, attention_mask=torch.ones_like(torch_prompt), do_sample=False,
                                 max_new_tokens=new_tokens, use_cache=True, pad_token_id=0)

    with torch.inference_mode():
        same_tokens = np.array_equal(generate_ours(), generate_theirs().numpy())
        our_times, their_times = time_pair(generate_ours, generate_theirs, max(1, repeats // 2))  # as bench_generation
    rows.append(dict(section="transformers", case=f"GPT-2 small greedy, {new_tokens} tokens after {prompt_len}",
                     ours=our_times, theirs=their_times,
                     note=f"KV cache both; tokens/s {new_tokens / median(our_times):.1f} vs "
                          f"{new_tokens / median(their_times):.1f}; same tokens: {'yes' if same_tokens else 'no'}"))
    return rows


def bench_safetensors(threads, quick, repeats, context):
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

        def load_and_sum(loader):
            return sum(float(array.sum()) for array in loader(path).values())

        our_times, their_times = time_pair(lambda: load_and_sum(load_file), lambda: load_and_sum(library_load_file),
                                           repeats)
        same = load_and_sum(load_file) == load_and_sum(library_load_file)
    return [dict(section="safetensors load", case=f"{megabytes:.0f} MB, load + sum every tensor", ours=our_times,
                 theirs=their_times, note=f"ours memory-maps (no copy); same sums: {same}")]


ATTENTION_D_MODEL, ATTENTION_HEADS, WINDOW = 256, 4, 256


def attention_layer(pattern, seed=0):
    import numpy as np

    from attention import CausalSelfAttention

    rng = np.random.default_rng(seed)
    layer = CausalSelfAttention(ATTENTION_D_MODEL, ATTENTION_HEADS, 0.0, rng, np.float32, pattern=pattern)
    for value in layer.params.values():
        value[...] = rng.normal(0.0, 0.02, value.shape)
    return layer


def forward_backward(layer, x, dout):
    """One forward and backward pass of an attention layer."""
    layer.forward(x)
    layer.backward(dout)


def peak_memory_mib(function):
    """Peak bytes that `function()` allocates while it runs (its allocations still alive at the peak), in MiB."""
    import tracemalloc
    tracemalloc.start()
    try:
        function()
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


def bench_attention(threads, quick, repeats, context):
    """One attention layer, forward + backward, sparse patterns against full causal attention ("PyTorch"
    column = our full attention, the peer in this section), batch 1, d_model 256, 4 heads, float32.
    sliding (window 256) is O(T * window): its time should grow linearly in T; strided uses
    stride = the smallest power of two >= sqrt(T) (Child et al. take stride ~ sqrt(T)). Peak memory of one
    forward + backward of each, measured with tracemalloc (NumPy reports its allocations to it)."""
    import numpy as np

    from sparse_attention import SlidingWindow, Strided

    rows, sliding_time_at_shortest = [], None
    for seq_len in ([1024] if quick else [1024, 2048, 4096, 8192]):
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
            note = (f"theirs = full causal attention; peak memory {memory[name]:.0f} MiB vs full "
                    f"{memory['full']:.0f} MiB")
            if name.startswith("sliding"):
                sliding_time_at_shortest = sliding_time_at_shortest or median(ours)
                note += f"; {median(ours) / sliding_time_at_shortest:.1f}x its T=1024 time"
            rows.append(dict(section="attention", ours=ours, theirs=theirs, note=note,
                             case=f"{name}, B=1, C={ATTENTION_D_MODEL}, H={ATTENTION_HEADS}, T={seq_len}"))
    return rows


def bench_tokenizer(threads, quick, repeats, context):
    """Byte-level BPE: encoding tiny Shakespeare with GPT-2's files against tiktoken (same ids checked), and
    training a 4,096-token vocabulary on it. Skipped when ../shared is absent."""
    from pathlib import Path

    from tokenizer import ByteBPETokenizer

    shared = Path(__file__).resolve().parent.parent / "shared" / "data"
    if not (shared / "gpt2-tokenizer" / "vocab.json").exists() or not (shared / "tinyshakespeare.txt").exists():
        return []
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
    train_times = [timed(lambda: ByteBPETokenizer.train(text, 4096)) for _ in range(max(1, repeats // 2))]
    return [dict(section="tokenizer", case="GPT-2 BPE encode, tiny Shakespeare (1.1 MB)", ours=encode_seconds,
                 theirs=their_times, note=f"MB/s ours {megabytes / median(encode_seconds):.1f} (cold word cache; "
                 f"loading the files {1000 * load_seconds:.0f} ms more), tiktoken "
                 f"{megabytes / median(their_times):.1f}; same ids: {same}"),
            dict(section="tokenizer", case="train a 4,096-token BPE on tiny Shakespeare", ours=train_times,
                 theirs=None, note="no peer measured")]


def tiktoken_gpt2(vocab_path, merges_path):
    """tiktoken's GPT-2 encoding built from local files (get_encoding("gpt2") would download them)."""
    from pathlib import Path

    import tiktoken
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks
    ranks = data_gym_to_mergeable_bpe_ranks(vocab_bpe_file=str(merges_path), encoder_json_file=str(vocab_path))
    pattern = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
    special = {"<|endoftext|>": json.loads(Path(vocab_path).read_text(encoding="utf-8"))["<|endoftext|>"]}
    return tiktoken.Encoding(name="gpt2-local", pat_str=pattern, mergeable_ranks=ranks, special_tokens=special)


def timed(function):
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def median_seconds(function, repeats):
    return median([timed(function) for _ in range(repeats)])


def shakespeare_reproduction(quick):
    """Train nanoGPT's CPU quick-start config on tiny Shakespeare with train.py (2 threads, as the reference
    run) and set the eval losses beside nanoGPT's from ../shared/reference; then the same run with adaptive
    attention spans, at equal steps. Returns Markdown lines."""
    from pathlib import Path

    root = Path(__file__).resolve().parent
    corpus = root.parent / "shared" / "data" / "tinyshakespeare.txt"
    reference_file = root.parent / "shared" / "reference" / "nanogpt-cpu-shakespeare-char.md"
    if not corpus.exists():
        return ["## Tiny Shakespeare (nanoGPT CPU quick start)", "", f"skipped: {corpus} is absent", ""]
    reference = {}
    if reference_file.exists():
        for line in reference_file.read_text().splitlines():
            cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
            if len(cells) == 3 and cells[0].isdigit():
                reference[int(cells[0])] = (float(cells[1]), float(cells[2]))
    flags = ["--max-iters", "200", "--eval-interval", "100"] if quick else []
    full, full_seconds = train_run(root, corpus, flags)
    adaptive, adaptive_seconds = train_run(root, corpus, [*flags, "--adaptive-span"])
    lines = ["## Tiny Shakespeare, nanoGPT's CPU quick start", "",
             "`python train.py --data ../shared/data/tinyshakespeare.txt --preset shakespeare-char-cpu` "
             "(L4 H4 C128, B12 T64, 2000 iterations, lr 1e-3 -> 1e-4, 2 threads); nanoGPT's figures from "
             "`../shared/reference/nanogpt-cpu-shakespeare-char.md`. Eval losses average 20 batches: a few "
             "hundredths of noise. Last column: the same run with `--adaptive-span` (max span 64 = block size, "
             "ramp 32, span loss 2e-6, as the reference implementation's defaults).", "",
             "| iter | ours train | ours val | nanoGPT train | nanoGPT val | val difference | adaptive span val |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for row, adaptive_row in zip(full, adaptive):
        theirs = reference.get(row["iter"])
        their_cells = f"{theirs[0]:.4f} | {theirs[1]:.4f} | {row['val_loss'] - theirs[1]:+.4f}" if theirs else " | |"
        lines.append(f"| {row['iter']} | {row['train_loss']:.4f} | {row['val_loss']:.4f} | {their_cells} | "
                     f"{adaptive_row['val_loss']:.4f} |")
    lines += ["", f"Whole run {full_seconds:.0f} s wall including evaluation; median {full[-1]['ms_per_iter']:.1f} "
              "ms/iter (nanoGPT's reference: 42.6 ms/iter, 3 min 05 s, on this kind of machine at 2 threads). "
              f"With adaptive span: {adaptive_seconds:.0f} s, median {adaptive[-1]['ms_per_iter']:.1f} ms/iter.", "",
              "Learned spans (tokens) per head at the end of the adaptive-span run:", ""]
    lines += [f"- layer {layer}: " + ", ".join(f"{span:.1f}" for span in spans)
              for layer, spans in enumerate(adaptive[-1]["spans"])]
    return lines + [""]


def train_run(root, corpus, flags):
    """One train.py run on tiny Shakespeare at 2 threads: (rows of metrics.jsonl, wall seconds)."""
    import tempfile
    from pathlib import Path
    with tempfile.TemporaryDirectory() as out_dir:
        start = time.perf_counter()
        completed = subprocess.run([sys.executable, str(root / "train.py"), "--data", str(corpus), "--preset",
                                    "shakespeare-char-cpu", "--out-dir", out_dir, "--sample-tokens", "0", *flags],
                                   env={**os.environ, **{name: "2" for name in THREAD_VARIABLES}},
                                   capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if completed.returncode:
            raise SystemExit(f"train.py failed:\n{completed.stderr}")
        return [json.loads(line) for line in (Path(out_dir) / "metrics.jsonl").read_text().splitlines()], seconds


SECTIONS = {"matmul": bench_matmul, "training": bench_training, "forward": bench_forward,
            "generation": bench_generation, "memory": bench_memory, "tokenizer": bench_tokenizer,
            "transformers": bench_transformers, "safetensors": bench_safetensors, "attention": bench_attention}


def worker(args):
    """Runs inside a subprocess whose thread variables are already set; prints JSON rows."""
    import numpy as np
    repeats = args.repeats or (2 if args.quick else 5)
    import torch
    torch.set_num_threads(args.worker)
    rows, context = [], {}
    for name in ["matmul", *[name for name in args.only if name != "matmul"]]:
        rows.extend(SECTIONS[name](args.worker, args.quick, repeats, context))
    info = dict(numpy=np.__version__, blas=blas_description(np))
    print(json.dumps(dict(rows=rows, info=info)))


def blas_description(np):
    try:
        config = np.show_config(mode="dicts")
        blas = config["Build Dependencies"]["blas"]
        return f"{blas.get('name')} {blas.get('version', '')}".strip()
    except (TypeError, KeyError):
        return "unknown"


def median(values):
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else 0.5 * (ordered[middle - 1] + ordered[middle])


def milliseconds(seconds):
    """'median [min - max]' in milliseconds, or '-' when nothing was measured."""
    if not seconds:
        return "-"
    return f"{median(seconds) * 1e3:.1f} [{min(seconds) * 1e3:.1f} - {max(seconds) * 1e3:.1f}]"


def markdown_table(results, command):
    import torch
    info = next(iter(results.values()))["info"]
    lines = ["# Benchmarks", "",
             f"Command: `{command}`  ", f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}  ",
             f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
             f"NumPy {info['numpy']} ({info['blas']}), PyTorch {torch.__version__} (CPU)",
             "", "Times in milliseconds: median over the repetitions, [min - max] beside it. Ratio = ours / PyTorch "
             "(below 1 means we are faster). Both sides run with the same thread count, in the same process, "
             "alternating.", ""]
    for threads, result in results.items():
        lines += [f"## {threads} thread{'s' if threads > 1 else ''}", "",
                  "| benchmark | case | ours (ms) | PyTorch (ms) | ratio | note |", "|---|---|---:|---:|---:|---|"]
        for row in result["rows"]:
            measured_peer = bool(row["theirs"]) and median(row["theirs"]) > 0
            ratio = f"{median(row['ours']) / median(row['theirs']):.2f}" if measured_peer else "-"
            lines.append(f"| {row['section']} | {row['case']} | {milliseconds(row['ours'])} | "
                         f"{milliseconds(row['theirs'])} | {ratio} | {row['note']} |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    if args.memory_probe:
        return memory_probe(args.memory_probe)
    if args.worker is not None:
        return worker(args)
    try:
        import torch  # noqa: F401  (checked here so the user hears about it before any timing)
    except ImportError:
        raise SystemExit("bench.py compares against PyTorch: pip install -r requirements-oracle.txt") from None
    results = {}
    for threads in args.threads or ([1] if args.quick else [1, 2]):
        environment = {**os.environ, **{name: str(threads) for name in THREAD_VARIABLES}}
        command = [sys.executable, __file__, "--worker", str(threads)]
        command += ["--quick"] if args.quick else []
        command += ["--repeats", str(args.repeats)] if args.repeats else []
        command += ["--only", *args.only]
        print(f"running at {threads} thread(s) ...", file=sys.stderr)
        completed = subprocess.run(command, env=environment, capture_output=True, text=True)
        if completed.returncode:
            raise SystemExit(f"benchmark worker failed:\n{completed.stderr}")
        results[threads] = json.loads(completed.stdout.strip().splitlines()[-1])
        # The raw seconds, kept even if anything below fails: hours of measurement are not to be lost.
        with open(os.path.splitext(args.output)[0] + ".json", "w") as file:
            json.dump(results, file, indent=1)
    text = markdown_table(results, " ".join(["python bench.py", *(sys.argv[1:] if argv is None else argv)]))
    if args.shakespeare if args.shakespeare is not None else not args.quick:
        print("training on tiny Shakespeare ...", file=sys.stderr)
        text += "\n" + "\n".join(shakespeare_reproduction(args.quick))
    print(text)
    with open(args.output, "w") as file:
        file.write(text + "\n")
    print(f"\nwritten to {args.output}", file=sys.stderr)


if __name__ == "__main__":
    main()
