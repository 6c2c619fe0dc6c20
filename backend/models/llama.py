"""The Llama family (Llama 2/3, Mistral, Qwen2, SmolLM) over a paged KV cache.

One implementation covers them all: GQA, RMSNorm, SwiGLU, optional q/k/v biases (Qwen2), tied or
untied embeddings, RoPE with optional scaling. Projections are fused at load (q|k|v and
gate|up) so each layer runs two large matmuls instead of five small ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from backend.layers.attention import AttentionMetadata, LayerCache, paged_attention
from backend.layers.linear import Linear
from backend.layers.ops import LayerOps, layer_ops
from backend.layers.rotary import RotaryEmbedding
from backend.models.config import ModelConfig


class MissingWeightError(KeyError):
    """A tensor the architecture needs is absent from the checkpoint."""


@dataclass(slots=True)
class LayerWeights:
    input_norm: torch.Tensor
    qkv: Linear
    o_proj: Linear
    post_norm: torch.Tensor
    gate_up: Linear
    down: Linear


class LlamaForCausalLM:
    def __init__(
        self,
        config: ModelConfig,
        weights: dict[str, torch.Tensor],
        *,
        device: torch.device,
        ops: LayerOps | None = None,
    ) -> None:
        self.config = config
        self.device = device

        def take(name: str) -> torch.Tensor:
            try:
                return weights[name].to(device)
            except KeyError:
                raise MissingWeightError(f"checkpoint has no tensor {name!r}") from None

        self.embed = take("model.embed_tokens.weight")
        self.dtype = self.embed.dtype
        self.lm_head = Linear(self.embed if config.tie_word_embeddings else take("lm_head.weight"))
        self.final_norm = take("model.norm.weight")
        self.layers: list[LayerWeights] = []
        for i in range(config.num_hidden_layers):
            p = f"model.layers.{i}."
            qkv = torch.cat([take(p + f"self_attn.{n}_proj.weight") for n in "qkv"])
            bias = None
            if config.attention_bias:
                bias = torch.cat([take(p + f"self_attn.{n}_proj.bias") for n in "qkv"])
            self.layers.append(
                LayerWeights(
                    input_norm=take(p + "input_layernorm.weight"),
                    qkv=Linear(qkv, bias),
                    o_proj=Linear(take(p + "self_attn.o_proj.weight")),
                    post_norm=take(p + "post_attention_layernorm.weight"),
                    gate_up=Linear(
                        torch.cat([take(p + "mlp.gate_proj.weight"), take(p + "mlp.up_proj.weight")])
                    ),
                    down=Linear(take(p + "mlp.down_proj.weight")),
                )
            )
        self.rotary = RotaryEmbedding(
            config.head_dim,
            config.max_position_embeddings,
            config.rope_theta,
            config.rope_scaling,
            device=device,
        )
        self.q_size = config.num_attention_heads * config.head_dim
        self.kv_size = config.num_key_value_heads * config.head_dim
        self.scale = config.head_dim**-0.5
        # Norms, rotary, SwiGLU and decode attention: fused CPU kernels where they work, else torch.
        self.ops = ops if ops is not None else layer_ops(device, self.dtype)
        # Each residual add is fused with the norm that follows it: the next layer's input norm, or
        # the final norm after the last layer.
        self.next_norms = [layer.input_norm for layer in self.layers[1:]] + [self.final_norm]

    @property
    def weight_bytes(self) -> int:
        """Bytes read from memory per decode step (every weight once; the embedding only by rows)."""
        norms = [self.final_norm] + [t for layer in self.layers for t in (layer.input_norm, layer.post_norm)]
        linears = [self.lm_head] + [
            lin for layer in self.layers for lin in (layer.qkv, layer.o_proj, layer.gate_up, layer.down)
        ]
        return sum(t.numel() * t.element_size() for t in norms) + sum(lin.nbytes for lin in linears)

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        kv_caches: list[LayerCache],
        meta: AttentionMetadata,
        logits_indices: torch.Tensor,
    ) -> torch.Tensor:
        """Run the flat batch; returns float32 logits for the rows in ``logits_indices``."""
        cfg = self.config
        heads, kv_heads, dim = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        eps, ops = cfg.rms_norm_eps, self.ops
        hidden = F.embedding(input_ids, self.embed)
        cos, sin = self.rotary.tables(positions, self.dtype)  # once per step, shared by every layer
        x = ops.rms_norm(hidden, self.layers[0].input_norm, eps)
        for layer, kv_cache, next_norm in zip(self.layers, kv_caches, self.next_norms, strict=True):
            qkv = layer.qkv(x)
            # q and k sit side by side in the fused projection: rotate them in one pass.
            qk = qkv[:, : self.q_size + self.kv_size].view(-1, heads + kv_heads, dim)
            qk = ops.rotate(qk, cos, sin)
            q, k = torch.split(qk, [heads, kv_heads], dim=1)
            v = qkv[:, self.q_size + self.kv_size :].view(-1, kv_heads, dim)
            attn = paged_attention(q, k, v, kv_cache, meta, self.scale, ops)
            attn_out = layer.o_proj(attn.reshape(-1, heads * dim))
            hidden, x = ops.add_rms_norm(hidden, attn_out, layer.post_norm, eps)
            mlp_out = layer.down(ops.silu_mul(layer.gate_up(x)))
            hidden, x = ops.add_rms_norm(hidden, mlp_out, next_norm, eps)
        return self.lm_head(x.index_select(0, logits_indices)).float()
