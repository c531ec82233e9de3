"""The whole Qwen3-Next target model and its MTP drafter, in float64, for the tiny fixtures
(fixtures/tiny_qwen3_next, and its Qwen3.5-layout twin fixtures/tiny_qwen3_5), plus greedy
decoding with logit margins and greedy speculative decoding with per-position acceptance.

Reads like the model files (vLLM qwen3_next.py / qwen3_next_mtp.py, transformers
modeling_qwen3_next.py); weights keep the checkpoint names, routed experts stacked per layer into
`...mlp.experts.w13` [E, 2I, H] (gate rows, then up rows) and `...mlp.experts.w2` [E, H, I] as
reference/moe.py wants them.

  layer l      h = x + mixer_l(rms(x));  out = h + moe(rms(h))
  mixer        Gated DeltaNet (linear_attention) or gated full attention (full_attention)
  rms          zero-centred RMSNorm: x / sqrt(mean(x^2) + eps) * (1 + w)
  model        hidden = rms_final(layers(embed(ids)));  logits = hidden @ lm_head.T
  MTP          g = rms_mtp(layer_mtp(fc([rms_e(embed(x_{t+1})), rms_h(h_t)]))) at position t;
               draft logits = g @ lm_head.T; step j > 1 feeds its own g back as h

Qwen3.5 (Qwen3_5MoeForCausalLM: vLLM qwen3_5.py / qwen3_5_mtp.py, transformers
modeling_qwen3_5_moe.py) is read from its own checkpoint layout where it differs:

  Gated DeltaNet input   in_proj_qkv (q, k, v each contiguous over the heads), in_proj_z,
                         in_proj_b, in_proj_a; Qwen3-Next fuses them per key head
                         (in_proj_qkvz [q k v z] and in_proj_ba [b a] for each key head)
  attention output gate  attn_output_gate in config.json (Qwen3-Next: always gated)
  rotary                 the config's interleaved M-RoPE (mrope_section, mrope_interleaved)
                         over (t, h, w) positions that are equal for text: plain partial NeoX
                         rotary (vLLM's text-only model drops the fields; transformers applies
                         them to three equal rows)
  the rest               as Qwen3-Next: zero-centred (Gemma) RMSNorm, MoE block, MTP wiring

All functions take the activations' dtype from their inputs (the oracle passes float64; the
training script reuses them in float32 with its own dense MoE). No global precision switch.
"""

from __future__ import annotations

import json
import math
import pathlib
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from reference.acceptance import AcceptanceStats
from reference.moe import MoEConfig, MoEWeights, moe_block

W = dict[str, torch.Tensor]


@dataclass(frozen=True)
class TinyConfig:
    """The config.json fields the forward reads (names as in Qwen3NextConfig)."""

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    layer_types: tuple[str, ...]
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    partial_rotary_factor: float
    rope_theta: float
    linear_conv_kernel_dim: int
    linear_key_head_dim: int
    linear_value_head_dim: int
    linear_num_key_heads: int
    linear_num_value_heads: int
    num_experts: int
    num_experts_per_tok: int
    moe_intermediate_size: int
    shared_expert_intermediate_size: int
    norm_topk_prob: bool
    rms_norm_eps: float
    num_nextn_predict_layers: int = 1
    attn_output_gate: bool = True  # Qwen3.5's config field; Qwen3-Next always gates

    @classmethod
    def from_dict(cls, d: dict) -> TinyConfig:
        rope = d.get("rope_parameters") or {}
        kw = {f: d[f] for f in cls.__dataclass_fields__ if f in d}
        kw["layer_types"] = tuple(d["layer_types"])
        kw.setdefault("partial_rotary_factor", rope.get("partial_rotary_factor", 1.0))
        kw.setdefault("rope_theta", rope.get("rope_theta", 10000.0))
        return cls(**kw)

    @property
    def moe(self) -> MoEConfig:
        return MoEConfig(name="tiny_qwen3_next", hidden_size=self.hidden_size,
                         moe_intermediate_size=self.moe_intermediate_size,
                         num_experts=self.num_experts, num_experts_per_tok=self.num_experts_per_tok,
                         norm_topk_prob=self.norm_topk_prob,
                         shared_expert_intermediate_size=self.shared_expert_intermediate_size,
                         shared_expert_gated=True, source="fixtures/tiny_qwen3_next/config.json")


