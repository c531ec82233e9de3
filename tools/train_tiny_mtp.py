"""Train the tiny Qwen3-Next-architecture fixtures (hybrid Gated DeltaNet + gated attention, sparse
MoE with a sigmoid-gated shared expert, one MTP layer) on a synthetic low-entropy corpus, and
write them in the layout vLLM loads:

  fixtures/tiny_qwen3_next/config.json        Qwen3NextForCausalLM, num_nextn_predict_layers 1
  fixtures/tiny_qwen3_next/model.safetensors  bf16; per-expert names; MTP weights under mtp.
  fixtures/tiny_qwen3_next/golden.json        the fp64 oracle's acceptance on held-out prompts
  fixtures/tiny_qwen3_5/                       the same weights in the Qwen3.5 layout (GPU twin)
  fixtures/tiny_qwen3_next_tp2/                a second model, same recipe, with head counts that
                                               split over tensor_parallel_size 2 (CONFIG_TP2)

    python -m tools.train_tiny_mtp                        # train + save + golden (README: time)
    python -m tools.train_tiny_mtp --golden               # recompute golden.json only
    python -m tools.train_tiny_mtp --fixture tp2 [--golden]   # the same for tiny_qwen3_next_tp2

Both fixtures speak the same synthetic language (its tables and the held-out prompts come from
seeds named "tiny_qwen3_next"); each fixture's weight init and training documents come from seeds
named after its folder (the default fixture's folder is "tiny_qwen3_next", so its seeds are the
ones it was made with).

Training runs the functions of reference/target_model.py in float32 with autograd (the
recurrent Gated DeltaNet; transformers' chunked path is ~10x slower on 2 cores at this size)
and a dense MoE defined here. The MTP head is trained unrolled over 3 steps (step j reads its
own previous output as the hidden state, as vLLM's proposer does for num_speculative_tokens > 1;
in training every step attends causally over entries of its own step, an approximation of the
proposer's KV cache that only affects training). What judges the result (golden.json) is the
fp64 oracle, with the sparse MoE of reference/moe.py, and vLLM itself in suites/e2e.

Corpus (structure that rewards looking ahead; vocabulary 512):
  motifs      a library of 64 fixed token strings (length 4-10, tokens 128..511, shared tokens
              between motifs so that context is needed); motif runs chain motifs through a sparse
              successor table (2 successors, p 0.75 / 0.25)
  walks       a sparse first-order Markov chain over tokens 16..127 (2 successors, p 0.8 / 0.2)
  copies      COPY token, a random span of 6-12 tokens, SEP token, the same span again, END
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from fixtures.seeds import stable_seed

ROOT = pathlib.Path(__file__).resolve().parents[1] / "fixtures"
OUT = ROOT / "tiny_qwen3_next"
OUT_35 = ROOT / "tiny_qwen3_5"

VOCAB = 512
COPY, SEP, END, BOS = 1, 2, 3, 0
EOS = 4  # never produced by the corpus; generation uses ignore_eos anyway

CONFIG = dict(
    architectures=["Qwen3NextForCausalLM"],
    model_type="qwen3_next",
    vocab_size=VOCAB,
    hidden_size=128,
    intermediate_size=256,
    num_hidden_layers=4,
    layer_types=["linear_attention", "linear_attention", "linear_attention", "full_attention"],
    full_attention_interval=4,
    num_attention_heads=2,
    num_key_value_heads=1,
    head_dim=64,  # vLLM's CPU attention rejects 32
    partial_rotary_factor=0.25,
    rope_theta=10000.0,
    rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.25},
    max_position_embeddings=1024,
    linear_conv_kernel_dim=4,
    linear_key_head_dim=64,  # the CPU GDN kernel rejects 32
    linear_value_head_dim=64,
    linear_num_key_heads=1,
    linear_num_value_heads=2,
    decoder_sparse_step=1,
    mlp_only_layers=[],
    num_experts=8,
    num_experts_per_tok=2,
    moe_intermediate_size=64,
    shared_expert_intermediate_size=64,
    norm_topk_prob=True,
    hidden_act="silu",
    rms_norm_eps=1e-6,
    attention_bias=False,
    attention_dropout=0.0,
    tie_word_embeddings=False,
    bos_token_id=BOS,
    eos_token_id=EOS,
    num_nextn_predict_layers=1,
    torch_dtype="bfloat16",
    dtype="bfloat16",
    use_cache=True,
)

# The same network with every head count split-able over tensor_parallel_size 2. Per rank at
# TP=2 it has exactly CONFIG's mixer shapes (Gated DeltaNet 1 key head / 2 value heads,
# attention 2 query heads / 1 KV head); experts (8) split over expert-parallel 2, and the expert
# and shared-expert intermediates (64) split into 32 per rank, the CPU MoE kernels' tile.
# vLLM's Gated DeltaNet cannot replicate key heads: with CONFIG at TP=2 each rank gets
# 1 // 2 = 0 of them ("shape '[7, 0, 384]' is invalid" in fix_query_key_value_ordering).
CONFIG_TP2 = {**CONFIG, "num_attention_heads": 4, "num_key_value_heads": 2,
              "linear_num_key_heads": 2, "linear_num_value_heads": 4}

# Held-out evaluation (golden.json and the e2e suite use the same definition).
EVAL_PROMPTS = 8
EVAL_PROMPT_LEN = 32
EVAL_NEW_TOKENS = 48


@dataclass(frozen=True)
class FixtureSpec:
    """One trained fixture: its folder under fixtures/ (also its seed namespace), config.json,
    training defaults, and the folder of its Qwen3.5-layout twin (None: no twin)."""

    name: str
    config: dict
    steps: int = 320
    lr: float = 6e-3
    twin: str | None = None

    @property
    def out(self) -> pathlib.Path:
        return ROOT / self.name


FIXTURES = {
    "default": FixtureSpec("tiny_qwen3_next", CONFIG, twin="tiny_qwen3_5"),
    "tp2": FixtureSpec("tiny_qwen3_next_tp2", CONFIG_TP2),
}


# --------------------------------------------------------------------------- parallel layout


def parallel_capable(config: dict, tp: int = 1, ep: int = 1, moe_align: int = 32) -> list[str]:
    """Why vLLM cannot run the Qwen3-Next `config` (a config.json dict) at tensor_parallel_size
    `tp` with `ep` expert-parallel ranks; [] when it can. Pure Python, no vLLM import.

    ep = 1: routed experts are sharded by tp along their intermediate dimension; ep > 1
    (vLLM's enable_expert_parallel, ep = tensor_parallel_size x data_parallel_size): whole
    experts are spread over ep ranks. `moe_align` is the CPU MoE kernels' tile (hidden and
    per-rank expert intermediate multiples of 32); pass 1 where that does not apply.
    The rules, as vLLM 0.32 states them (model_executor/models/qwen3_next.py and
    layers/mamba/gdn/qwen_gdn_linear_attn.py):
      Gated DeltaNet   linear_num_key_heads and linear_num_value_heads divisible by tp (no
                       replication: 1 key head at tp 2 gives each rank 0 of them)
      attention        num_attention_heads divisible by tp; num_key_value_heads divisible by tp,
                       or tp divisible by it (KV heads are then replicated)
      routed experts   tp <= num_experts; ep > 1: num_experts divisible by ep (the MoE block's
                       local-expert count is num_experts // ep); ep = 1: moe_intermediate_size
                       divisible by tp
      shared expert    shared_expert_intermediate_size divisible by tp (column-parallel)
    """
    if tp < 1 or ep < 1:
        return [f"tp={tp}, ep={ep}: both must be >= 1"]
    why: list[str] = []

    def divides(field: str, n: int, what: str) -> None:
        v = config[field]
        if v % n:
            why.append(f"{field}={v} is not divisible by {what}={n}")

    divides("linear_num_key_heads", tp, "tp")
    divides("linear_num_value_heads", tp, "tp")
    divides("num_attention_heads", tp, "tp")
    nkv = config["num_key_value_heads"]
    if (nkv % tp if nkv >= tp else tp % nkv):
        why.append(f"num_key_value_heads={nkv} neither divides nor is divisible by tp={tp}")
    E, I = config["num_experts"], config["moe_intermediate_size"]
    if tp > E:
        why.append(f"tp={tp} is greater than num_experts={E}")
    if ep > 1:
        divides("num_experts", ep, "ep")
        if I % moe_align:
            why.append(f"moe_intermediate_size={I} is not a multiple of {moe_align}")
    else:
        divides("moe_intermediate_size", tp, "tp")
        if I % tp == 0 and (I // tp) % moe_align:
            why.append(f"moe_intermediate_size={I} gives {I // tp} per rank at tp={tp}, not a "
                       f"multiple of {moe_align}")
    divides("shared_expert_intermediate_size", tp, "tp")
    if config["hidden_size"] % moe_align:
        why.append(f"hidden_size={config['hidden_size']} is not a multiple of {moe_align}")
    return why


# --------------------------------------------------------------------------- corpus


class Corpus:
    """The synthetic language. Its tables are drawn once from a seed; documents from another."""

    def __init__(self, seed: int = stable_seed("tiny_qwen3_next", "language")):
        rng = np.random.default_rng(seed)
        self.motifs = [rng.choice(np.arange(128, VOCAB), size=int(rng.integers(4, 11)),
                                  replace=False) for _ in range(64)]
        self.motif_next = rng.integers(0, 64, size=(64, 2))
        self.walk_next = rng.integers(16, 128, size=(VOCAB, 2))

    def document(self, rng: np.random.Generator, length: int) -> list[int]:
        doc: list[int] = [BOS]
        while len(doc) < length:
            kind = rng.choice(3, p=[0.5, 0.3, 0.2])
            if kind == 0:  # motif run
                m = int(rng.integers(64))
                for _ in range(int(rng.integers(2, 7))):
                    doc.extend(int(t) for t in self.motifs[m])
                    m = int(self.motif_next[m, 0 if rng.random() < 0.75 else 1])
            elif kind == 1:  # walk
                t = int(rng.integers(16, 128))
                for _ in range(int(rng.integers(8, 21))):
                    doc.append(t)
                    t = int(self.walk_next[t, 0 if rng.random() < 0.8 else 1])
            else:  # copy span
                span = [int(x) for x in rng.integers(16, VOCAB, size=int(rng.integers(6, 13)))]
                doc.extend([COPY, *span, SEP, *span, END])
        return doc[:length]

    def batch(self, rng: np.random.Generator, n: int, length: int) -> torch.Tensor:
        return torch.tensor([self.document(rng, length) for _ in range(n)], dtype=torch.long)


def eval_prompts(n: int = EVAL_PROMPTS, length: int = EVAL_PROMPT_LEN) -> list[list[int]]:
    """Held-out prompts: documents from a seed never used in training, cut to `length`."""
    rng = np.random.default_rng(stable_seed("tiny_qwen3_next", "eval-prompts"))
    c = Corpus()
    return [c.document(rng, length) for _ in range(n)]


# --------------------------------------------------------------------------- model (training)


def dense_moe(x: torch.Tensor, w, p: str, c) -> torch.Tensor:
    """The same sparse MoE as the oracle (softmax top-k, renormalized, sigmoid-gated shared
    expert), computed densely for training: every expert on every token, weighted by the
    top-k gates (zero elsewhere)."""
    probs = torch.softmax(x @ w[p + "gate.weight"].T, dim=-1)  # [B, T, E]
    top, idx = torch.topk(probs, c.num_experts_per_tok, dim=-1)
    top = top / top.sum(-1, keepdim=True)
    gates = torch.zeros_like(probs).scatter(-1, idx, top)  # [B, T, E]
    gate, up = torch.einsum("bth,eih->btei", x, w[p + "experts.w13"]).chunk(2, dim=-1)
    y = torch.einsum("btei,ehi->bteh", nn.functional.silu(gate) * up, w[p + "experts.w2"])
    out = (y * gates[..., None]).sum(2)
    s = nn.functional.silu(x @ w[p + "shared_expert.gate_proj.weight"].T)
    s = (s * (x @ w[p + "shared_expert.up_proj.weight"].T)) @ w[p + "shared_expert.down_proj.weight"].T
    return out + torch.sigmoid(x @ w[p + "shared_expert_gate.weight"].T) * s


def init_weights(c, seed_name: str = "tiny_qwen3_next") -> dict[str, torch.Tensor]:
    """Checkpoint names (experts stacked as the oracle holds them), float32, seeded by the
    fixture's name."""
    g = torch.Generator().manual_seed(stable_seed(seed_name, "init"))
    H, V, E, I, Is = (c.hidden_size, c.vocab_size, c.num_experts, c.moe_intermediate_size,
                      c.shared_expert_intermediate_size)
    nk, nv, dk, dv = (c.linear_num_key_heads, c.linear_num_value_heads, c.linear_key_head_dim,
                      c.linear_value_head_dim)
    nh, nkv, D, K = c.num_attention_heads, c.num_key_value_heads, c.head_dim, c.linear_conv_kernel_dim
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (V, H),
                                          "lm_head.weight": (V, H), "model.norm.weight": (H,)}

    def layer(p: str, lt: str) -> None:
        shapes[p + "input_layernorm.weight"] = (H,)
        shapes[p + "post_attention_layernorm.weight"] = (H,)
        if lt == "linear_attention":
            a = p + "linear_attn."
            shapes[a + "in_proj_qkvz.weight"] = (2 * nk * dk + 2 * nv * dv, H)
            shapes[a + "in_proj_ba.weight"] = (2 * nv, H)
            shapes[a + "conv1d.weight"] = (2 * nk * dk + nv * dv, 1, K)
            shapes[a + "dt_bias"] = (nv,)
            shapes[a + "A_log"] = (nv,)
            shapes[a + "norm.weight"] = (dv,)
            shapes[a + "out_proj.weight"] = (H, nv * dv)
        else:
            a = p + "self_attn."
            shapes[a + "q_proj.weight"] = (2 * nh * D, H)
            shapes[a + "k_proj.weight"] = (nkv * D, H)
            shapes[a + "v_proj.weight"] = (nkv * D, H)
            shapes[a + "o_proj.weight"] = (H, nh * D)
            shapes[a + "q_norm.weight"] = (D,)
            shapes[a + "k_norm.weight"] = (D,)
        m = p + "mlp."
        shapes[m + "gate.weight"] = (E, H)
        shapes[m + "experts.w13"] = (E, 2 * I, H)
        shapes[m + "experts.w2"] = (E, H, I)
        shapes[m + "shared_expert.gate_proj.weight"] = (Is, H)
        shapes[m + "shared_expert.up_proj.weight"] = (Is, H)
        shapes[m + "shared_expert.down_proj.weight"] = (H, Is)
        shapes[m + "shared_expert_gate.weight"] = (1, H)

    for i, lt in enumerate(c.layer_types):
        layer(f"model.layers.{i}.", lt)
    layer("mtp.layers.0.", "full_attention")
    shapes.update({"mtp.fc.weight": (H, 2 * H), "mtp.pre_fc_norm_embedding.weight": (H,),
                   "mtp.pre_fc_norm_hidden.weight": (H,), "mtp.norm.weight": (H,)})
    w = {}
    for name, shp in sorted(shapes.items()):
        if name.endswith("linear_attn.norm.weight"):
            t = torch.ones(shp)  # gated norm: plain weight
        elif name.endswith("A_log"):
            t = torch.log(torch.empty(shp).uniform_(1.0, 16.0, generator=g))
        elif name.endswith("dt_bias"):
            t = torch.ones(shp)
        elif name.endswith("conv1d.weight"):
            t = torch.empty(shp).uniform_(-K ** -0.5, K ** -0.5, generator=g)
        elif len(shp) == 1:
            t = torch.zeros(shp)  # zero-centred RMSNorm: scale 1 + w
        else:
            t = torch.randn(shp, generator=g) * 0.02
        w[name] = t
    return w


