"""The committed tiny trained fixtures as data, and the parallel-layout rule the engine backend
uses to pick one (tools.train_tiny_mtp.parallel_capable).

  config           each folder's config.json is, byte for byte, what the training script writes
                   for its FixtureSpec (the default fixture's config is untouched by the refactor)
  checkpoint       names and shapes are exactly those the script makes for that config; the fp64
                   oracle loads them
  TP-2 layout      tiny_qwen3_next_tp2 splits every head and expert count over 2 ranks, with
                   32-multiple expert shards; parallel_capable rejects tiny_qwen3_next at tp 2
                   (1 Gated DeltaNet key head) and accepts tiny_qwen3_next_tp2 at tp 2 / ep 2
  golden           golden.json meets the training targets; the live oracle reproduces the TP-2
                   fixture's golden.json (tiny_qwen3_next's: suites/e2e/test_golden.py)
"""

from __future__ import annotations

import json

import pytest
from safetensors import safe_open

from tools.train_tiny_mtp import (
    CONFIG,
    CONFIG_TP2,
    EVAL_NEW_TOKENS,
    FIXTURES,
    eval_prompts,
    init_weights,
    parallel_capable,
    state_dict_vllm,
)

KEYS = sorted(FIXTURES)  # ["default", "tp2"]
# Training targets (fixtures/tiny_qwen3_next/README.md): with 3 speculative tokens.
TARGET_POS0 = 0.6
TARGET_MEAN_ACCEPTANCE_LENGTH = 2.0


def _ids(key: str) -> str:
    return FIXTURES[key].name


@pytest.mark.parametrize("key", KEYS, ids=_ids)
def test_config_json_is_the_scripts_config(key):
    spec = FIXTURES[key]
    committed = (spec.out / "config.json").read_text()
    assert committed == json.dumps(spec.config, indent=2, sort_keys=True) + "\n", (
        f"{spec.out}/config.json differs from FIXTURES[{key!r}].config in "
        "tools/train_tiny_mtp.py")


@pytest.mark.parametrize("key", KEYS, ids=_ids)
def test_checkpoint_names_and_shapes(key):
    from reference.target_model import TinyConfig, TinyQwen3Next

    spec = FIXTURES[key]
    c = TinyConfig.from_dict(spec.config)
    want = {k: tuple(v.shape) for k, v in state_dict_vllm(init_weights(c, spec.name)).items()}
    with safe_open(str(spec.out / "model.safetensors"), "pt") as f:
        got = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
    assert sorted(got) == sorted(want), (
        f"names: missing {sorted(set(want) - set(got))[:5]}, extra {sorted(set(got) - set(want))[:5]}")
    bad = {k: (got[k], want[k]) for k in want if got[k] != want[k]}
    assert not bad, f"shape (checkpoint, config) mismatch: {bad}"
    m = TinyQwen3Next.load(spec.out)
    E, I, H = c.num_experts, c.moe_intermediate_size, c.hidden_size
    assert m.w["model.layers.0.mlp.experts.w13"].shape == (E, 2 * I, H)
    assert m.w["mtp.layers.0.mlp.experts.w2"].shape == (E, H, I)


def test_tp2_fixture_splits_over_two_ranks():
    cfg = json.loads((FIXTURES["tp2"].out / "config.json").read_text())
    for field in ("linear_num_key_heads", "linear_num_value_heads", "num_attention_heads",
                  "num_key_value_heads", "num_experts"):
        assert cfg[field] % 2 == 0, (
            f"tiny_qwen3_next_tp2: {field}={cfg[field]} is not divisible by 2, so vLLM cannot "
            "split it over tensor_parallel_size 2 / expert-parallel 2")
    for field in ("moe_intermediate_size", "shared_expert_intermediate_size"):
        assert cfg[field] % 2 == 0 and (cfg[field] // 2) % 32 == 0, (
            f"tiny_qwen3_next_tp2: {field}={cfg[field]} does not give a multiple of 32 per rank "
            "at tensor_parallel_size 2 (the CPU MoE kernels' tile)")
    for field in ("head_dim", "linear_key_head_dim", "linear_value_head_dim"):
        assert cfg[field] == 64, f"{field}={cfg[field]}: vLLM's CPU attention/GDN kernels want 64"
    assert cfg["num_nextn_predict_layers"] == 1


