"""Pictures of attention: the masks of the attention patterns, and what a trained model attends to.

    python visualize.py patterns --seq-len 64 --out patterns.png
    python visualize.py attention --checkpoint out-shakespeare --prompt "ROMEO:" --out attn.png

`patterns` draws, side by side, which keys each query may see under every pattern (one panel per head
group: the strided and fixed patterns split their heads in two). `attention` draws the attention
weights of every layer (rows) and head (columns) for the prompt, tokens on the axes, and for an
adaptive-span model the learned span of every head. matplotlib is needed here only (pip install matplotlib).
"""
import argparse
import math
from pathlib import Path

import numpy as np

from checkpoint import CheckpointError, load_model, load_tokenizer
from sparse_attention import dense_mask, make_pattern, span_summary
from transformer_lm import TransformerConfig

PANEL_INCHES = 3.0  # every panel is this many inches square, so the picture's size follows from its panels
DPI = 100
# A panel is 300 pixels wide, so longer sequences only blur, while the (T, T) masks and weights grow as T^2.
MAX_PICTURE_TOKENS = 1024


def import_pyplot():
    try:
        import matplotlib
    except ImportError:
        raise SystemExit("error: visualize.py draws with matplotlib, which is not installed "
                         "(pip install matplotlib)") from None
    matplotlib.use("Agg")  # draw into files, no window: works without a display
    import matplotlib.pyplot as pyplot
    return pyplot


def pattern_panels(seq_len, window, stride, summary):
    """[(title, blocked (T, T))]: one mask per head group of every pattern."""
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


def draw_patterns(panels, out):
    pyplot = import_pyplot()
    figure, axes = pyplot.subplots(1, len(panels), figsize=(PANEL_INCHES * len(panels), PANEL_INCHES), dpi=DPI)
    for axis, (title, blocked) in zip(axes, panels):
        axis.imshow(~blocked, cmap="Greys", vmin=0, vmax=1, interpolation="nearest")
        axis.set_title(title, fontsize=8)
        axis.set_xlabel("key position", fontsize=7)
        axis.set_ylabel("query position", fontsize=7)
        axis.tick_params(labelsize=6)
    figure.tight_layout()
    save(pyplot, figure, out)


def attention_weights(model, ids):
    """ids (1, T) -> per layer the weights (H, T, T) of every head, from one evaluation-mode pass."""
    model.eval()
    # Given positions, every pattern attends densely and keeps its (T, T) weights.
    model.decoder.forward(ids, positions=np.arange(ids.shape[1]))
    return [block.attention.pattern.dense_weights()[0] for block in model.decoder.blocks]


def token_labels(tokenizer, ids):
    # repr without its quotes makes newlines and tabs visible as \n and \t.
    return [repr(tokenizer.decode([token]))[1:-1] for token in ids]


def draw_attention(weights, labels, spans, out):
    pyplot = import_pyplot()
    n_layers, n_heads = len(weights), len(weights[0])
    rows = n_layers + (1 if spans else 0)
    figure = pyplot.figure(figsize=(PANEL_INCHES * n_heads, PANEL_INCHES * rows), dpi=DPI)
    grid = figure.add_gridspec(rows, n_heads)
    font_size = max(3.0, min(7.0, 150.0 / len(labels)))
    for layer, layer_weights in enumerate(weights):
        for head, head_weights in enumerate(layer_weights):
            axis = figure.add_subplot(grid[layer, head])
            axis.imshow(head_weights, cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest")
            axis.set_title(f"layer {layer}, head {head}", fontsize=8)
            axis.set_xticks(range(len(labels)), labels, rotation=90, fontsize=font_size)
            axis.set_yticks(range(len(labels)), labels, fontsize=font_size)
    if spans:
        axis = figure.add_subplot(grid[n_layers, :])
        bar_width = 0.8 / n_heads
        for head in range(n_heads):
            axis.bar(np.arange(n_layers) + head * bar_width, [layer[head] for layer in spans], bar_width,
                     label=f"head {head}")
        axis.set_xticks(np.arange(n_layers) + 0.4 - bar_width / 2, [f"layer {layer}" for layer in range(n_layers)])
        axis.set_ylabel("learned span (tokens)")
        axis.legend(fontsize=7)
    figure.tight_layout()
    save(pyplot, figure, out)


def picture_path(out):
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


def save(pyplot, figure, out):
    try:
        figure.savefig(out, dpi=DPI)
    except (OSError, ValueError) as error:  # ValueError: a format this matplotlib cannot write after all
        raise SystemExit(f"error: cannot write {out}: {error}") from None
    finally:
        pyplot.close(figure)


OUT_HELP = "the picture file; its suffix picks the format (.png, .svg, .pdf, ...), and one without a suffix gets .png"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    patterns = commands.add_parser("patterns", help="the mask of every attention pattern, side by side")
    patterns.add_argument("--seq-len", type=int, default=64)
    patterns.add_argument("--window", type=int, help="sliding window (default seq-len / 4)")
    patterns.add_argument("--stride", type=int, help="strided and fixed patterns (default about sqrt(seq-len))")
    patterns.add_argument("--summary", type=int, help="fixed pattern: summary positions per block (default stride / 4)")
    patterns.add_argument("--out", default="patterns.png", help=OUT_HELP)
    attention = commands.add_parser("attention", help="attention weights of a trained model for a prompt")
    attention.add_argument("--checkpoint", required=True, help="a checkpoint directory written by train.py")
    attention.add_argument("--prompt", required=True)
    attention.add_argument("--out", default="attention.png", help=OUT_HELP)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    import_pyplot()
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
        draw_patterns(panels, out)
    else:
        try:
            model = load_model(args.checkpoint)
            tokenizer = load_tokenizer(args.checkpoint)
        except CheckpointError as error:
            raise SystemExit(f"error: {error}") from None
        if tokenizer is None:
            raise SystemExit(f"error: the checkpoint in {args.checkpoint} has no tokenizer to encode the prompt with")
        try:
            ids = model.check_ids(np.asarray(tokenizer.encode(args.prompt), dtype=np.int64)[None], name="prompt")
        except ValueError as error:
            raise SystemExit(f"error: {error}") from None
        if ids.shape[1] > MAX_PICTURE_TOKENS:
            raise SystemExit(f"error: the prompt is {ids.shape[1]} tokens; at most {MAX_PICTURE_TOKENS} can be drawn")
        draw_attention(attention_weights(model, ids), token_labels(tokenizer, ids[0]), span_summary(model), out)
    print(f"written to {out}")


if __name__ == "__main__":
    main()