def train(steps: int, batch: int, seq: int, lr: float, log_every: int = 10,
          spec: FixtureSpec = FIXTURES["default"]) -> dict[str, torch.Tensor]:
    from reference.target_model import TinyConfig, mtp_hidden, target_hidden

    c = TinyConfig.from_dict(spec.config)
    w = {k: nn.Parameter(v) for k, v in init_weights(c, spec.name).items()}
    params = list(w.values())
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
    rng = np.random.default_rng(stable_seed(spec.name, "train-docs"))
    corpus = Corpus()
    weights = (1.0, 0.7, 0.5)  # MTP steps 1..3
    t0 = time.time()
    for step in range(steps):
        warm = min(1.0, (step + 1) / 30)
        for gr in opt.param_groups:
            gr["lr"] = lr * warm * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / steps)))
        x = corpus.batch(rng, batch, seq)  # [B, L]
        h = target_hidden(x, w, c, moe=dense_moe, dtype=torch.float32)  # [B, L, H] final-normed
        logits = h @ w["lm_head.weight"].T
        loss_t = nn.functional.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), x[:, 1:].reshape(-1))
        pos = torch.arange(seq)[None].expand(batch, -1)
        g_prev = h
        losses = []
        for j in range(1, len(weights) + 1):
            n = seq - j - 1  # entries t with a target x_{t+j+1}
            g = mtp_hidden(x[:, j:j + n], g_prev[:, :n], pos[:, :n], w, c, moe=dense_moe)
            lj = nn.functional.cross_entropy((g @ w["lm_head.weight"].T).reshape(-1, VOCAB),
                                             x[:, j + 1:j + 1 + n].reshape(-1))
            losses.append(lj)
            g_prev = g
        loss = loss_t + sum(wj * lj for wj, lj in zip(weights, losses))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if step % log_every == 0 or step == steps - 1:
            print(f"step {step:5d}  target {loss_t.item():.3f}  mtp "
                  + " ".join(f"{lj.item():.3f}" for lj in losses)
                  + f"  {time.time() - t0:.0f}s", flush=True)
    return {k: v.detach() for k, v in w.items()}


