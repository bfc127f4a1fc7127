"""An independent PyTorch implementation of the same model, built from torch primitives, used as the
oracle: it takes our parameter dict, runs its own forward, and lets autograd produce the gradients."""
import math


def sinusoidal(torch, seq_len, d_model, dtype):
    position = torch.arange(seq_len, dtype=torch.float64)[:, None]
    table = torch.zeros(seq_len, d_model, dtype=torch.float64)
    frequencies = torch.exp(-math.log(10000.0) * torch.arange(0, d_model, 2, dtype=torch.float64) / d_model)
    table[:, 0::2] = torch.sin(position * frequencies)
    table[:, 1::2] = torch.cos(position * frequencies[: d_model // 2])
    return table.to(dtype)


def reference_loss(torch, config, params, ids, targets):
    """params: name -> torch tensor (requires_grad), with our names. Returns (logits, loss)."""
    F = torch.nn.functional
    B, T = ids.shape
    C, H = config.d_model, config.n_heads
    dtype = params["decoder.token_embedding.weight"].dtype
    ids = torch.as_tensor(ids)
    x = params["decoder.token_embedding.weight"][ids]
    if config.positional == "learned":
        x = x + params["decoder.position_embedding.weight"][:T]
    else:
        x = x + sinusoidal(torch, T, C, dtype)
    approximate = "tanh" if config.activation == "gelu_tanh" else "none"

    def linear(h, prefix, weight, bias):
        """h @ W + b, without b where the model has none (bias=False)."""
        out = h @ params[f"{prefix}.{weight}"]
        return out if f"{prefix}.{bias}" not in params else out + params[f"{prefix}.{bias}"]

    def layer_norm(h, prefix):
        if config.norm == "rmsnorm":
            return F.rms_norm(h, (C,), params[prefix + ".weight"], config.layer_norm_eps)
        return F.layer_norm(h, (C,), params[prefix + ".weight"], params.get(prefix + ".bias"), config.layer_norm_eps)

    def attention(h, prefix):
        q, k, v = linear(h, prefix, "W_qkv", "b_qkv").split(C, dim=-1)
        q, k, v = (t.view(B, T, H, C // H).transpose(1, 2) for t in (q, k, v))
        scores = q @ k.transpose(-2, -1) / math.sqrt(C // H)
        scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
        out = (torch.softmax(scores, dim=-1) @ v).transpose(1, 2).reshape(B, T, C)
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
    return logits, loss


def reference_gradients(torch, model, ids, targets):
    """Run the torch reference on a copy of model's weights: (logits, loss, name -> gradient) as NumPy."""
    params = {name: torch.tensor(value, requires_grad=True) for name, value in model.parameters().items()}
    logits, loss = reference_loss(torch, model.config, params, ids, targets)
    loss.backward()
    grads = {name: tensor.grad.numpy() for name, tensor in params.items()}
    return logits.detach().numpy(), loss.item(), grads
