"""Pictures: the masks of the attention patterns, what a trained model attends to, and a run's loss curves.

    python visualize.py patterns --seq-len 64 --out patterns.png
    python visualize.py attention --checkpoint out-shakespeare --prompt "ROMEO:" --out attn.png
    python train.py --plot out-shakespeare          # the loss curves (loss_figure) -> out-shakespeare/loss.png

`patterns` draws, side by side, which keys each query may see under every pattern (one panel per head
group: the strided and fixed patterns split their heads in two). `attention` draws the attention
weights of every layer (rows) and head (columns) for the prompt, query tokens down and key tokens across,
one picture per layer when there are many heads, and for an adaptive-span model a chart of the spans
(ATTN-spans.png). matplotlib is needed here only (pip install matplotlib).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from checkpoint import CheckpointError
from sparse_attention import dense_mask, effective_spans, make_pattern, span_summary
from transformer_config import TransformerConfig
from transformer_lm import load_model_and_tokenizer

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from transformer_lm import TransformerLM

PANEL_INCHES = 3.0  # every panel is this many inches square, so the picture's size follows from its panels
DPI = 100
# A panel is 300 pixels wide, so longer sequences only blur, while the (T, T) masks and weights grow as T^2.
MAX_PICTURE_TOKENS = 1024
MAX_TICK_LABELS = 32  # per axis: more would overlap on a 3-inch panel
MAX_PANELS = 16       # attention panels (layers x heads) in one picture; beyond, one picture per layer
HEADS_PER_ROW = 4     # in a one-layer picture
LOSS_SMOOTHING = 0.9  # EMA factor for the training loss: about the last 10 iterations


def new_figure(**settings: Any) -> Figure:
    """A matplotlib Figure, not registered with pyplot (nothing to close, no window, no display needed)."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise SystemExit("error: drawing pictures needs matplotlib, which is not installed "
                         "(pip install matplotlib)") from None
    return Figure(dpi=DPI, layout="constrained", **settings)


def save(figure: Figure, out: str | Path) -> None:
    """Write the figure to out, its format taken from the suffix; a failure is one `error:` line."""
    try:
        figure.savefig(out, dpi=DPI)
    except (OSError, ValueError) as error:  # ValueError: a format this matplotlib cannot write after all
        raise SystemExit(f"error: cannot write {out}: {error}") from None


# ----------------------------------------------------------------------------------------------
# Pattern masks


def pattern_panels(seq_len: int, window: int, stride: int, summary: int) -> list[tuple[str, np.ndarray]]:
    """[(title, blocked (T, T) bool)]: one mask per head group of every pattern."""
    settings = {"full": {}, "sliding": dict(window=window), "strided": dict(stride=stride),
                "fixed": dict(stride=stride, summary=summary)}
    group_names = {"strided": ("local heads", "strided heads"), "fixed": ("block heads", "summary heads")}
    panels = []
    for attention, fields in settings.items():
        config = TransformerConfig(d_model=2, n_heads=2, max_seq_len=seq_len, attention=attention, **fields)
        masks = dense_mask(make_pattern(config), 2, seq_len)                 # head 0 and head 1
        details = ", ".join(f"{name} {value}" for name, value in fields.items())
        title = attention + (f" ({details})" if details else "")
        if attention in group_names:
            panels += [(f"{title}\n{group}", mask) for group, mask in zip(group_names[attention], masks)]
        else:
            panels.append((title, masks[0]))
    return panels


def patterns_figure(panels: Sequence[tuple[str, np.ndarray]]) -> Figure:
    """The masks side by side, a legend below saying what black and white mean."""
    from matplotlib.patches import Patch
    figure = new_figure(figsize=(PANEL_INCHES * len(panels), PANEL_INCHES + 0.8))
    for axis, (title, blocked) in zip(figure.subplots(1, len(panels), squeeze=False)[0], panels):
        axis.imshow(~blocked, cmap="Greys", vmin=0, vmax=1, interpolation="nearest")  # seen = 1 = black
        axis.set_title(title, fontsize=8)
        axis.set_xlabel("key position", fontsize=7)
        axis.set_ylabel("query position", fontsize=7)
        axis.tick_params(labelsize=6)
    figure.legend(handles=[Patch(facecolor="black", label="black: the query sees this key"),
                           Patch(facecolor="white", edgecolor="grey", label="white: masked (never seen)")],
                  loc="outside lower center", ncols=2, fontsize=8, frameon=False)
    return figure