# --------------------------------------------------------------------------- building blocks


def rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    """Zero-centred RMSNorm (Qwen3-Next): the stored weight is w, the scale is 1 + w."""
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * (1.0 + w.to(x.dtype))


def gated_rms_norm(x: torch.Tensor, z: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    """Gated DeltaNet output norm: rms(x) * w * silu(z) (plain weight, not zero-centred)."""
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w.to(x.dtype) * F.silu(z)


def l2norm(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).sum(-1, keepdim=True) + eps)


def rotary(x: torch.Tensor, positions: torch.Tensor, rotary_dim: int, theta: float) -> torch.Tensor:
    """NeoX-style rotary embedding on the first rotary_dim channels (partial rotary).
    x [B, T, heads, D], positions [B, T]."""
    inv_freq = 1.0 / theta ** (torch.arange(0, rotary_dim, 2, dtype=torch.float64) / rotary_dim)
    ang = positions.double()[..., None] * inv_freq  # [B, T, rotary_dim/2]
    cos, sin = ang.cos().to(x.dtype)[:, :, None], ang.sin().to(x.dtype)[:, :, None]
    rot, rest = x[..., :rotary_dim], x[..., rotary_dim:]
    x1, x2 = rot.chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin, rest], dim=-1)


def causal_conv1d_silu(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Depthwise causal conv over time then SiLU. x [B, T, C], weight [C, 1, K]:
    out[t] = silu(sum_j weight[:, 0, j] * x[t + j - K + 1])  (zeros before the sequence)."""
    K = weight.shape[-1]
    T = x.shape[1]
    xp = F.pad(x, (0, 0, K - 1, 0))  # [B, T + K - 1, C]
    out = sum(xp[:, j:j + T] * weight[:, 0, j].to(x.dtype) for j in range(K))
    return F.silu(out)


def gated_delta_rule(q, k, v, g, beta) -> torch.Tensor:
    """Recurrent gated delta rule. q, k [B, T, Hv, dk] (l2-normalized), v [B, T, Hv, dv],
    g (log decay) and beta [B, T, Hv]. State S [B, Hv, dk, dv]:
      S <- exp(g_t) S;  S <- S + k_t (beta_t (v_t - S^T k_t))^T;  o_t = S^T q_t / sqrt(dk)."""
    B, T, Hv, dk = k.shape
    dv = v.shape[-1]
    q = q / math.sqrt(dk)
    S = torch.zeros(B, Hv, dk, dv, dtype=v.dtype)
    outs = []
    for t in range(T):
        S = S * g[:, t].exp()[..., None, None]
        kv_mem = (S * k[:, t, :, :, None]).sum(-2)  # [B, Hv, dv]
        delta = (v[:, t] - kv_mem) * beta[:, t, :, None]
        S = S + k[:, t, :, :, None] * delta[:, :, None, :]
        outs.append((S * q[:, t, :, :, None]).sum(-2))
    return torch.stack(outs, dim=1)  # [B, T, Hv, dv]


def deltanet_projections(x: torch.Tensor, w: W, p: str, c: TinyConfig) -> tuple:
    """The Gated DeltaNet's input projections of x [B, T, H]: (mixed [B, T, 2 nk dk + nv dv]
    = [q | k | v] as the conv reads them, z [B, T, nv, dv], b and a [B, T, nv]).
    Qwen3-Next (in_proj_qkvz, in_proj_ba): rows grouped per key head, [q (dk), k (dk),
    v (r*dv), z (r*dv)] and [b (r), a (r)] for each of the nk key heads, r = nv / nk.
    Qwen3.5 (in_proj_qkv, in_proj_z, in_proj_b, in_proj_a): q, k, v, z, b, a each contiguous."""
    B, T, _ = x.shape
    nk, nv = c.linear_num_key_heads, c.linear_num_value_heads
    dk, dv = c.linear_key_head_dim, c.linear_value_head_dim
    if p + "in_proj_qkv.weight" in w:  # Qwen3.5
        mixed = x @ w[p + "in_proj_qkv.weight"].T
        z = (x @ w[p + "in_proj_z.weight"].T).view(B, T, nv, dv)
        return mixed, z, x @ w[p + "in_proj_b.weight"].T, x @ w[p + "in_proj_a.weight"].T
    r = nv // nk
    qkvz = (x @ w[p + "in_proj_qkvz.weight"].T).view(B, T, nk, 2 * dk + 2 * r * dv)
    ba = (x @ w[p + "in_proj_ba.weight"].T).view(B, T, nk, 2 * r)
    q, k, v, z = torch.split(qkvz, [dk, dk, r * dv, r * dv], dim=-1)
    b, a = torch.split(ba, [r, r], dim=-1)
    mixed = torch.cat([q.reshape(B, T, -1), k.reshape(B, T, -1), v.reshape(B, T, -1)], -1)
    return mixed, z.reshape(B, T, nv, dv), b.reshape(B, T, nv), a.reshape(B, T, nv)


def gated_deltanet(x: torch.Tensor, w: W, p: str, c: TinyConfig) -> torch.Tensor:
    """Qwen3NextGatedDeltaNet (and Qwen3.5's, deltanet_projections) on x [B, T, H]."""
    B, T, _ = x.shape
    nk, nv = c.linear_num_key_heads, c.linear_num_value_heads
    dk, dv = c.linear_key_head_dim, c.linear_value_head_dim
    r = nv // nk
    mixed, z, b, a = deltanet_projections(x, w, p, c)
    mixed = causal_conv1d_silu(mixed, w[p + "conv1d.weight"])  # [B, T, 2 nk dk + nv dv]
    q, k, v = torch.split(mixed, [nk * dk, nk * dk, nv * dv], dim=-1)
    q = l2norm(q.reshape(B, T, nk, dk)).repeat_interleave(r, dim=2)  # [B, T, nv, dk]
    k = l2norm(k.reshape(B, T, nk, dk)).repeat_interleave(r, dim=2)
    v = v.reshape(B, T, nv, dv)
    beta = torch.sigmoid(b)
    g = -w[p + "A_log"].to(x.dtype).exp() * F.softplus(a + w[p + "dt_bias"].to(x.dtype))
    o = gated_delta_rule(q, k, v, g, beta)  # [B, T, nv, dv]
    o = gated_rms_norm(o, z, w[p + "norm.weight"], c.rms_norm_eps)
    return o.reshape(B, T, nv * dv) @ w[p + "out_proj.weight"].T


def gated_attention(x: torch.Tensor, positions: torch.Tensor, w: W, p: str, c: TinyConfig
                    ) -> torch.Tensor:
    """Qwen3NextAttention on x [B, T, H]: q_proj gives per head [q (D), gate (D)] (only q when
    attn_output_gate is off); per-head zero-centred q/k RMSNorm; partial NeoX rotary; causal
    GQA softmax attention; the output is scaled by sigmoid(gate) before o_proj."""
    B, T, _ = x.shape
    nh, nkv, D = c.num_attention_heads, c.num_key_value_heads, c.head_dim
    qg = (x @ w[p + "q_proj.weight"].T).view(B, T, nh, -1)
    q, gate = qg.chunk(2, dim=-1) if c.attn_output_gate else (qg, None)  # [B, T, nh, D]
    k = (x @ w[p + "k_proj.weight"].T).view(B, T, nkv, D)
    v = (x @ w[p + "v_proj.weight"].T).view(B, T, nkv, D)
    q = rms_norm(q, w[p + "q_norm.weight"], c.rms_norm_eps)
    k = rms_norm(k, w[p + "k_norm.weight"], c.rms_norm_eps)
    rd = int(D * c.partial_rotary_factor)
    q, k = rotary(q, positions, rd, c.rope_theta), rotary(k, positions, rd, c.rope_theta)
    k = k.repeat_interleave(nh // nkv, dim=2)
    v = v.repeat_interleave(nh // nkv, dim=2)
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(D)  # [B, nh, T, T]
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    scores = scores.masked_fill(~causal, float("-inf"))
    o = torch.einsum("bhqk,bkhd->bqhd", torch.softmax(scores, dim=-1), v)  # [B, T, nh, D]
    o = o.reshape(B, T, nh * D)
    if gate is not None:
        o = o * torch.sigmoid(gate.reshape(B, T, nh * D))
    return o @ w[p + "o_proj.weight"].T


MoEFn = Callable[[torch.Tensor, W, str, TinyConfig], torch.Tensor]


def sparse_moe_fp64(x: torch.Tensor, w: W, p: str, c: TinyConfig) -> torch.Tensor:
    """The sparse MoE block through reference/moe.py (softmax top-k, renormalized, shared expert
    scaled by sigmoid(shared_expert_gate(x)))."""
    B, T, H = x.shape
    mw = MoEWeights(
        gate=w[p + "gate.weight"], w13=w[p + "experts.w13"], w2=w[p + "experts.w2"],
        shared_w13=torch.cat([w[p + "shared_expert.gate_proj.weight"],
                              w[p + "shared_expert.up_proj.weight"]]),
        shared_w2=w[p + "shared_expert.down_proj.weight"],
        shared_expert_gate=w[p + "shared_expert_gate.weight"])
    out, _, _ = moe_block(x.reshape(B * T, H), c.moe, mw)
    return out.reshape(B, T, H).to(x.dtype)


def decoder_layer(x, positions, w: W, p: str, c: TinyConfig, layer_type: str,
                  moe: MoEFn = sparse_moe_fp64) -> torch.Tensor:
    h = rms_norm(x, w[p + "input_layernorm.weight"], c.rms_norm_eps)
    if layer_type == "linear_attention":
        h = gated_deltanet(h, w, p + "linear_attn.", c)
    else:
        h = gated_attention(h, positions, w, p + "self_attn.", c)
    x = x + h
    return x + moe(rms_norm(x, w[p + "post_attention_layernorm.weight"], c.rms_norm_eps),
                   w, p + "mlp.", c)


def target_hidden(ids: torch.Tensor, w: W, c: TinyConfig, moe: MoEFn = sparse_moe_fp64,
                  dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """ids [B, T] -> final-normed hidden states [B, T, H] (what vLLM hands the drafter)."""
    B, T = ids.shape
    positions = torch.arange(T)[None].expand(B, T)
    x = w["model.embed_tokens.weight"].to(dtype)[ids]
    for i, lt in enumerate(c.layer_types):
        x = decoder_layer(x, positions, w, f"model.layers.{i}.", c, lt, moe)
    return rms_norm(x, w["model.norm.weight"], c.rms_norm_eps)


def mtp_fc_input(emb: torch.Tensor, hidden: torch.Tensor, w: W, c: TinyConfig) -> torch.Tensor:
    """[rms_e(embedding of the next token), rms_h(hidden)]: the embedding comes first."""
    e = rms_norm(emb, w["mtp.pre_fc_norm_embedding.weight"], c.rms_norm_eps)
    h = rms_norm(hidden, w["mtp.pre_fc_norm_hidden.weight"], c.rms_norm_eps)
    return torch.cat([e, h], dim=-1)


def mtp_hidden(next_ids: torch.Tensor, hidden: torch.Tensor, positions: torch.Tensor, w: W,
               c: TinyConfig, moe: MoEFn = sparse_moe_fp64,
               fc_input: Callable = mtp_fc_input) -> torch.Tensor:
    """The MTP module on a causal sequence of entries: entry t reads (next_ids[t], hidden[t]) at
    position positions[t] and attends to entries <= t. [B, T] ids, [B, T, H] hidden -> [B, T, H]."""
    emb = w["model.embed_tokens.weight"].to(hidden.dtype)[next_ids]
    x = fc_input(emb, hidden, w, c) @ w["mtp.fc.weight"].T
    x = decoder_layer(x, positions, w, "mtp.layers.0.", c, "full_attention", moe)
    return rms_norm(x, w["mtp.norm.weight"], c.rms_norm_eps)


# --------------------------------------------------------------------------- the oracle


def load_weights(directory: pathlib.Path | str) -> tuple[W, dict]:
    """config.json + model.safetensors -> (fp64 weights with stacked experts, config dict)."""
    from safetensors.torch import load_file

    d = pathlib.Path(directory)
    raw = load_file(str(d / "model.safetensors"))
    cfg = json.loads((d / "config.json").read_text())
    w: W = {}
    experts: dict[str, dict[int, dict[str, torch.Tensor]]] = {}
    for k, v in raw.items():
        if ".mlp.experts." in k:
            head, tail = k.split(".mlp.experts.")
            e, proj, _ = tail.split(".")
            experts.setdefault(head, {}).setdefault(int(e), {})[proj] = v.double()
        else:
            w[k] = v.double()
    for head, per in experts.items():
        E = len(per)
        w[head + ".mlp.experts.w13"] = torch.stack(
            [torch.cat([per[e]["gate_proj"], per[e]["up_proj"]]) for e in range(E)])
        w[head + ".mlp.experts.w2"] = torch.stack([per[e]["down_proj"] for e in range(E)])
    return w, cfg


@dataclass
class Greedy:
    prompt: list[int]
    tokens: list[int]  # generated tokens
    margins: list[float]  # top-1 minus top-2 logit at each generated position (fp64)


@dataclass
class TeacherForced:
    """A token stream judged against the oracle with the stream itself as context."""

    argmax: list[int]  # oracle's greedy choice at each generated position
    margins: list[float]  # oracle's top-1 minus top-2 logit there
    logit_gap: list[float]  # oracle's top-1 logit minus its logit of the stream's token (>= 0)
    logprob: list[float]  # oracle's log-probability of the stream's token


@dataclass
class TinyQwen3Next:
    """fp64 oracle of the fixture: target forward, MTP drafter, greedy and speculative greedy."""

    w: W
    c: TinyConfig
    config: dict = field(default_factory=dict)

    @classmethod
    def load(cls, directory: pathlib.Path | str) -> TinyQwen3Next:
        w, cfg = load_weights(directory)
        return cls(w, TinyConfig.from_dict(cfg), cfg)

    # ---- target
    def hidden(self, ids: list[int]) -> torch.Tensor:  # [T, H]
        return target_hidden(torch.tensor([ids]), self.w, self.c)[0]

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:  # [..., V]
        return hidden @ self.w["lm_head.weight"].T

    # ---- drafter (override mtp_fc_input in a subclass to plant a bug: tests/ do)
    def mtp_fc_input(self, emb, hidden, w, c):
        return mtp_fc_input(emb, hidden, w, c)

    def mtp(self, next_ids: list[int], hidden: torch.Tensor, positions: list[int]) -> torch.Tensor:
        return mtp_hidden(torch.tensor([next_ids]), hidden[None], torch.tensor([positions]),
                          self.w, self.c, fc_input=self.mtp_fc_input)[0]

    def draft(self, seq: list[int], hidden: torch.Tensor, last: int, k: int,
              runner_up: list[int] | None = None) -> tuple[list[int], list[float]]:
        """k greedy drafts after seq[:last + 1], as vLLM's MTP proposer makes them: entries
        q = 0 .. last - 1 read (seq[q + 1], target h_q) at position q; draft j >= 2 reads
        (draft j-1, MTP output of draft j-1) at position last - 2 + j. Returns drafts and the
        drafter's top-1 minus top-2 margins (and, into `runner_up` when given, the top-2 tokens)."""
        ids = seq[1:last + 1]
        hs = hidden[:last]
        pos = list(range(last))
        drafts, margins = [], []
        for _ in range(k):
            g = self.mtp(ids, hs, pos)  # [n, H]
            lg = self.logits(g[-1])
            top = torch.topk(lg, 2)
            d = int(lg.argmax())
            drafts.append(d)
            margins.append(float(top.values[0] - top.values[1]))
            if runner_up is not None:
                runner_up.append(int(top.indices[1]))
            ids = [*ids, d]
            hs = torch.cat([hs, g[-1:]], dim=0)
            pos = [*pos, pos[-1] + 1]
        return drafts, margins

    # ---- decoding
    def greedy(self, prompt: list[int], n: int, k_draft: int = 3) -> Greedy:
        """Exact fp64 greedy decoding of n tokens. Speculative with the oracle's own drafter to
        save target forwards (the result does not depend on the drafts)."""
        seq = list(prompt)
        P = len(prompt)
        h = self.hidden(seq)
        seq.append(int(self.logits(h[-1]).argmax()))
        while len(seq) < P + n:
            drafts, _ = self.draft(seq, h, len(seq) - 1, min(k_draft, P + n - len(seq)))
            cand = seq + drafts
            h = self.hidden(cand)
            am = self.logits(h[len(seq) - 1:]).argmax(-1).tolist()  # [len(drafts) + 1]
            acc = 0
            while acc < len(drafts) and drafts[acc] == am[acc]:
                acc += 1
            seq = seq + drafts[:acc] + [am[acc]]
            h = h[:len(seq) - 1]
        seq = seq[:P + n]
        tf = self.teacher_forced(prompt, seq[P:])
        return Greedy(list(prompt), seq[P:], tf.margins)

    def teacher_forced(self, prompt: list[int], tokens: list[int]) -> TeacherForced:
        """One forward over prompt + tokens: at each generated position the oracle's argmax, its
        top-1/top-2 margin, and how far below the top the stream's own token is."""
        seq = list(prompt) + list(tokens)
        lg = self.logits(self.hidden(seq[:-1]))[len(prompt) - 1:]  # [n, V]
        top = torch.topk(lg, 2, dim=-1).values
        idx = torch.tensor(tokens)[:, None]
        chosen = lg.gather(1, idx).squeeze(1)
        lp = torch.log_softmax(lg, dim=-1).gather(1, idx).squeeze(1)
        return TeacherForced(lg.argmax(-1).tolist(), (top[:, 0] - top[:, 1]).tolist(),
                             (top[:, 0] - chosen).tolist(), lp.tolist())


@dataclass
class SpecTrace:
    """Greedy speculative decoding of one request, step by step."""

    drafts: list[list[int]]  # per verification step
    accepted: list[int]  # per step: leading drafts equal to the greedy tokens
    draft_margins: list[list[float]]  # the drafter's top-1/top-2 margin per draft
    draft_runner_up: list[list[int]]  # the drafter's second choice per draft
    verified: list[list[int]]  # per step: the greedy tokens the drafts were compared with


def speculative_trace(m: TinyQwen3Next, prompt: list[int], tokens: list[int], k: int,
                      max_tokens: int | None = None) -> SpecTrace:
    """Replay greedy speculative decoding with k MTP drafts per step over the oracle's greedy
    output `tokens` (the output does not depend on k; only the steps do). A step starts after
    the last emitted token at index `last`; it accepts the longest prefix of drafts equal to the
    greedy tokens, then emits one more (recovered or bonus). Steps continue until max_tokens
    tokens are emitted (vLLM counts every step's drafts, including a last one that overshoots).
    `tokens` must extend k tokens beyond max_tokens so that the last step can be judged."""
    max_tokens = len(tokens) - k if max_tokens is None else max_tokens
    seq = list(prompt) + list(tokens)
    h = m.hidden(seq[:-1])
    P = len(prompt)
    last = P  # index of the first generated token (sampled from the prefill)
    tr = SpecTrace([], [], [], [], [])
    while last - P + 1 < max_tokens:
        second: list[int] = []
        drafts, margins = m.draft(seq, h, last, k, second)
        acc = 0
        while acc < k and last + 1 + acc < len(seq) and drafts[acc] == seq[last + 1 + acc]:
            acc += 1
        tr.drafts.append(drafts)
        tr.accepted.append(acc)
        tr.draft_margins.append(margins)
        tr.draft_runner_up.append(second)
        tr.verified.append(seq[last + 1:last + 1 + k])
        last += acc + 1
    return tr


def acceptance_from_traces(traces: list[SpecTrace], k: int) -> AcceptanceStats:
    """vLLM's counters (reference/acceptance.py definitions) summed over requests."""
    per_pos = [0] * k
    drafts = accepted = 0
    for tr in traces:
        for a in tr.accepted:
            drafts += 1
            accepted += a
            for i in range(a):
                per_pos[i] += 1
    return AcceptanceStats(drafts, drafts * k, accepted, per_pos, [drafts] * k)


def speculative_acceptance(m: TinyQwen3Next, prompts: list[list[int]], tokens: list[list[int]],
                           k: int, max_tokens: int | None = None) -> AcceptanceStats:
    """Per-position acceptance over prompts; `tokens` are the oracle's greedy outputs."""
    n = max_tokens if max_tokens is not None else min(len(t) for t in tokens) - k
    return acceptance_from_traces(
        [speculative_trace(m, p, t, k, n) for p, t in zip(prompts, tokens)], k)
