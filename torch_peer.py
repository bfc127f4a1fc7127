"""The PyTorch peer that bench.py measures us against: the same GPT-2-style architecture (pre-LN, learned
positions, tied head, tanh GELU, biases everywhere), written with standard torch modules and the fused
attention kernel, loaded with our weights so both sides compute the same function.

A benchmark-only module: torch is imported by the caller and passed in, never by the library.
"""
from __future__ import annotations

import math
from types import ModuleType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from torch import Tensor

    from transformer_config import TransformerConfig
    from transformer_lm import TransformerLM


def build(torch: ModuleType, our_model: TransformerLM) -> torch.nn.Module:
    """A torch.nn.Module equal to our_model (which must use GPT-2's arrangement), weights copied."""
    F = torch.nn.functional
    config = our_model.config
    C, H = config.d_model, config.n_heads
    if not (config.norm_first and config.positional == "learned" and config.tie_weights
            and (config.norm, config.activation, config.bias) == ("layernorm", "gelu_tanh", True)):
        raise ValueError("the torch peer implements GPT-2's arrangement: pre-LN, learned positions, tied head, "
                         "LayerNorm, tanh-GELU, biases")

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.norm1 = torch.nn.LayerNorm(C, eps=config.layer_norm_eps)
            self.qkv = torch.nn.Linear(C, 3 * C)
            self.attention_out = torch.nn.Linear(C, C)
            self.norm2 = torch.nn.LayerNorm(C, eps=config.layer_norm_eps)
            self.feed_forward_in = torch.nn.Linear(C, config.d_ff)
            self.feed_forward_out = torch.nn.Linear(config.d_ff, C)

        def forward(self, x: Tensor, cache: list[Tensor] | None = None) -> Tensor:
            B, T, _ = x.shape
            q, k, v = self.qkv(self.norm1(x)).split(C, dim=2)
            q, k, v = (t.view(B, T, H, C // H).transpose(1, 2) for t in (q, k, v))
            if cache is not None:
                if cache:
                    k, v = torch.cat([cache[0], k], dim=2), torch.cat([cache[1], v], dim=2)
                cache[:] = [k, v]
            # With a cache, a single new query may see every cached key: no mask needed.
            attended = F.scaled_dot_product_attention(q, k, v, is_causal=T > 1)
            x = x + self.attention_out(attended.transpose(1, 2).reshape(B, T, C))
            return x + self.feed_forward_out(F.gelu(self.feed_forward_in(self.norm2(x)), approximate="tanh"))

    class GPT(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.token_embedding = torch.nn.Embedding(config.vocab_size, C)
            self.position_embedding = torch.nn.Embedding(config.max_seq_len, C)
            self.blocks = torch.nn.ModuleList(Block() for _ in range(config.n_layers))
            self.final_norm = torch.nn.LayerNorm(C, eps=config.layer_norm_eps)

        def forward(self, ids: Tensor, targets: Tensor | None = None, caches: list[list[Tensor]] | None = None,
                    start: int = 0) -> Tensor:
            positions = torch.arange(start, start + ids.shape[1], device=ids.device)
            x = self.token_embedding(ids) + self.position_embedding(positions)
            for index, block in enumerate(self.blocks):
                x = block(x, None if caches is None else caches[index])
            logits = self.final_norm(x) @ self.token_embedding.weight.T
            if targets is None:
                return logits
            return F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.view(-1), ignore_index=-100)

        @torch.inference_mode()
        def generate_greedy(self, ids: Tensor, new_tokens: int) -> Tensor:
            """Greedy decoding with a KV cache, as our model.generate(..., temperature=0) does."""
            caches = [[] for _ in self.blocks]
            logits = self(ids, caches=caches)
            tokens = [logits[:, -1].argmax(dim=-1, keepdim=True)]
            for step in range(new_tokens - 1):
                logits = self(tokens[-1], caches=caches, start=ids.shape[1] + step)
                tokens.append(logits[:, -1].argmax(dim=-1, keepdim=True))
            return torch.cat([ids, *tokens], dim=1)

    model = GPT()
    ours = {name.removeprefix("decoder."): value for name, value in our_model.parameters().items()}
    with torch.no_grad():
        model.token_embedding.weight.copy_(torch.from_numpy(ours["token_embedding.weight"]))
        model.position_embedding.weight.copy_(torch.from_numpy(ours["position_embedding.weight"]))
        model.final_norm.weight.copy_(torch.from_numpy(ours["final_norm.weight"]))
        model.final_norm.bias.copy_(torch.from_numpy(ours["final_norm.bias"]))
        for index, block in enumerate(model.blocks):
            prefix = f"blocks.{index}."
            pairs = [(block.norm1, "norm1", False), (block.norm2, "norm2", False),
                     (block.qkv, "attention.{}_qkv", True), (block.attention_out, "attention.{}_out", True),
                     (block.feed_forward_in, "feed_forward.{}_in", True),
                     (block.feed_forward_out, "feed_forward.{}_out", True)]
            for module, name, is_linear in pairs:
                if is_linear:  # torch's Linear stores (out, in); ours is (in, out)
                    module.weight.copy_(torch.from_numpy(ours[prefix + name.format("W")]).T)
                    module.bias.copy_(torch.from_numpy(ours[prefix + name.format("b")]))
                else:
                    module.weight.copy_(torch.from_numpy(ours[prefix + name + ".weight"]))
                    module.bias.copy_(torch.from_numpy(ours[prefix + name + ".bias"]))
    return model


def adamw(torch: ModuleType, model: torch.nn.Module, lr: float, betas: tuple[float, float],
          weight_decay: float) -> torch.optim.AdamW:
    """torch.optim.AdamW with nanoGPT's groups: decay on 2-D tensors only."""
    parameters = list(model.parameters())
    groups = [{"params": [p for p in parameters if p.dim() >= 2], "weight_decay": weight_decay},
              {"params": [p for p in parameters if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=betas)


def training_flops_per_token(config: TransformerConfig) -> int:
    """nanoGPT's estimate: 6 per parameter (forward 2, backward 4) plus attention's 12 * L * C * T."""
    parameters = 12 * config.n_layers * config.d_model ** 2 + config.vocab_size * config.d_model
    return 6 * parameters + 12 * config.n_layers * config.d_model * config.max_seq_len


def forward_flops_per_token(config: TransformerConfig, seq_len: int) -> int:
    parameters = 12 * config.n_layers * config.d_model ** 2 + config.vocab_size * config.d_model
    return 2 * parameters + 4 * config.n_layers * config.d_model * seq_len


def matmul_gflops(np: ModuleType, torch: ModuleType, size: int = 1024, repeats: int = 10) -> dict[str, float]:
    """The machine's float32 matrix-product rate (GFLOP/s), best of repeats, for NumPy and torch."""
    import time
    a = np.random.default_rng(0).standard_normal((size, size)).astype(np.float32)
    a_torch = torch.from_numpy(a)
    rates = {}
    for name, product in (("numpy", lambda: a @ a), ("torch", lambda: a_torch @ a_torch)):
        product()
        best = math.inf
        for _ in range(repeats):
            start = time.perf_counter()
            product()
            best = min(best, time.perf_counter() - start)
        rates[name] = 2 * size ** 3 / best / 1e9
    return rates