# ----------------------------------------------------------------------------------------------
# Attention weights and spans


def attention_weights(model: TransformerLM, ids: np.ndarray) -> list[np.ndarray]:
    """ids (1, T) -> per layer the weights (H, T, T) of every head, from one evaluation-mode pass."""
    model.eval()
    # Given positions, every pattern attends densely and keeps its (T, T) weights.
    model.decoder.forward(ids, positions=np.arange(ids.shape[1]))
    return [pattern.dense_weights()[0] for pattern in model.attention_patterns()]


def token_labels(tokenizer: Any, ids: Sequence[int]) -> list[str]:
    """One tick label per token: its text, with spaces shown as ␣ and newlines and tabs as \\n and \\t."""
    return [repr(tokenizer.decode([token]))[1:-1].replace(" ", "␣") for token in ids]


def thinned_ticks(labels: Sequence[str]) -> tuple[list[int], list[str]]:
    """(positions, labels) of at most MAX_TICK_LABELS evenly spaced ticks, long labels cut to 10 characters."""
    step = math.ceil(len(labels) / MAX_TICK_LABELS)
    positions = list(range(0, len(labels), step))
    return positions, [labels[i] if len(labels[i]) <= 10 else labels[i][:9] + "…" for i in positions]


def quoted_prompt(prompt: str, limit: int = 60) -> str:
    """The prompt for a title: quoted, control characters escaped, cut to about `limit` characters."""
    shown = repr(prompt)
    return shown if len(shown) <= limit else shown[:limit - 2] + "…" + shown[0]