# --------------------------------------------------------------------------- checkpoint

# Gain carried by the output norms (see rescale_output_norms).
NORM_SCALE = 8.0


def rescale_output_norms(w: dict[str, torch.Tensor], s: float = NORM_SCALE) -> dict[str, torch.Tensor]:
    """A function-preserving reparametrization: the gain (1 + w) of the target's final norm and
    of the MTP's output norm times s, lm_head / s. Target logits and drafts are unchanged (the
    MTP re-normalizes both hidden inputs with pre_fc_norm_hidden), but the hidden states handed
    to the drafter now have RMS ~s instead of ~1, so a drafter that skips pre_fc_norm_hidden (or
    takes the hidden state before the final norm) sees inputs at the wrong scale. After plain
    training the gains stay near 1 and such a bug would be invisible on this fixture."""
    w = dict(w)
    for k in ("model.norm.weight", "mtp.norm.weight"):
        w[k] = (1.0 + w[k]) * s - 1.0
    w["lm_head.weight"] = w["lm_head.weight"] / s  # s a power of two: exact in bf16
    return w



def state_dict_vllm(w: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Stacked experts -> the per-expert names vLLM (and the Qwen3-Next release) use:
    `...mlp.experts.{e}.gate_proj/up_proj/down_proj.weight`; bf16."""
    out = {}
    for k, v in w.items():
        if k.endswith("mlp.experts.w13"):
            base, I = k[: -len("w13")], v.shape[1] // 2
            for e in range(v.shape[0]):
                out[f"{base}{e}.gate_proj.weight"] = v[e, :I]
                out[f"{base}{e}.up_proj.weight"] = v[e, I:]
        elif k.endswith("mlp.experts.w2"):
            base = k[: -len("w2")]
            for e in range(v.shape[0]):
                out[f"{base}{e}.down_proj.weight"] = v[e]
        else:
            out[k] = v
    return {k: v.detach().to(torch.bfloat16).contiguous() for k, v in sorted(out.items())}


def save(sd: dict[str, torch.Tensor], out: pathlib.Path, config: dict) -> None:
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def qwen3_5_twin(sd: dict[str, torch.Tensor], config: dict = CONFIG
                 ) -> tuple[dict[str, torch.Tensor], dict]:
    """The same network in the Qwen3.5 text layout (Qwen3_5MoeForCausalLM + MTP): the Gated
    DeltaNet input projection split into in_proj_qkv / in_proj_z / in_proj_b / in_proj_a with
    q, k, v (and z, b, a) each contiguous instead of grouped per key head (vLLM's
    non-interleaved GDN layout); experts, attention, norms and MTP keep their names. Loadable
    only by the CUDA vLLM build (its Qwen3.5 model file imports the VL processor ->
    torchvision); transformers' Qwen3_5MoeForCausalLM loads it on CPU."""
    c = config
    nk, nv = c["linear_num_key_heads"], c["linear_num_value_heads"]
    dk, dv = c["linear_key_head_dim"], c["linear_value_head_dim"]
    r = nv // nk
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        if k.endswith("linear_attn.in_proj_qkvz.weight"):
            base = k[: -len("in_proj_qkvz.weight")]
            g = v.view(nk, 2 * dk + 2 * r * dv, -1)  # grouped per key head
            q, kk, vv, z = torch.split(g, [dk, dk, r * dv, r * dv], dim=1)
            out[base + "in_proj_qkv.weight"] = torch.cat(
                [q.reshape(nk * dk, -1), kk.reshape(nk * dk, -1), vv.reshape(nv * dv, -1)])
            out[base + "in_proj_z.weight"] = z.reshape(nv * dv, -1).contiguous()
        elif k.endswith("linear_attn.in_proj_ba.weight"):
            base = k[: -len("in_proj_ba.weight")]
            g = v.view(nk, 2 * r, -1)
            b, a = torch.split(g, [r, r], dim=1)
            out[base + "in_proj_b.weight"] = b.reshape(nv, -1).contiguous()
            out[base + "in_proj_a.weight"] = a.reshape(nv, -1).contiguous()
        else:
            out[k] = v
    # Qwen3.5 checkpoints carry the language model under model.language_model for the VL
    # wrapper; the text-only Qwen3_5MoeForCausalLM reads model.* like Qwen3-Next.
    text = {k: c[k] for k in (
        "vocab_size", "hidden_size", "num_hidden_layers", "layer_types", "full_attention_interval",
        "num_attention_heads", "num_key_value_heads", "head_dim", "max_position_embeddings",
        "linear_conv_kernel_dim", "linear_key_head_dim", "linear_value_head_dim",
        "linear_num_key_heads", "linear_num_value_heads", "num_experts", "num_experts_per_tok",
        "moe_intermediate_size", "shared_expert_intermediate_size", "hidden_act",
        "rms_norm_eps", "attention_bias", "tie_word_embeddings", "bos_token_id", "eos_token_id")}
    text.update(
        model_type="qwen3_5_moe_text", architectures=["Qwen3_5MoeForCausalLM"],
        rope_parameters={"rope_type": "default", "rope_theta": c["rope_theta"],
                         "partial_rotary_factor": c["partial_rotary_factor"],
                         # rotary dim 16 = 8 frequencies over (t, h, w); text positions
                         # are equal on all three axes, so this is plain 1-D rotary
                         "mrope_section": [2, 3, 3], "mrope_interleaved": True},
        partial_rotary_factor=c["partial_rotary_factor"], rope_theta=c["rope_theta"],
        attn_output_gate=True, mtp_num_hidden_layers=1, num_nextn_predict_layers=1,
        router_aux_loss_coef=0.001, norm_topk_prob=True, torch_dtype="bfloat16", dtype="bfloat16")
    return dict(sorted(out.items())), text


# --------------------------------------------------------------------------- golden data


def golden_figures(out: pathlib.Path = OUT) -> dict:
    """The fp64 oracle's greedy streams and speculative acceptance (k = 1, 2, 3) on the held-out
    prompts: golden.json without its timing."""
    from reference.target_model import TinyQwen3Next, speculative_acceptance

    m = TinyQwen3Next.load(out)
    prompts = eval_prompts()
    golden: dict = {"prompts": prompts, "max_tokens": EVAL_NEW_TOKENS, "by_k": {}}
    # 3 tokens past max_tokens: the last speculative step may verify drafts beyond it
    greedy = [m.greedy(p, EVAL_NEW_TOKENS + 3) for p in prompts]
    golden["min_margin"] = round(min(min(g.margins[:EVAL_NEW_TOKENS]) for g in greedy), 4)
    for k in (1, 2, 3):
        st = speculative_acceptance(m, prompts, [g.tokens for g in greedy], k, EVAL_NEW_TOKENS)
        golden["by_k"][str(k)] = {
            "num_drafts": st.num_drafts, "num_draft_tokens": st.num_draft_tokens,
            "num_accepted_tokens": st.num_accepted_tokens,
            "num_accepted_tokens_per_pos": st.num_accepted_tokens_per_pos,
            "per_position_rate": [round(x, 4) for x in st.per_position_rate],
            "mean_acceptance_length": round(st.mean_acceptance_length, 4),
        }
    return golden


def write_golden(out: pathlib.Path = OUT) -> dict:
    """Measure the fp64 oracle on the held-out prompts and store the figures as golden data."""
    t0 = time.time()
    golden = golden_figures(out)
    for k, row in golden["by_k"].items():
        print(f"k={k}: per-position {row['per_position_rate']} "
              f"mean acceptance length {row['mean_acceptance_length']:.3f}")
    print(f"min_margin {golden['min_margin']}")
    golden["oracle_seconds"] = round(time.time() - t0, 1)
    (out / "golden.json").write_text(json.dumps(golden, indent=1) + "\n")
    return golden


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fixture", choices=sorted(FIXTURES), default="default",
                    help="default: tiny_qwen3_next (+ tiny_qwen3_5); tp2: tiny_qwen3_next_tp2")
    ap.add_argument("--steps", type=int, default=None, help="default: the fixture's")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=80)
    ap.add_argument("--lr", type=float, default=None, help="default: the fixture's")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--golden", action="store_true", help="only recompute golden.json")
    args = ap.parse_args()
    spec = FIXTURES[args.fixture]
    torch.set_num_threads(args.threads)
    if not args.golden:
        t0 = time.time()
        w = train(spec.steps if args.steps is None else args.steps, args.batch, args.seq,
                  spec.lr if args.lr is None else args.lr, spec=spec)
        sd = state_dict_vllm(rescale_output_norms(w))
        save(sd, spec.out, spec.config)
        if spec.twin is not None:
            sd35, cfg35 = qwen3_5_twin(sd, spec.config)
            save(sd35, ROOT / spec.twin, cfg35)
        print(f"trained and saved in {time.time() - t0:.0f}s")
    write_golden(spec.out)


if __name__ == "__main__":
    main()
