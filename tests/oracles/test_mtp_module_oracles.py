"""MTP module oracles (reference/layers.py, reference/mtp.py) against independent computations:
transformers' Qwen3-Next modules (Qwen3NextRMSNorm, Qwen3NextRotaryEmbedding,
Qwen3NextDecoderLayer with full attention and Qwen3NextSparseMoeBlock) with identical weights,
composed the way vLLM's qwen3_next_mtp.py composes them; DeepSeek-V3's MTP wiring checked by
hand-derived properties (position-0 masking, which hidden state is fed back); draft chaining
against step-by-step recomputation.

transformers computes its RMSNorm and rotary tables in float32 even for float64 modules, so the
comparisons use the float32 tolerances (a structural error is O(1), far outside them).
"""

from __future__ import annotations

import pytest
import torch

from fixtures.seeds import generator
from reference.layers import (
    AttentionConfig,
    DecoderLayerWeights,
    GatedAttentionWeights,
    qwen3_next_decoder_layer,
    rms_norm,
    rope_cos_sin,
    zero_centred_rms_norm,
)
from reference.moe import MoEConfig, MoEWeights
from reference.mtp import (
    DeepSeekV3MTPConfig,
    DeepSeekV3MTPWeights,
    Qwen3NextMTPConfig,
    Qwen3NextMTPWeights,
    deepseek_v3_mtp,
    draft_chain,
    qwen3_next_decoder_block,
    qwen3_next_mtp,
)
from suites.closeness import assert_close
from suites.tolerances import TOLERANCES

transformers = pytest.importorskip("transformers")
from transformers.models.qwen3_next import modeling_qwen3_next as hf  # noqa: E402
from transformers.models.qwen3_next.configuration_qwen3_next import Qwen3NextConfig  # noqa: E402

TOL = TOLERANCES[torch.float32]  # transformers normalizes in float32 (see module docstring)
H, NH, NKV, D, E, K, I, V = 64, 4, 2, 16, 8, 2, 32, 97


def _hf_config() -> Qwen3NextConfig:
    cfg = Qwen3NextConfig(
        vocab_size=V, hidden_size=H, num_attention_heads=NH, num_key_value_heads=NKV, head_dim=D,
        num_hidden_layers=1, layer_types=["full_attention"], num_experts=E,
        num_experts_per_tok=K, moe_intermediate_size=I, shared_expert_intermediate_size=I,
        decoder_sparse_step=1, mlp_only_layers=[], norm_topk_prob=True, rms_norm_eps=1e-6,
        partial_rotary_factor=0.25, rope_theta=10_000.0, max_position_embeddings=512,
    )
    cfg._attn_implementation = "sdpa"  # float64 softmax (eager attention casts to float32)
    return cfg


def _hf_layer(seed: int):
    torch.manual_seed(seed)
    layer = hf.Qwen3NextDecoderLayer(_hf_config(), 0).double().eval()
    g = generator("hf layer", seed)
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(0.2 * torch.randn(p.shape, generator=g, dtype=torch.float64))
    return layer


def _ref_configs(hf_cfg) -> tuple[AttentionConfig, MoEConfig]:
    rp = hf_cfg.rope_parameters
    attn = AttentionConfig(H, NH, NKV, D, rp.get("partial_rotary_factor", 0.25), rp["rope_theta"],
                           hf_cfg.rms_norm_eps)
    moe = MoEConfig(name="tiny-qwen3-next", hidden_size=H, moe_intermediate_size=I, num_experts=E,
                    num_experts_per_tok=K, norm_topk_prob=True, shared_expert_intermediate_size=I,
                    shared_expert_gated=True)
    return attn, moe


def _ref_layer_weights(layer) -> DecoderLayerWeights:
    a, m = layer.self_attn, layer.mlp
    se = m.shared_expert
    return DecoderLayerWeights(
        input_layernorm=layer.input_layernorm.weight.detach(),
        post_attention_layernorm=layer.post_attention_layernorm.weight.detach(),
        self_attn=GatedAttentionWeights(
            a.q_proj.weight.detach(), a.k_proj.weight.detach(), a.v_proj.weight.detach(),
            a.o_proj.weight.detach(), a.q_norm.weight.detach(), a.k_norm.weight.detach()),
        mlp=MoEWeights(
            gate=m.gate.weight.detach(), w13=m.experts.gate_up_proj.detach(),
            w2=m.experts.down_proj.detach(),
            shared_w13=torch.cat([se.gate_proj.weight, se.up_proj.weight], 0).detach(),
            shared_w2=se.down_proj.weight.detach(),
            shared_expert_gate=m.shared_expert_gate.weight.detach()),
    )