def attention_figure(weights: Sequence[np.ndarray], labels: Sequence[str], title: str,
                     layers: Sequence[int] | None = None) -> Figure:
    """A panel per head of the given layers (weights[i]: (H, T, T) for layer layers[i]), query tokens down, key
    tokens across, one colorbar. One layer with many heads wraps after HEADS_PER_ROW panels."""
    layers = range(len(weights)) if layers is None else layers
    n_heads = len(weights[0])
    if len(weights) == 1:
        rows, columns = math.ceil(n_heads / HEADS_PER_ROW), min(n_heads, HEADS_PER_ROW)
    else:
        rows, columns = len(weights), n_heads
    figure = new_figure(figsize=(PANEL_INCHES * columns + 0.8, PANEL_INCHES * rows + 0.6))
    figure.suptitle(title, fontsize=10)
    axes = figure.subplots(rows, columns, squeeze=False)
    positions, tick_labels = thinned_ticks(labels)
    font_size = max(4.5, min(7.0, 180.0 / len(positions)))
    rotation = 90 if max(map(len, tick_labels)) > 2 else 0  # characters stay upright, words turn to fit
    every = f" (1 in {positions[1]} labelled)" if len(positions) > 1 and positions[1] > 1 else ""
    panels = [(index, head) for index in range(len(weights)) for head in range(n_heads)]
    for axis in axes.flat[len(panels):]:
        axis.set_axis_off()  # the unused end of the last row
    for axis, (index, head) in zip(axes.flat, panels):
        image = axis.imshow(weights[index][head], cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest")
        axis.set_title(f"layer {layers[index]}, head {head}", fontsize=8)
        axis.set_xticks(positions, tick_labels, rotation=rotation, fontsize=font_size)
        axis.set_yticks(positions, tick_labels, fontsize=font_size)
        axis.set_xlabel("key token" + every, fontsize=7)
        axis.set_ylabel("query token" + every, fontsize=7)
    figure.colorbar(image, ax=axes, label="attention weight", shrink=0.8)
    return figure


def span_figure(learned: Sequence[Sequence[float]], effective: Sequence[Sequence[float]], max_span: int,
                ramp: int) -> Figure:
    """Bars per layer and head: the effective span (what the head attends: learned span + ramp, at most
    max_span), its learned part solid and the ramp's part light. learned, effective: (n_layers, n_heads) tokens."""
    n_layers, n_heads = len(learned), len(learned[0])
    figure = new_figure(figsize=(max(6.0, 0.35 * n_layers * n_heads + 2.0), 3.8))
    axis = figure.subplots()
    bar_width = 0.8 / n_heads
    for head in range(n_heads):
        x = np.arange(n_layers) + head * bar_width
        color = f"C{head % 10}"
        solid = [min(layer[head], max_span) for layer in learned]
        axis.bar(x, solid, bar_width, color=color, label=f"head {head}")
        axis.bar(x, [layer[head] for layer in effective], bar_width, color=color, alpha=0.35)
    top = 1.3 * max(max(layer) for layer in effective)  # room for the legend above the bars
    if max_span <= top:  # else spans far below max_span would be slivers at its scale
        axis.axhline(max_span, color="black", linestyle="--", linewidth=0.8, label=f"max_span {max_span}")
    axis.set_xticks(np.arange(n_layers) + 0.4 - bar_width / 2, [f"layer {layer}" for layer in range(n_layers)])
    axis.set_ylim(0, top)
    axis.set_ylabel("keys attended (tokens)")
    axis.set_title(f"effective attention span per head: learned span (solid) + {ramp}-token ramp (light),\n"
                   f"at most max_span {max_span}", fontsize=9)
    axis.legend(fontsize=7, ncols=min(n_heads + 1, 7), loc="upper left")
    return figure


def draw_attention(model: TransformerLM, tokenizer: Any, prompt: str, out: Path) -> list[Path]:
    """Write the attention pictures of `prompt` (and the span chart of an adaptive-span model) next to out:
    out itself, or out-layer{i} per layer when the model has more than MAX_PANELS heads in all, and
    out-spans. Returns the paths written."""
    try:
        ids = model.check_ids(np.asarray(tokenizer.encode(prompt), dtype=np.int64)[None], name="prompt")
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None
    if ids.shape[1] > MAX_PICTURE_TOKENS:
        raise SystemExit(f"error: the prompt is {ids.shape[1]} tokens; at most {MAX_PICTURE_TOKENS} can be drawn")
    weights, labels = attention_weights(model, ids), token_labels(tokenizer, ids[0])
    title = f"attention weights for {quoted_prompt(prompt)} ({ids.shape[1]} tokens)"
    written = []
    if len(weights) * len(weights[0]) <= MAX_PANELS:
        save(attention_figure(weights, labels, title), out)
        written.append(out)
    else:
        for layer, layer_weights in enumerate(weights):
            path = out.with_name(f"{out.stem}-layer{layer}{out.suffix}")
            save(attention_figure([layer_weights], labels, f"layer {layer}: {title}", [layer]), path)
            written.append(path)
    config = model.config
    if config.adaptive_span:
        path = out.with_name(f"{out.stem}-spans{out.suffix}")
        save(span_figure(span_summary(model), effective_spans(model), config.max_span, config.span_ramp), path)
        written.append(path)
    return written


# ----------------------------------------------------------------------------------------------
# Loss curves of a training run (train.py --plot)


def read_metrics(path: Path) -> list[dict]:
    """The rows of a metrics.jsonl (see train.py): eval rows (those without "kind" too, as older runs wrote
    them), "train" rows and "settings" rows, each checked; rows of other kinds are skipped.

    A bad row is an error naming its line, except an unfinished last line (no newline after it: a run
    killed while writing it), which is skipped with a warning on stderr so the rest can still be drawn.
    """
    try:
        lines = path.read_bytes().split(b"\n")  # after the last newline: b"" or the unfinished row
    except OSError as error:
        raise SystemExit(f"error: cannot read {path}: {error}") from None
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line.decode("utf-8"))
            problem = metrics_row_problem(row)
        except UnicodeDecodeError:
            problem = "is not UTF-8 text"
        except (ValueError, RecursionError) as error:
            problem = f"is not valid JSON ({error})"
        if problem and number == len(lines):
            print(f"warning: {path}: skipped the unfinished last line {number}, which {problem}", file=sys.stderr)
        elif problem:
            raise SystemExit(f"error: {path}: line {number} {problem}")
        elif row.get("kind", "eval") in ROW_FIELDS:
            rows.append(row)
    if not any(row.get("kind", "eval") in ("eval", "train") for row in rows):
        raise SystemExit(f"error: {path} has no rows to plot")
    return rows


# The numbers each kind of row must hold (more fields are allowed), and the ones it may hold.
ROW_FIELDS = {"eval": (("iter", "train_loss", "val_loss"), ("lr",)), "train": (("iter", "loss", "lr"), ()),
              "settings": (("iter",), ("parameters", "tokens_per_iter", "max_iters"))}


