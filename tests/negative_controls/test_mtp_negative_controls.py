"""The MTP module properties (suites/mtp/test_mtp_modules.py) must catch the wiring bugs an MTP
model file or its loader can have. Each is planted in vLLM's real module after its weights are
loaded (suites/backends/vllm/mtp.py `tampered`), in float32 and bfloat16, in each module that
has the part (Qwen3NextMTP, Qwen3.5's Qwen3_5MoeMTP, DeepSeekMTP):

  norms swapped          pre_fc_norm_embedding <-> pre_fc_norm_hidden (Qwen), enorm <-> hnorm
                         (DeepSeek)
  concat order swapped   fc / eh_proj applied to cat[h, e] instead of cat[e, h]
  final norm not loaded  Qwen: mtp.norm.weight left at its initial value
  head tied by mistake   the embedding used as the output head
  position-0 mask lost   DeepSeek: the embedding at position 0 reaches enorm unmasked
  pre-norm fed back      DeepSeek: the drafter handed the pre-norm state (the report's h_i^k)
                         where vLLM 0.32 feeds back the normed one; and the other way round, a
                         backend declaring the pre-norm convention is held to it and fails

The clean module passes on the same problems (so the catches are the bugs, not the problems).
"""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from fixtures.strategies import MTPProblem
from suites.mtp.module_checks import check_mtp_chain, check_mtp_step

# The vLLM MTP modules and the family of each (Qwen3.5's predictor is a Qwen3-Next-family
# module built from qwen3_5_mtp.py's own classes).
MODULE_FAMILY = {"vllm.qwen3_next_mtp": "qwen3_next", "vllm.qwen3_5_mtp": "qwen3_next",
                 "vllm.deepseek_mtp": "deepseek_v3"}


def _problems(family):
    return [
        MTPProblem(H=64, heads=4, kv_heads=2, head_dim=16, E=8, K=2, I=32, V=97, T=6, k=2,
                   seed=1, dtype="float32", family=family),
        MTPProblem(H=128, heads=8, kv_heads=2, head_dim=32, E=16, K=4, I=64, V=200, T=12, k=3,
                   seed=2, dtype="bfloat16", family=family),
    ]


@pytest.fixture(scope="module", params=sorted(MODULE_FAMILY))
def vllm_mtp(request):
    from suites.backends import REGISTRY

    b = REGISTRY.get(request.param)
    if reason := b.unavailable_reason():
        pytest.skip(reason)
    return b


def _inner(model):
    """The predictor layer that holds the norms and the projection."""
    return model.model if hasattr(model.model, "fc") else next(iter(model.model.layers.values()))


def _swap_norms(model):
    m = _inner(model)
    a, b = (m.pre_fc_norm_embedding, m.pre_fc_norm_hidden) if hasattr(m, "fc") else (m.enorm, m.hnorm)
    w = a.weight.detach().clone()
    a.weight.copy_(b.weight)
    b.weight.copy_(w)


def _swap_concat(model):
    m = _inner(model)
    proj = m.fc if hasattr(m, "fc") else m.eh_proj
    H = proj.weight.shape[0]
    proj.weight.copy_(torch.cat([proj.weight[:, H:], proj.weight[:, :H]], 1).clone())


def _final_norm_unloaded(model):
    model.model.norm.weight.zero_()  # Qwen3NextRMSNorm's initial value (applied as 1 + w)


def _tied_head(model):
    if hasattr(model, "lm_head"):
        head, emb = model.lm_head, model.model.embed_tokens
    else:
        head, emb = _inner(model).shared_head.head, model.model.embed_tokens
    head.weight.copy_(emb.weight)


def _unmask_position_0(model):
    layer = _inner(model)
    seen = {}

    def grab(mod, args, kwargs):
        seen["embeds"], seen["positions"] = args[3], args[1]

    def unmask(mod, args):
        if args[0].shape == seen["embeds"].shape and (seen["positions"] == 0).any():
            return (seen["embeds"],)
        return None

    layer.register_forward_pre_hook(grab, with_kwargs=True)
    layer.enorm.register_forward_pre_hook(unmask)


def _feed_pre_norm(out):
    return dataclasses.replace(out, fed_back=out.pre_norm)


BUGS = {
    "norms swapped": (_swap_norms, None, ("qwen3_next", "deepseek_v3")),
    "concat order swapped": (_swap_concat, None, ("qwen3_next", "deepseek_v3")),
    "final norm not loaded": (_final_norm_unloaded, None, ("qwen3_next",)),
    "head tied by mistake": (_tied_head, None, ("qwen3_next", "deepseek_v3")),
    "position-0 mask lost": (_unmask_position_0, None, ("deepseek_v3",)),
    "pre-norm fed back": (None, _feed_pre_norm, ("deepseek_v3",)),
}


def _caught(backend, p) -> str | None:
    """The assertion the suite raises on p (step or chain), or None if both pass."""
    inputs = p.tensors()
    try:
        handle = backend.prepare(p, inputs)
        check_mtp_step(backend, p, inputs, handle)
        check_mtp_chain(backend, p, inputs, handle)
    except AssertionError as e:
        return str(e)
    return None


def test_clean_module_passes(vllm_mtp):
    """...and compares most rows and every chained step (a catch is not a vacuous pass)."""
    for p in _problems(vllm_mtp.family):
        assert _caught(vllm_mtp, p) is None, _caught(vllm_mtp, p)
        step, chain = check_mtp_step(vllm_mtp, p), check_mtp_chain(vllm_mtp, p)
        assert step.compared == step.drawn == p.T and chain.steps == p.k, (p.describe(), step, chain)
        assert chain.compared == chain.drawn, (p.describe(), chain)


@pytest.mark.parametrize(("vllm_mtp", "bug"),  # each bug in the modules that have its part
                         [(m, bug) for bug in sorted(BUGS) for m in sorted(MODULE_FAMILY)
                          if MODULE_FAMILY[m] in BUGS[bug][2]], indirect=["vllm_mtp"])
def test_planted_bug_is_caught(vllm_mtp, bug):
    from suites.backends.vllm.mtp import tampered

    fn, output, _ = BUGS[bug]
    with tampered(vllm_mtp, fn, output):
        for p in _problems(vllm_mtp.family):
            msg = _caught(vllm_mtp, p)
            assert msg is not None, f"{bug} not caught on {p.describe()}"


def test_declared_convention_is_held(vllm_mtp):
    """A backend that says it feeds back the pre-norm state is compared under that convention:
    vLLM 0.32's DeepSeekMTP (normed) fails it. Qwen3-Next's predictor has no pre-norm output:
    the oracle refuses to pretend."""
    wrong = copy.copy(vllm_mtp)
    wrong.feeds_back = "pre_norm" if vllm_mtp.feeds_back == "normed" else "normed"
    p = _problems(vllm_mtp.family)[0]
    if vllm_mtp.family == "qwen3_next":
        with pytest.raises(ValueError, match="exposes only its normed output"):
            check_mtp_step(wrong, p)
    else:
        with pytest.raises(AssertionError, match="fed-back hidden"):
            check_mtp_step(wrong, p)
