"""Multi-token-prediction (MTP) draft modules, in float64, and k-step draft chaining.

Qwen3-Next / Qwen3.5 (vLLM qwen3_next_mtp.py, checkpoint names under `mtp.`):
    e = pre_fc_norm_embedding(embed_tokens(t_{i+1}))        zero-centred RMSNorm
    h = pre_fc_norm_hidden(h_i)                              zero-centred RMSNorm
    x = fc(cat[e, h])                                        [2H] -> [H], no bias
    x = decoder layer (full gated attention, partial rotary, sparse MoE with gated shared expert)
    y = norm(x)                                              zero-centred RMSNorm
    logits = lm_head(y)  (shared with the target);  y is fed back as h for the next draft step

DeepSeek-V3 (vLLM deepseek_mtp.py, DeepSeek-V3 tech report section 2.2):
    e = enorm(embed(t_{i+1})), embedding zeroed at position 0
    h = hnorm(h_i)
    x = eh_proj(cat[e, h]);  x = block(x)                    any decoder block
    logits = shared_head.head(shared_head.norm(x))
    fed back: x (the block output, un-normed: the report's h_i^k) by default; vLLM 0.32 feeds
    back shared_head.norm(x) instead ("matches SGLang"), selectable with recycle_normed=True.

Sequences are one request, [T] tokens. A module at position i reads the target's hidden state at
i and the embedding of token i + 1, and predicts token i + 2. Draft chaining appends the drafted
token and the fed-back hidden state as a new position and runs again (a full causal recompute,
equal to running with a KV cache). With several MTP modules (DeepSeek-V3's sequential MTP,
num_nextn_predict_layers > 1), draft_chain_modules: module s reads module s - 1's state at the
same position and the token s positions further on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from reference.layers import (
    AttentionConfig,
    DecoderLayerWeights,
    qwen3_next_decoder_layer,
    rms_norm,
    zero_centred_rms_norm,
)
from reference.moe import MoEConfig

# (input_ids [T], previous hidden [T, H], positions [T]) -> (fed-back hidden [T, H], logits [T, V])
MTPStep = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class Qwen3NextMTPConfig:
    vocab_size: int
    attention: AttentionConfig
    moe: MoEConfig
    rms_norm_eps: float = 1e-6
    num_nextn_predict_layers: int = 1

    @property
    def hidden_size(self) -> int:
        return self.attention.hidden_size


@dataclass
class Qwen3NextMTPWeights:
    embed_tokens: torch.Tensor  # [V, H] shared with the target model
    pre_fc_norm_embedding: torch.Tensor  # [H]
    pre_fc_norm_hidden: torch.Tensor  # [H]
    fc: torch.Tensor  # [H, 2H]
    layer: DecoderLayerWeights  # mtp.layers.0
    norm: torch.Tensor  # [H]
    lm_head: torch.Tensor  # [V, H] shared with the target model


def qwen3_next_mtp(
    input_ids: torch.Tensor,  # [T] tokens t_{i+1}
    hidden_states: torch.Tensor,  # [T, H] target (or previous MTP step) hidden h_i
    positions: torch.Tensor,  # [T]
    cfg: Qwen3NextMTPConfig,
    w: Qwen3NextMTPWeights,
    trace: dict | None = None,  # receives the decoder layer's MoE input (reference/layers.py)
) -> tuple[torch.Tensor, torch.Tensor]:  # fed-back hidden [T, H] (normed), logits [T, V]
    eps = cfg.rms_norm_eps
    e = zero_centred_rms_norm(w.embed_tokens.double()[input_ids], w.pre_fc_norm_embedding, eps)
    h = zero_centred_rms_norm(hidden_states, w.pre_fc_norm_hidden, eps)
    x = torch.cat([e, h], dim=-1) @ w.fc.double().T  # [T, H]
    x = qwen3_next_decoder_layer(x, positions, cfg.attention, cfg.moe, w.layer, trace)
    y = zero_centred_rms_norm(x, w.norm, eps)
    return y, y @ w.lm_head.double().T


@dataclass(frozen=True)
class DeepSeekV3MTPConfig:
    hidden_size: int
    vocab_size: int
    rms_norm_eps: float = 1e-6
    recycle_normed: bool = False  # True: feed back shared_head.norm(x) (vLLM 0.32, SGLang)


@dataclass
class DeepSeekV3MTPWeights:
    embed_tokens: torch.Tensor  # [V, H]
    enorm: torch.Tensor  # [H]
    hnorm: torch.Tensor  # [H]
    eh_proj: torch.Tensor  # [H, 2H]
    shared_head_norm: torch.Tensor  # [H]
    shared_head_head: torch.Tensor  # [V, H]
    # the transformer block: (x [T, H], positions [T]) -> [T, H] residual stream after the block
    block: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def deepseek_v3_mtp(
    input_ids: torch.Tensor,  # [T]
    hidden_states: torch.Tensor,  # [T, H]
    positions: torch.Tensor,  # [T]
    cfg: DeepSeekV3MTPConfig,
    w: DeepSeekV3MTPWeights,
    trace: dict | None = None,  # passed to the block as block(x, positions, trace=trace)
) -> tuple[torch.Tensor, torch.Tensor]:  # fed-back hidden [T, H], logits [T, V]
    eps = cfg.rms_norm_eps
    emb = w.embed_tokens.double()[input_ids]
    emb = torch.where((positions == 0)[:, None], torch.zeros_like(emb), emb)  # masked at position 0
    e = rms_norm(emb, w.enorm, eps)
    h = rms_norm(hidden_states, w.hnorm, eps)
    x = torch.cat([e, h], dim=-1) @ w.eh_proj.double().T  # [T, H]
    x = w.block(x, positions) if trace is None else w.block(x, positions, trace=trace)
    y = rms_norm(x, w.shared_head_norm, eps)
    return (y if cfg.recycle_normed else x), y @ w.shared_head_head.double().T


def qwen3_next_decoder_block(cfg: Qwen3NextMTPConfig, layer: DecoderLayerWeights
                             ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """A reference decoder block usable as DeepSeekV3MTPWeights.block."""
    return lambda x, positions: qwen3_next_decoder_layer(x, positions, cfg.attention, cfg.moe, layer)


@dataclass
class DraftChain:
    draft_token_ids: list[int]  # [k]
    draft_probs: torch.Tensor  # [k, V] softmax of each step's logits
    hidden_states: torch.Tensor  # [k, H] fed-back hidden of each step


def draft_chain(
    step: MTPStep,
    input_ids: torch.Tensor,  # [T] tokens t_1 .. t_T (t_T: the token the target just emitted)
    hidden_states: torch.Tensor,  # [T, H] target hidden states h_0 .. h_{T-1}
    positions: torch.Tensor,  # [T]
    num_speculative_tokens: int,  # k
) -> DraftChain:
    """k greedy draft steps (argmax; first index among ties): step s drafts from the last
    position, then the drafted token and the fed-back hidden state become a new position."""
    ids, hid, pos = input_ids.clone(), hidden_states.double().clone(), positions.clone()
    drafts, probs, states = [], [], []
    for _ in range(num_speculative_tokens):
        fed_back, logits = step(ids, hid, pos)
        d = int(logits[-1].argmax())
        drafts.append(d)
        probs.append(torch.softmax(logits[-1], -1))
        states.append(fed_back[-1])
        ids = torch.cat([ids, torch.tensor([d], dtype=ids.dtype)])
        hid = torch.cat([hid, fed_back[-1:]], dim=0)
        pos = torch.cat([pos, pos[-1:] + 1])
    V = probs[0].shape[0] if probs else 0
    return DraftChain(drafts, torch.stack(probs) if probs else torch.zeros(0, V, dtype=torch.float64),
                      torch.stack(states) if states else torch.zeros(0, hid.shape[1], dtype=torch.float64))


@dataclass
class ModuleChain(DraftChain):
    # what module s read: (input_ids [T], hidden_states [T, H], positions [T]) for s = 0 .. k-1
    inputs: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


def draft_chain_modules(
    modules: Sequence[MTPStep],  # module s drafts step s (DeepSeek-V3 spec_step_idx = s)
    input_ids: torch.Tensor,  # [T] tokens t_1 .. t_T (t_T: the token the target just emitted)
    hidden_states: torch.Tensor,  # [T, H] target hidden states h_0 .. h_{T-1}
    positions: torch.Tensor,  # [T]
    num_speculative_tokens: int,  # k <= len(modules)
) -> ModuleChain:
    """k greedy drafts from k sequential MTP modules (DeepSeek-V3 tech report section 2.2):
    module s at position i combines h_i^{s-1} (module s - 1's output at i; the target's for
    s = 0) with the embedding of t_{i+s+1} and predicts t_{i+s+2}; tokens past t_T are the
    drafts of the earlier modules. Positions stay those of the hidden states (position i for
    every module). Draft s is the argmax (first index among ties) at the last position."""
    if num_speculative_tokens > len(modules):
        raise ValueError(f"{num_speculative_tokens} drafts need as many modules, got {len(modules)}")
    T = input_ids.shape[0]
    seq, hid = input_ids.clone(), hidden_states.double().clone()
    drafts, probs, states, inputs = [], [], [], []
    for s in range(num_speculative_tokens):
        window = seq[s:s + T]  # [T] t_{i+s+1}
        inputs.append((window.clone(), hid.clone(), positions.clone()))
        fed_back, logits = modules[s](window, hid, positions)
        d = int(logits[-1].argmax())
        drafts.append(d)
        probs.append(torch.softmax(logits[-1], -1))
        states.append(fed_back[-1])
        seq = torch.cat([seq, torch.tensor([d], dtype=seq.dtype)])
        hid = fed_back.double()
    V = probs[0].shape[0] if probs else 0
    H = hidden_states.shape[1]
    return ModuleChain(drafts,
                       torch.stack(probs) if probs else torch.zeros(0, V, dtype=torch.float64),
                       torch.stack(states) if states else torch.zeros(0, H, dtype=torch.float64),
                       inputs)