@pytest.mark.parametrize(("config", "tp", "ep", "needles"), [
    pytest.param(CONFIG, 1, 1, [], id="default-tp1"),
    pytest.param(CONFIG, 1, 2, [], id="default-ep2"),
    pytest.param(CONFIG, 2, 1, ["linear_num_key_heads=1 "], id="default-tp2"),
    pytest.param(CONFIG, 2, 2, ["linear_num_key_heads=1 "], id="default-tp2-ep2"),
    pytest.param(CONFIG_TP2, 1, 1, [], id="tp2-tp1"),
    pytest.param(CONFIG_TP2, 2, 1, [], id="tp2-tp2"),
    pytest.param(CONFIG_TP2, 2, 2, [], id="tp2-tp2-ep2"),
    pytest.param(CONFIG_TP2, 1, 2, [], id="tp2-ep2"),
    # tp 4: 2 key heads do not split, experts shard to 16 (2 KV heads are replicated: allowed)
    pytest.param(CONFIG_TP2, 4, 1, ["linear_num_key_heads=2 ", "gives 16 per rank"],
                 id="tp2-tp4"),
    pytest.param({**CONFIG_TP2, "num_key_value_heads": 3}, 2, 1, ["num_key_value_heads=3"],
                 id="kv3-tp2"),
    pytest.param({**CONFIG_TP2, "num_experts": 6}, 1, 4, ["num_experts=6"], id="e6-ep4"),
    pytest.param(CONFIG_TP2, 16, 1, ["linear_num_key_heads=2 ", "linear_num_value_heads=4 ",
                                     "num_attention_heads=4 ", "greater than num_experts=8",
                                     "gives 4 per rank"], id="tp16"),
    pytest.param({**CONFIG_TP2, "moe_intermediate_size": 96}, 2, 1, ["gives 48 per rank"],
                 id="i96-tp2"),
    pytest.param({**CONFIG_TP2, "moe_intermediate_size": 96}, 2, 2, [], id="i96-tp2-ep2"),
    pytest.param({**CONFIG_TP2, "shared_expert_intermediate_size": 63}, 2, 1,
                 ["shared_expert_intermediate_size=63"], id="shared63-tp2"),
    pytest.param(CONFIG_TP2, 0, 1, ["must be >= 1"], id="tp0"),
])
def test_parallel_capable(config, tp, ep, needles):
    why = parallel_capable(config, tp, ep)
    if not needles:
        assert why == [], f"tp={tp} ep={ep} rejected: {why}"
    for needle in needles:
        assert any(needle in r for r in why), f"tp={tp} ep={ep}: no reason with {needle!r} in {why}"
    assert len(why) == len(needles), f"tp={tp} ep={ep}: unexpected reasons in {why}"


@pytest.mark.parametrize("key", KEYS, ids=_ids)
def test_golden_meets_training_targets(key):
    spec = FIXTURES[key]
    golden = json.loads((spec.out / "golden.json").read_text())
    assert golden["prompts"] == eval_prompts() and golden["max_tokens"] == EVAL_NEW_TOKENS
    k3 = golden["by_k"]["3"]
    assert k3["per_position_rate"][0] >= TARGET_POS0, k3
    assert k3["mean_acceptance_length"] >= TARGET_MEAN_ACCEPTANCE_LENGTH, k3
    assert golden["min_margin"] > 0


@pytest.mark.usefixtures("oracle_one_thread")
def test_oracle_reproduces_tp2_golden():
    """golden.json of tiny_qwen3_next_tp2 is what the live fp64 oracle measures (~10 s)."""
    from tools.train_tiny_mtp import golden_figures

    spec = FIXTURES["tp2"]
    stored = json.loads((spec.out / "golden.json").read_text())
    live = golden_figures(spec.out)
    assert live["prompts"] == stored["prompts"]
    for k, row in stored["by_k"].items():
        got = live["by_k"][k]
        for field in ("num_drafts", "num_draft_tokens", "num_accepted_tokens",
                      "num_accepted_tokens_per_pos"):
            assert got[field] == row[field], f"k={k} {field}: oracle {got[field]}, golden {row[field]}"
    assert live["min_margin"] == pytest.approx(stored["min_margin"], abs=2e-4)
