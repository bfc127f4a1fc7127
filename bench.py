"""Benchmarks: this NumPy model against an equivalent PyTorch CPU model, measured in the same run.

    python bench.py             # every section, 1 and 2 threads, writes BENCHMARKS.md
    python bench.py --quick     # fewer repetitions and the smaller shapes only (about a minute)

Each thread count runs in its own subprocess, because BLAS reads its thread count from the
environment when NumPy is first imported. Ratios are quoted at one thread: on a shared 2-core
machine two-thread timings swing by several times when the other core is busy.
torch is a benchmark-only dependency (requirements-oracle.txt).
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import time

THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a short smoke run: fewer repetitions and shapes")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="thread counts to measure")
    parser.add_argument("--repeats", type=int, help="timed repetitions per measurement (default 5, quick 2)")
    parser.add_argument("--output", default="BENCHMARKS.md", help="where to write the Markdown table")
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)  # internal: run at this thread count
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


def torch_gpt_forward(torch, config, weights, ids):
    """GPT-shaped forward pass from standard torch operations (fused attention kernel included)."""
    F = torch.nn.functional
    B, T = ids.shape
    C, H = config.d_model, config.n_heads
    x = weights["decoder.token_embedding.weight"][ids]
    x = x + weights["decoder.position_embedding.weight"][:T]
    for layer in range(config.n_layers):
        w = {name.split(f"decoder.blocks.{layer}.", 1)[1]: value for name, value in weights.items()
             if name.startswith(f"decoder.blocks.{layer}.")}
        h = F.layer_norm(x, (C,), w["norm1.weight"], w["norm1.bias"], config.layer_norm_eps)
        q, k, v = torch.addmm(w["attention.b_qkv"], h.view(B * T, C), w["attention.W_qkv"]).split(C, dim=1)
        q, k, v = (t.reshape(B, T, H, C // H).transpose(1, 2) for t in (q, k, v))
        attended = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B * T, C)
        x = x + torch.addmm(w["attention.b_out"], attended, w["attention.W_out"]).view(B, T, C)
        h = F.layer_norm(x, (C,), w["norm2.weight"], w["norm2.bias"], config.layer_norm_eps).view(B * T, C)
        hidden = F.gelu(torch.addmm(w["feed_forward.b_in"], h, w["feed_forward.W_in"]), approximate="tanh")
        x = x + torch.addmm(w["feed_forward.b_out"], hidden, w["feed_forward.W_out"]).view(B, T, C)
    x = F.layer_norm(x, (C,), weights["decoder.final_norm.weight"], weights["decoder.final_norm.bias"],
                     config.layer_norm_eps)
    return x @ weights["decoder.token_embedding.weight"].T


def bench_forward(threads, quick, repeats):
    """Forward pass at GPT-2 small's shape (random weights, float32, batch 1)."""
    import numpy as np
    import torch

    from transformer_lm import TransformerConfig, TransformerLM

    torch.set_num_threads(threads)
    config = TransformerConfig.from_preset("gpt2", dropout=0.0)
    model = TransformerLM(config, seed=0).eval()
    weights = {name: torch.from_numpy(value) for name, value in model.parameters().items()}
    rows = []
    for seq_len in ([64, 256] if quick else [64, 256, 1024]):
        ids = np.random.default_rng(seq_len).integers(0, config.vocab_size, (1, seq_len))
        torch_ids = torch.from_numpy(ids)
        with torch.inference_mode():
            difference = np.abs(model(ids) - torch_gpt_forward(torch, config, weights, torch_ids).numpy()).max()
            ours, theirs = time_pair(lambda ids=ids: model(ids),
                                     lambda ids=torch_ids: torch_gpt_forward(torch, config, weights, ids), repeats)
        rows.append(dict(section="forward", case=f"GPT-2 small, B=1, T={seq_len}", ours=ours, theirs=theirs,
                         note=f"max |logit difference| {difference:.1e}"))
    return rows


SECTIONS = [bench_forward]


def worker(args):
    """Runs inside a subprocess whose thread variables are already set; prints JSON rows."""
    import numpy as np
    repeats = args.repeats or (2 if args.quick else 5)
    rows = []
    for section in SECTIONS:
        rows.extend(section(args.worker, args.quick, repeats))
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
            ours, theirs = median(row["ours"]) * 1e3, median(row["theirs"]) * 1e3
            lines.append(f"| {row['section']} | {row['case']} | {ours:.1f} [{min(row['ours']) * 1e3:.1f} - "
                         f"{max(row['ours']) * 1e3:.1f}] | {theirs:.1f} [{min(row['theirs']) * 1e3:.1f} - "
                         f"{max(row['theirs']) * 1e3:.1f}] | {ours / theirs:.2f} | {row['note']} |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    if args.worker is not None:
        return worker(args)
    try:
        import torch  # noqa: F401  (checked here so the user hears about it before any timing)
    except ImportError:
        raise SystemExit("bench.py compares against PyTorch: pip install -r requirements-oracle.txt") from None
    results = {}
    for threads in args.threads:
        environment = {**os.environ, **{name: str(threads) for name in THREAD_VARIABLES}}
        command = [sys.executable, __file__, "--worker", str(threads)]
        command += ["--quick"] if args.quick else []
        command += ["--repeats", str(args.repeats)] if args.repeats else []
        print(f"running at {threads} thread(s) ...", file=sys.stderr)
        completed = subprocess.run(command, env=environment, capture_output=True, text=True)
        if completed.returncode:
            raise SystemExit(f"benchmark worker failed:\n{completed.stderr}")
        results[threads] = json.loads(completed.stdout.strip().splitlines()[-1])
    text = markdown_table(results, " ".join(["python bench.py", *(sys.argv[1:] if argv is None else argv)]))
    print(text)
    with open(args.output, "w") as file:
        file.write(text + "\n")
    print(f"\nwritten to {args.output}", file=sys.stderr)


if __name__ == "__main__":
    main()