def _hf_layer_forward(layer, x, positions):
    cos, sin = rope_cos_sin(positions, int(D * 0.25), layer.self_attn.config.rope_parameters["rope_theta"])
    with torch.no_grad():
        return layer(x[None], position_embeddings=(cos[None], sin[None]), attention_mask=None,
                     position_ids=positions[None])[0]


def test_norms_match_transformers():
    g = generator("norms")
    x = torch.randn(5, H, generator=g, dtype=torch.float64)
    w = 0.3 * torch.randn(H, generator=g, dtype=torch.float64)
    n = hf.Qwen3NextRMSNorm(H, eps=1e-6).double()
    with torch.no_grad():
        n.weight.copy_(w)
        assert_close(zero_centred_rms_norm(x, w, 1e-6), n(x), TOL, "zero-centred RMSNorm")
    plain = x / (x.pow(2).mean(-1, keepdim=True) + 1e-6).sqrt() * w  # written out
    assert torch.allclose(rms_norm(x, w, 1e-6), plain, rtol=1e-14, atol=0)


def test_rotary_matches_transformers():
    cfg = _hf_config()
    rot = hf.Qwen3NextRotaryEmbedding(cfg)
    pos = torch.tensor([[0, 1, 2, 7, 100, 511]])
    cos, sin = rot(torch.zeros(1, dtype=torch.float64), pos)
    rc, rs = rope_cos_sin(pos[0], int(D * 0.25), cfg.rope_parameters["rope_theta"])
    assert cos.shape[-1] == int(D * 0.25) == 4  # partial: a quarter of the head is rotated
    assert_close(rc, cos[0], TOL, "rope cos")
    assert_close(rs, sin[0], TOL, "rope sin")


@pytest.mark.parametrize("T", [1, 2, 7])
def test_decoder_layer_matches_transformers(T):
    """Gated attention (query/gate interleaved per head), q/k norms, partial rotary, causal
    attention with grouped KV heads, sparse MoE with the sigmoid-gated shared expert."""
    layer = _hf_layer(T)
    attn, moe = _ref_configs(layer.self_attn.config)
    x = torch.randn(T, H, generator=generator("layer x", T), dtype=torch.float64)
    positions = torch.arange(3, 3 + T)
    ref = qwen3_next_decoder_layer(x, positions, attn, moe, _ref_layer_weights(layer))
    assert_close(ref, _hf_layer_forward(layer, x, positions), TOL, f"decoder layer T={T}")


def _qwen_mtp(seed: int):
    layer = _hf_layer(seed)
    attn, moe = _ref_configs(layer.self_attn.config)
    g = generator("mtp weights", seed)
    r = lambda *s: 0.2 * torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    w = Qwen3NextMTPWeights(embed_tokens=r(V, H), pre_fc_norm_embedding=r(H),
                            pre_fc_norm_hidden=r(H), fc=r(H, 2 * H) / 2,
                            layer=_ref_layer_weights(layer), norm=r(H), lm_head=r(V, H))
    return layer, Qwen3NextMTPConfig(V, attn, moe), w


def _independent_qwen_mtp(layer, w, ids, hidden, positions):
    """vLLM's qwen3_next_mtp.py forward written with transformers' modules."""
    def norm(weight):
        n = hf.Qwen3NextRMSNorm(H, eps=1e-6).double()
        with torch.no_grad():
            n.weight.copy_(weight)
        return n

    with torch.no_grad():
        e = norm(w.pre_fc_norm_embedding)(torch.nn.functional.embedding(ids, w.embed_tokens))
        h = norm(w.pre_fc_norm_hidden)(hidden)
        x = torch.nn.functional.linear(torch.cat([e, h], -1), w.fc)
        x = _hf_layer_forward(layer, x, positions)
        y = norm(w.norm)(x)
        return y, torch.nn.functional.linear(y, w.lm_head)