def metrics_row_problem(row: Any) -> str | None:
    """What is wrong with one parsed metrics row, or None."""
    if not isinstance(row, dict):
        return f"is a JSON {type(row).__name__}, expected an object with iter, train_loss and val_loss"
    kind = row.get("kind", "eval")
    if not isinstance(kind, str):
        return f"has kind = {kind!r}, expected a string"
    required, optional = ROW_FIELDS.get(kind, ((), ()))
    for key in (*required, *(key for key in optional if row.get(key) is not None)):
        if key not in row:
            return f"has no {key!r}"
        if isinstance(row[key], bool) or not isinstance(row[key], (int, float)):
            return f"has {key} = {row[key]!r}, expected a number"
        if not math.isfinite(row[key]):
            return f"has {key} = {row[key]!r}, expected a finite number"
    if kind == "settings":
        for key in ("preset", "tokenizer", "data"):
            if row.get(key) is not None and not isinstance(row[key], str):
                return f"has {key} = {row[key]!r}, expected a string or null"
        if not isinstance(row.get("resumed", False), bool):
            return f"has resumed = {row['resumed']!r}, expected true or false"
        if not isinstance(row.get("config", {}), dict):
            return f"has config = {row['config']!r}, expected an object"
    return None


def current_rows(rows: Sequence[dict]) -> list[dict]:
    """The rows of the run as it stands. A resume from the checkpoint at iteration S redoes the steps from S on:
    what an earlier attempt logged after S, and its step S, are dropped (its evaluation at S, of the checkpointed
    model, stays). A row logged again for the same kind and iteration replaces the earlier one."""
    kept = {}
    for row in rows:
        kind = row.get("kind", "eval")
        if kind == "settings" and row.get("resumed"):
            kept = {key: earlier for key, earlier in kept.items()
                    if earlier["iter"] < row["iter"] or (earlier["iter"] == row["iter"] and key[0] != "train")}
        kept[kind, row["iter"]] = row
    return list(kept.values())


def smoothed(values: Sequence[float], factor: float = LOSS_SMOOTHING) -> np.ndarray:
    """Exponential moving average with the start-up bias removed (as TensorBoard does): (N,) -> (N,)."""
    average, out = 0.0, np.empty(len(values))
    for index, value in enumerate(values):
        average = factor * average + (1 - factor) * value
        out[index] = average / (1 - factor ** (index + 1))
    return out


def run_title(settings: dict | None, fallback: str) -> str:
    """Two lines from a settings row: what was trained on what, and the model's shape."""
    if settings is None:
        return fallback
    config = settings.get("config", {})
    what = settings.get("preset") or "custom settings"
    data = settings.get("data")
    first = what + (f" on {data}" if data else "") + (f", {settings['tokenizer']} tokens"
                                                      if settings.get("tokenizer") else "")
    templates = {"n_layers": "{} layers", "n_heads": "{} heads", "d_model": "d_model {}", "max_seq_len": "context {}"}
    shape = [template.format(config[key]) for key, template in templates.items() if isinstance(config.get(key), int)]
    if settings.get("parameters") is not None:
        shape.append(f"{settings['parameters'] / 1e6:.2f}M parameters")
    if settings.get("tokens_per_iter") is not None:
        shape.append(f"{settings['tokens_per_iter']:,} tokens/iter")
    return first + ("\n" + ", ".join(shape) if shape else "")


def loss_figure(rows: Sequence[dict], fallback_title: str = "training run") -> Figure:
    """Training loss per iteration (faint, and EMA-smoothed), the evaluation points (train and val), the
    learning rate on a second axis, a dashed line where the run was resumed; titled from the last settings row
    (fallback_title for runs that logged none). rows: as read_metrics returns them."""
    rows = current_rows(rows)
    kinds = {kind: [row for row in rows if row.get("kind", "eval") == kind] for kind in ROW_FIELDS}
    figure = new_figure(figsize=(7, 4.5))
    axis = figure.subplots()
    train = kinds["train"]
    if train:
        steps, losses = [row["iter"] for row in train], [row["loss"] for row in train]
        axis.plot(steps, losses, color="C0", alpha=0.25, linewidth=0.8)
        axis.plot(steps, smoothed(losses), color="C0", linewidth=1.2, label="training loss (smoothed)")
    evaluations = kinds["eval"]
    for key, color, marker in (("train_loss", "C1", "o"), ("val_loss", "C3", "s")):
        axis.plot([row["iter"] for row in evaluations], [row[key] for row in evaluations], color=color,
                  marker=marker, markersize=4, label=f"{key.replace('_', ' ')} (evaluation)")
    resumes = [row["iter"] for row in kinds["settings"] if row.get("resumed")]
    for number, iteration in enumerate(resumes):
        axis.axvline(iteration, color="grey", linestyle="--", linewidth=1.0, label=None if number else "resumed")
    axis.set(xlabel="iteration", ylabel="cross-entropy loss (nats per token)")
    axis.grid(alpha=0.3)
    lr_rows = train or [row for row in evaluations if row.get("lr") is not None]
    handles, labels = axis.get_legend_handles_labels()
    if lr_rows:
        lr_axis = axis.twinx()
        lr_axis.plot([row["iter"] for row in lr_rows], [row["lr"] for row in lr_rows], color="C2",
                     linewidth=1.0, linestyle=":", label="learning rate")
        lr_axis.set_ylabel("learning rate", color="C2")
        lr_axis.tick_params(axis="y", colors="C2", labelsize=8)
        lr_axis.set_ylim(bottom=0)
        more_handles, more_labels = lr_axis.get_legend_handles_labels()
        handles, labels = handles + more_handles, labels + more_labels
    axis.legend(handles, labels, fontsize=8, loc="upper right")
    axis.set_title(run_title(kinds["settings"][-1] if kinds["settings"] else None, fallback_title), fontsize=9)
    return figure


