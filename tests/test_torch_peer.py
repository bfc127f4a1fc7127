import pytest
from conftest import require_oracle

import torch_peer
from transformer_lm import TransformerConfig, TransformerLM


@pytest.mark.parametrize("options", [dict(norm="rmsnorm"), dict(activation="swiglu"), dict(activation="gelu"),
                                     dict(bias=False)])
def test_the_peer_refuses_what_it_does_not_implement(options):
    """The peer is GPT-2's arrangement only: any other component would be benchmarked as a different model."""
    torch = require_oracle("torch")
    config = TransformerConfig.from_preset("nanogpt-cpu", n_layers=1, **options)
    with pytest.raises(ValueError, match="the torch peer implements GPT-2's arrangement"):
        torch_peer.build(torch, TransformerLM(config))