def test_qwen3_next_mtp_matches_independent_composition():
    layer, cfg, w = _qwen_mtp(11)
    T = 6
    ids = torch.randint(0, V, (T,), generator=generator("ids"))
    hidden = torch.randn(T, H, generator=generator("hidden"), dtype=torch.float64)
    pos = torch.arange(T)
    y, logits = qwen3_next_mtp(ids, hidden, pos, cfg, w)
    ry, rlogits = _independent_qwen_mtp(layer, w, ids, hidden, pos)
    assert_close(y, ry, TOL, "MTP fed-back hidden (normed)")
    assert_close(logits, rlogits, TOL, "MTP logits")
    # embedding first, hidden second in fc's input: swapping them must change the output
    swapped = Qwen3NextMTPWeights(w.embed_tokens, w.pre_fc_norm_embedding, w.pre_fc_norm_hidden,
                                  torch.cat([w.fc[:, H:], w.fc[:, :H]], 1), w.layer, w.norm,
                                  w.lm_head)
    assert not torch.allclose(qwen3_next_mtp(ids, hidden, pos, cfg, swapped)[1], logits, atol=1e-3)


def test_draft_chain_equals_stepwise_independent_computation():
    """k = 3 chained drafts vs running the independent composition step by step, feeding the
    normed output and the drafted token back by hand."""
    layer, cfg, w = _qwen_mtp(5)
    T, k = 4, 3
    ids = torch.randint(0, V, (T,), generator=generator("chain ids"))
    hidden = torch.randn(T, H, generator=generator("chain hidden"), dtype=torch.float64)
    pos = torch.arange(T)
    chain = draft_chain(lambda i, h, p: qwen3_next_mtp(i, h, p, cfg, w), ids, hidden, pos, k)
    i2, h2, p2 = ids.clone(), hidden.clone(), pos.clone()
    for s in range(k):
        y, logits = _independent_qwen_mtp(layer, w, i2, h2, p2)
        d = int(logits[-1].argmax())
        assert d == chain.draft_token_ids[s], f"step {s}: draft {chain.draft_token_ids[s]} != {d}"
        assert_close(chain.draft_probs[s], torch.softmax(logits[-1], -1), TOL, f"step {s} probs")
        i2 = torch.cat([i2, torch.tensor([d])])
        h2 = torch.cat([h2, y[-1:]])
        p2 = torch.cat([p2, p2[-1:] + 1])
    # causal: earlier positions do not see the appended drafts
    full_y, _ = qwen3_next_mtp(i2, h2, p2, cfg, w)
    assert_close(full_y[:T], qwen3_next_mtp(ids, hidden, pos, cfg, w)[0], TOL, "causal prefix")


def _deepseek(recycle_normed: bool, seed: int = 3):
    _layer, qcfg, qw = _qwen_mtp(seed)
    g = generator("deepseek", seed)
    r = lambda *s: 0.2 * torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    w = DeepSeekV3MTPWeights(embed_tokens=r(V, H), enorm=1 + r(H), hnorm=1 + r(H),
                             eh_proj=r(H, 2 * H) / 2, shared_head_norm=1 + r(H),
                             shared_head_head=r(V, H),
                             block=qwen3_next_decoder_block(qcfg, qw.layer))
    return DeepSeekV3MTPConfig(H, V, recycle_normed=recycle_normed), w


@pytest.mark.parametrize("recycle_normed", [False, True])
def test_deepseek_v3_mtp_wiring(recycle_normed):
    cfg, w = _deepseek(recycle_normed)
    T = 5
    ids = torch.randint(0, V, (T,), generator=generator("ds ids"))
    hidden = torch.randn(T, H, generator=generator("ds hidden"), dtype=torch.float64)
    pos = torch.arange(T)
    fed, logits = deepseek_v3_mtp(ids, hidden, pos, cfg, w)
    # written out: enorm/hnorm, eh_proj over cat[embedding, hidden], block, shared head
    emb = w.embed_tokens[ids].clone()
    emb[0] = 0.0  # position 0
    x = torch.cat([rms_norm(emb, w.enorm, 1e-6), rms_norm(hidden, w.hnorm, 1e-6)], -1) @ w.eh_proj.T
    x = w.block(x, pos)
    y = rms_norm(x, w.shared_head_norm, 1e-6)
    assert_close(logits, y @ w.shared_head_head.T, TOLERANCES[torch.float64], "DeepSeek MTP logits")
    assert_close(fed, y if recycle_normed else x, TOLERANCES[torch.float64], "fed-back hidden")
    # the position-0 embedding is ignored: any token there gives the same output
    other = ids.clone()
    other[0] = (ids[0] + 1) % V
    assert torch.equal(deepseek_v3_mtp(other, hidden, pos, cfg, w)[1], logits)
    # ... but not at position 1
    other = ids.clone()
    other[1] = (ids[1] + 1) % V
    assert not torch.allclose(deepseek_v3_mtp(other, hidden, pos, cfg, w)[1][1:], logits[1:])