# ----------------------------------------------------------------------------------------------
# Command line


def picture_path(out: str) -> Path:
    """The file to write for --out: as given, or with ".png" added when it has no suffix (so the path
    printed is the one written). Its suffix must name a format matplotlib writes."""
    from matplotlib.backend_bases import FigureCanvasBase
    path = Path(out)
    if path.is_dir():
        raise SystemExit(f"error: --out {out} is a directory; give a file name such as {path / 'picture.png'}")
    if not path.suffix:
        path = path.with_name(path.name + ".png")
    formats = sorted(FigureCanvasBase.get_supported_filetypes())
    if path.suffix[1:].lower() not in formats:
        raise SystemExit(f"error: --out {out}: unknown picture format {path.suffix!r}; use one of "
                         f"{', '.join('.' + name for name in formats)} (no suffix: .png)")
    return path


OUT_HELP = "the picture file; its suffix picks the format (.png, .svg, .pdf, ...), and one without a suffix gets .png"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line (sys.argv[1:] when argv is None)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    patterns = commands.add_parser("patterns", help="the mask of every attention pattern, side by side")
    patterns.add_argument("--seq-len", type=int, default=64)
    patterns.add_argument("--window", type=int, help="sliding window (default seq-len / 4)")
    patterns.add_argument("--stride", type=int, help="strided and fixed patterns (default about sqrt(seq-len))")
    patterns.add_argument("--summary", type=int, help="fixed pattern: summary positions per block (default stride / 4)")
    patterns.add_argument("--out", default="patterns.png", help=OUT_HELP)
    attention = commands.add_parser(
        "attention", help="attention weights of a trained model for a prompt",
        description=f"Writes OUT, or OUT-layer0, OUT-layer1, ... when the model has more than {MAX_PANELS} heads "
                    "in all, and OUT-spans (the spans chart) for an adaptive-span model.")
    attention.add_argument("--checkpoint", required=True, help="a checkpoint directory written by train.py")
    attention.add_argument("--prompt", required=True)
    attention.add_argument("--out", default="attention.png", help=OUT_HELP)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    """visualize.py: draw what the command asks for and print the path of every file written."""
    args = parse_args(argv)
    new_figure()  # fails first, with one line, when matplotlib is missing
    out = picture_path(args.out)
    if args.command == "patterns":
        if not 1 <= args.seq_len <= MAX_PICTURE_TOKENS:
            raise SystemExit(f"error: --seq-len must be in [1, {MAX_PICTURE_TOKENS}], got {args.seq_len}")
        window = max(1, args.seq_len // 4) if args.window is None else args.window
        stride = max(1, round(math.sqrt(args.seq_len))) if args.stride is None else args.stride
        summary = max(1, stride // 4) if args.summary is None else args.summary
        try:
            panels = pattern_panels(args.seq_len, window, stride, summary)
        except ValueError as error:
            raise SystemExit(f"error: {error}") from None
        save(patterns_figure(panels), out)
        written = [out]
    else:
        try:
            model, tokenizer = load_model_and_tokenizer(checkpoint=args.checkpoint, require_tokenizer=True)
        except CheckpointError as error:
            raise SystemExit(f"error: {error}") from None
        written = draw_attention(model, tokenizer, args.prompt, out)
    for path in written:
        print(f"written to {path}")


if __name__ == "__main__":
    main()
