"""An independent PyTorch implementation of the same model, built from torch primitives, used as the
oracle: it takes our parameter dict, runs its own forward, and lets autograd produce the gradients.

It follows the published definitions, not our code: rotary embeddings in Hugging Face Llama's "rotate half"
form, grouped-query attention by repeating each key/value head for its group of query heads (transformers'
repeat_kv), every sparse pattern as an explicit per-head (T, T) mask, and the adaptive span's soft mask.
"""
import math


def sinusoidal(torch, seq_len, d_model, dtype):
    position = torch.arange(seq_len, dtype=torch.float64)[:, None]
    table = torch.zeros(seq_len, d_model, dtype=torch.float64)
    frequencies = torch.exp(-math.log(10000.0) * torch.arange(0, d_model, 2, dtype=torch.float64) / d_model)
    table[:, 0::2] = torch.sin(position * frequencies)
    table[:, 1::2] = torch.cos(position * frequencies[: d_model // 2])
    return table.to(dtype)


def rotate_half(torch, x):
    """[x1, x2] -> [-x2, x1] over the last axis, halves of head_dim / 2 (Hugging Face Llama's convention)."""
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


def rope(torch, x, theta, dtype):
    """x (B, H, T, D) rotated at positions 0..T-1: x cos + rotate_half(x) sin, the angle of coordinate i (and of
    i + D/2) being position * theta^(-2i / D); angles in float64, then cast to dtype."""
    T, D = x.shape[-2:]
    inverse_frequencies = 1.0 / theta ** (torch.arange(0, D, 2, dtype=torch.float64) / D)
    angles = torch.arange(T, dtype=torch.float64)[:, None] * inverse_frequencies       # (T, D/2)
    angles = torch.cat((angles, angles), dim=-1)                                       # (T, D)
    return x * angles.cos().to(dtype) + rotate_half(torch, x) * angles.sin().to(dtype)


def head_masks(torch, config, seq_len):
    """(H, T, T) bool, True where query i (row) may not see key j (column), from each pattern's definition."""
    H = config.n_heads
    i = torch.arange(seq_len)[:, None]
    j = torch.arange(seq_len)[None, :]
    distance = i - j
    future = distance < 0
    attention = getattr(config, "attention", "full")
    if attention == "sliding":           # the `window` most recent keys, the query's own included
        masks = [future | (distance >= config.window)] * H
    elif attention == "strided":         # first half local (stride keys), second half every stride-th key back
        local = future | (distance >= config.stride)
        strided = future | (distance % config.stride != 0)
        masks = [local] * (H // 2) + [strided] * (H - H // 2)
    elif attention == "fixed":           # first half own block; second half the last `summary` of each block + self
        own_block = future | (i // config.stride != j // config.stride)
        summaries = future | ((j % config.stride < config.stride - config.summary) & (i != j))
        masks = [own_block] * (H // 2) + [summaries] * (H - H // 2)
    else:
        masks = [future] * H
    if getattr(config, "adaptive_span", False):  # never more than max_span keys back
        masks = [mask | (distance >= config.max_span) for mask in masks]
    return torch.stack(masks)


def reference_loss(torch, config, params, ids, targets, training=False):
    """params: name -> torch tensor (requires_grad), with our names. Returns (logits, loss).

    training: add the adaptive span's penalty, as TransformerLM.loss does in training mode."""
    F = torch.nn.functional
    B, T = ids.shape
    C, H = config.d_model, config.n_heads
    D = getattr(config, "head_dim", None) or C // H
    n_kv_heads = getattr(config, "n_kv_heads", None) or H
    qkv_bias = getattr(config, "qkv_bias", None)
    qkv_bias = config.bias if qkv_bias is None else qkv_bias
    dtype = params["decoder.token_embedding.weight"].dtype
    ids = torch.as_tensor(ids)
    x = params["decoder.token_embedding.weight"][ids]
    if config.positional == "learned":
        x = x + params["decoder.position_embedding.weight"][:T]
    elif config.positional == "sinusoidal":
        x = x + sinusoidal(torch, T, C, dtype)
    approximate = "tanh" if config.activation == "gelu_tanh" else "none"
    blocked = head_masks(torch, config, T)                                   # (H, T, T)

    def linear(h, prefix, weight, bias, use_bias=None):
        """h @ W + b; use_bias (default config.bias) says whether the model has b: a missing one is a KeyError."""
        out = h @ params[f"{prefix}.{weight}"]
        return out + params[f"{prefix}.{bias}"] if (config.bias if use_bias is None else use_bias) else out

    def layer_norm(h, prefix):
        if config.norm == "rmsnorm":
            return F.rms_norm(h, (C,), params[prefix + ".weight"], config.layer_norm_eps)
        return F.layer_norm(h, (C,), params[prefix + ".weight"], params.get(prefix + ".bias"), config.layer_norm_eps)

    def attention(h, prefix):
        q, k, v = linear(h, prefix, "W_qkv", "b_qkv", qkv_bias).split([H * D, n_kv_heads * D, n_kv_heads * D], dim=-1)
        q = q.view(B, T, H, D).transpose(1, 2)                               # (B, H, T, D)
        k, v = (t.view(B, T, n_kv_heads, D).transpose(1, 2) for t in (k, v))  # (B, KV, T, D)
        if config.positional == "rope":
            q, k = rope(torch, q, config.rope_theta, dtype), rope(torch, k, config.rope_theta, dtype)
        # Query head h reads key/value head h // (H / KV): each key/value head repeated for its group.
        k, v = (t.repeat_interleave(H // n_kv_heads, dim=1) for t in (k, v))  # (B, H, T, D)
        scores = (q @ k.transpose(-2, -1) / math.sqrt(D)).masked_fill(blocked, float("-inf"))
        weights = torch.softmax(scores, dim=-1)
        if getattr(config, "adaptive_span", False):
            # Sukhbaatar et al.: m(x) = clamp((R + z - x) / R, 0, 1) at distance x, z = span * max_span tokens;
            # the masked weights renormalized (their sum plus 1e-8, as the reference implementation does).
            spans = params[f"{prefix}.pattern.span"][:, None, None] * config.max_span     # (H, 1, 1)
            distance = (torch.arange(T)[:, None] - torch.arange(T)[None, :]).to(dtype)
            soft_mask = ((config.span_ramp + spans - distance) / config.span_ramp).clamp(0.0, 1.0)
            weights = weights * soft_mask
            weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-8)
        out = (weights @ v).transpose(1, 2).reshape(B, T, H * D)
        return linear(out, prefix, "W_out", "b_out")

    def feed_forward(h, prefix):
        if config.activation == "swiglu":
            hidden = F.silu(linear(h, prefix, "W_gate", "b_gate")) * linear(h, prefix, "W_in", "b_in")
        else:
            hidden = F.gelu(linear(h, prefix, "W_in", "b_in"), approximate=approximate)
        return linear(hidden, prefix, "W_out", "b_out")

    for layer in range(config.n_layers):
        prefix = f"decoder.blocks.{layer}"
        for sublayer, norm in ((attention, "norm1"), (feed_forward, "norm2")):
            if config.norm_first:
                x = x + sublayer(layer_norm(x, f"{prefix}.{norm}"), f"{prefix}.{sublayer.__name__}")
            else:
                x = layer_norm(x + sublayer(x, f"{prefix}.{sublayer.__name__}"), f"{prefix}.{norm}")
    if config.norm_first:
        x = layer_norm(x, "decoder.final_norm")
    head = params["decoder.token_embedding.weight"] if config.tie_weights else params["lm_head.weight"]
    logits = x @ head.T
    loss = F.cross_entropy(logits.reshape(-1, config.vocab_size), torch.as_tensor(targets).reshape(-1),
                           ignore_index=-100)
    if training and getattr(config, "adaptive_span", False):
        for layer in range(config.n_layers):  # the L1 penalty: coefficient * mean span in tokens, per layer
            spans = params[f"decoder.blocks.{layer}.attention.pattern.span"]
            loss = loss + config.span_loss_coefficient * config.max_span * spans.mean()
    return logits, loss


def reference_gradients(torch, model, ids, targets):
    """Run the torch reference on a copy of model's weights: (logits, loss, name -> gradient) as NumPy."""
    params = {name: torch.tensor(value, requires_grad=True) for name, value in model.parameters().items()}
    logits, loss = reference_loss(torch, model.config, params, ids, targets, training=model.training)
    loss.backward()
    grads = {name: tensor.grad.numpy() for name, tensor in params.items()}
    return logits.detach().numpy(), loss.item(), grads