def test_deepseek_v2_decoder_layer_matches_transformers():
    """reference.layers.deepseek_v2_decoder_layer vs transformers' DeepseekV3DecoderLayer (plain
    RMSNorms, residual wiring, DeepseekV3MoE) with the same attention in both: the layer's MLA
    replaced by the reference gated attention, as the MTP suites substitute it."""
    from transformers import DeepseekV3Config
    from transformers.models.deepseek_v3 import modeling_deepseek_v3 as ds

    from reference.layers import deepseek_v2_decoder_layer, gated_attention

    hf_cfg = DeepseekV3Config(hidden_size=H, intermediate_size=2 * H, moe_intermediate_size=I,
                              n_routed_experts=16, num_experts_per_tok=4, n_group=4, topk_group=2,
                              n_shared_experts=1, routed_scaling_factor=2.5, norm_topk_prob=True,
                              first_k_dense_replace=0, num_attention_heads=NH, rms_norm_eps=1e-6)
    torch.manual_seed(3)
    layer = ds.DeepseekV3DecoderLayer(hf_cfg, 0).double().eval()
    g = generator("deepseek layer")
    with torch.no_grad():
        for name, p in layer.named_parameters():
            base = 1.0 if "layernorm" in name else 0.0
            p.copy_(base + 0.2 * torch.randn(p.shape, generator=g, dtype=torch.float64))
    attn_cfg = AttentionConfig(H, NH, NKV, D, 0.25, 10_000.0, 1e-6)
    r = lambda *s: 0.2 * torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    aw = GatedAttentionWeights(r(2 * NH * D, H), r(NKV * D, H), r(NKV * D, H), r(H, NH * D),
                               r(D), r(D))
    T = 6
    x = torch.randn(T, H, generator=g, dtype=torch.float64)
    pos = torch.arange(T)

    class SameAttention(torch.nn.Module):
        def forward(self, hidden_states, **kwargs):
            return gated_attention(hidden_states[0], pos, attn_cfg, aw)[None], None

    layer.self_attn = SameAttention()
    m = layer.mlp
    moe = MoEConfig(name="deepseek-v3-tiny", hidden_size=H, moe_intermediate_size=I,
                    num_experts=16, num_experts_per_tok=4, norm_topk_prob=True,
                    topk_method="noaux_tc", scoring_func="sigmoid", n_group=4, topk_group=2,
                    routed_scaling_factor=2.5, shared_expert_intermediate_size=I)
    se = m.shared_experts
    mlp = MoEWeights(gate=m.gate.weight.detach(), w13=m.experts.gate_up_proj.detach(),
                     w2=m.experts.down_proj.detach(),
                     e_score_correction_bias=m.gate.e_score_correction_bias.detach(),
                     shared_w13=torch.cat([se.gate_proj.weight, se.up_proj.weight]).detach(),
                     shared_w2=se.down_proj.weight.detach())
    ref = deepseek_v2_decoder_layer(x, pos, lambda a, p: gated_attention(a, p, attn_cfg, aw), moe,
                                    layer.input_layernorm.weight.detach(),
                                    layer.post_attention_layernorm.weight.detach(), mlp, 1e-6)
    with torch.no_grad():
        out = layer(x[None], attention_mask=None, position_ids=pos[None],
                    position_embeddings=None)
        out = out[0] if isinstance(out, tuple) else out
    assert_close(ref, out.reshape(T, H), TOL, "deepseek_v2_decoder_layer vs DeepseekV3DecoderLayer")
