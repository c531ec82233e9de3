"""Minimal repros of the known-failure ledger (suites/known_failures.py), strict xfail with the
entry's `raises` (its failure, nothing else): when vLLM fixes a defect, its repro passes
unexpectedly and the run fails until the entry is removed; a repro that fails another way (an
API renamed, a child process that died of something else) fails as what it is."""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re
import subprocess
import sys
import textwrap

import pytest
import torch

from suites.backends import REGISTRY
from suites.backends.base import reason_of
from suites.known_failures import LEDGER, installed_release
from suites.properties import experts as experts_properties

ENTRIES = {e.id: e for e in LEDGER}
pytestmark = [pytest.mark.moe, pytest.mark.ledger_repro, pytest.mark.interp_ci]


def known(*entry_ids: str, **how) -> pytest.MarkDecorator:
    """The strict xfail of the entry that applies to the vLLM installed (its `releases`);
    `how` (raises, match) where the repro's failure is not the property tests' (a repro one
    level below them). Several ids: entries whose releases do not overlap (a defect that masks
    another in some releases). Where none applies (before the defect came in, after its fix)
    the repro is an ordinary test that must pass, marked ledger_inactive."""
    release = installed_release()
    active = [e for e in (dataclasses.replace(ENTRIES[i], **how) for i in entry_ids)
              if e.applies_to(release)]
    if len(active) > 1:
        raise ValueError(f"ledger entries {[e.id for e in active]} both apply to vLLM {release}")
    if not active:
        return pytest.mark.ledger_inactive(*entry_ids, release=release)
    return active[0].xfail()


def _needs(name: str):
    reason = reason_of(REGISTRY.get(name))
    if reason:
        pytest.skip(f"{name}: {reason}")
    return REGISTRY.get(name)


def _child(code: str) -> subprocess.CompletedProcess:
    """Run a quarantined repro in a child Python with this repository on its path."""
    root = pathlib.Path(__file__).resolve().parents[1]
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, cwd=root, env={**os.environ, "PYTHONPATH": str(root)})


@known("cpu-router-bf16-softmax")
def test_cpu_router_bf16_logits_weights_in_fp32():
    from reference.routing import RouterConfig, route

    router = _needs("cpu_router")
    logits = torch.tensor([[0.30078125, -1.2265625, 0.8515625, 0.10009765625]]).bfloat16()
    cfg = RouterConfig(num_experts=4, num_experts_per_tok=2)
    out_w, out_ids = router.route(logits, cfg)
    ref_w, ref_ids = route(logits.double(), cfg)
    assert sorted(out_ids[0].tolist()) == sorted(ref_ids[0].tolist())
    order_o, order_r = torch.argsort(out_ids[0]), torch.argsort(ref_ids[0])
    err = (out_w[0, order_o].double() - ref_w[0, order_r]).abs().max().item()
    assert err < 1e-6, f"routing weights off by {err:.3e} (fp32 would be < 1e-7)"


@known("cpu-router-bf16-logsumexp")
def test_cpu_router_without_renormalization_keeps_weights_within_bf16_rounding():
    from reference.routing import RouterConfig, route

    router = _needs("cpu_router")
    # Large but ordinary logits (a trained router's spread): logZ ~ 12.6 in bf16 is off by up
    # to 0.03, and so is the log of every routed weight.
    logits = torch.tensor([[12.0, 11.5, 3.0, -2.0, 10.75, 0.5, 1.0, -7.0]]).bfloat16()
    cfg = RouterConfig(num_experts=8, num_experts_per_tok=2, norm_topk_prob=False)
    out_w, out_ids = router.route(logits, cfg)
    ref_w, ref_ids = route(logits.double(), cfg)
    assert sorted(out_ids[0].tolist()) == sorted(ref_ids[0].tolist())
    order_o, order_r = torch.argsort(out_ids[0]), torch.argsort(ref_ids[0])
    rel = ((out_w[0, order_o].double() - ref_w[0, order_r]) / ref_w[0, order_r]).abs().max()
    # 5e-3: beyond rounding the weights themselves to bf16 (cpu-router-bf16-softmax, ~2e-3).
    assert rel.item() < 5e-3, f"routing weights off by {rel.item():.3e} relative"


@known("router-sigmoid-renorm-zero-sum-nan")
@pytest.mark.parametrize("name", ["cpu_router",
                                  pytest.param("triton.router.interp", marks=pytest.mark.triton)])
def test_sigmoid_grouped_router_weights_finite_when_selected_scores_underflow(name):
    from reference.routing import RouterConfig, route

    router = _needs(name)
    # The nightly case, minimal: the correction bias selects expert 1, whose logit -98.2 has
    # an fp32 sigmoid of exactly 0 (1 / (1 + exp(98.2)), exp overflows).
    logits = torch.tensor([[-3.45, -98.2]])
    bias = torch.tensor([-0.025, 0.011])
    cfg = RouterConfig(num_experts=2, num_experts_per_tok=1, topk_method="noaux_tc",
                       scoring_func="sigmoid", norm_topk_prob=True, n_group=1, topk_group=1)
    out_w, out_ids = router.route(logits, cfg, bias)
    ref_w, ref_ids = route(logits.double(), cfg, bias)
    assert out_ids.tolist() == ref_ids.tolist() == [[1]]
    w = float(out_w[0, 0])
    # exact renormalization: 1.0; transformers' DeepseekV3TopkRouter (+1e-20): 0.0
    assert w == 0.0 or abs(w - float(ref_w[0, 0])) < 1e-6, f"routed weight {w}, oracle 1.0 or 0"


@known("cpu-fused-moe-no-id-bounds-check")
def test_cpu_fused_moe_invalid_id_is_refused_not_corrupting():
    _needs("cpu_fused_moe.vec")
    # Quarantined: the corruption can abort the interpreter, so it runs in a child process.
    code = textwrap.dedent("""
        import torch
        import vllm
        from vllm import _custom_ops as ops
        from suites.backends.vllm.releases import CPU_FUSED_MOE, op_and_style
        op, style = op_and_style(CPU_FUSED_MOE, vllm.__version__)  # the release's convention
        torch.manual_seed(0)
        T, H, I, E, K = 33, 256, 128, 8, 2
        x = torch.randn(T, H).bfloat16()
        w13 = (torch.randn(E, 2 * I, H) * 0.05).bfloat16()
        w2 = (torch.randn(E, H, I) * 0.05).bfloat16()
        tw = torch.full((T, K), 0.5)
        ti = torch.randint(0, E, (T, K)).int()
        ti[0, 0] = -1
        out = torch.zeros(T, H, dtype=torch.bfloat16)
        args = (x, ops.cpu_prepack_moe_weight(w13, "vec"), ops.cpu_prepack_moe_weight(w2, "vec"),
                None, None, tw, ti, "silu", "vec")
        try:
            op(out, *args) if style == "out" else op(*args)
        except RuntimeError as e:
            print("REFUSED", str(e).splitlines()[0])
        else:
            print("ACCEPTED")
        for _ in range(50):  # allocator churn makes heap corruption surface
            torch.empty(1 << 20).add_(1)
    """)
    proc = _child(code)
    text = proc.stdout + proc.stderr
    tail = text.strip().splitlines()[-3:]
    if re.search(r"REFUSED .*(Expected a value of type|argument|positional)", proc.stdout):
        # a call that does not fit the op's signature is no refusal of the id (it read as a
        # fix on 0.27.0 before the adapter knew that release's convention)
        pytest.fail(f"the call did not fit cpu_fused_moe's signature: {tail}", pytrace=False)
    if proc.returncode == 0 and "REFUSED" in proc.stdout:
        return  # the kernel refuses the id: fixed
    # the known failure: the kernel ran on the invalid id, or the process died of the corruption
    ran = "ACCEPTED" in proc.stdout
    died = proc.returncode < 0 or re.search(r"double free|corruption|Segmentation fault", text)
    if not (ran or died):  # e.g. cpu_fused_moe renamed or re-signatured: not the ledgered bug
        pytest.fail(f"child failed otherwise (exit {proc.returncode}), not the known failure: "
                    f"{tail}", pytrace=False)
    raise AssertionError(f"child exited {proc.returncode}; a kernel given topk_id -1 must "
                         f"raise, not run: {tail}")


@known("cpu-fused-moe-amx-no-tile-permission")
def test_cpu_fused_moe_amx_runs_in_a_fresh_process():
    _needs("cpu_fused_moe.amx")  # skips where the CPU has no AMX tiles
    # Quarantined: the child dies of SIGILL. Nothing in it asks for the AMX tile state first
    # (no oneDNN GEMM, no torch.cpu._init_amx): a kernel that uses the tiles must ask itself.
    code = textwrap.dedent("""
        import torch
        import vllm
        from vllm import _custom_ops as ops
        from suites.backends.vllm.releases import CPU_FUSED_MOE, op_and_style
        op, style = op_and_style(CPU_FUSED_MOE, vllm.__version__)
        torch.manual_seed(0)
        T, H, I, E, K = 4, 224, 64, 8, 2
        x = torch.randn(T, H).bfloat16()
        w13 = (torch.randn(E, 2 * I, H) * 0.05).bfloat16()
        w2 = (torch.randn(E, H, I) * 0.05).bfloat16()
        tw = torch.full((T, K), 0.5)
        ti = torch.randint(0, E, (T, K)).int()
        out = torch.zeros(T, H, dtype=torch.bfloat16)
        args = (x, ops.cpu_prepack_moe_weight(w13, "amx"), ops.cpu_prepack_moe_weight(w2, "amx"),
                None, None, tw, ti, "silu", "amx")
        print("PREPACKED", flush=True)
        r = op(out, *args) if style == "out" else op(*args)
        print("RAN", bool(torch.isfinite((out if style == "out" else r).float()).all()))
    """)
    proc = _child(code)
    tail = (proc.stdout + proc.stderr).strip().splitlines()[-3:]
    if proc.returncode == 0 and "RAN True" in proc.stdout:
        return  # the kernel asks for the tiles itself: fixed
    if proc.returncode == -4 and "PREPACKED" in proc.stdout:  # SIGILL in the call: the defect
        raise AssertionError("cpu_fused_moe(isa='amx') in a process that did not ask for the "
                             "AMX tile state died of SIGILL (exit -4) at its first call")
    pytest.fail(f"child failed otherwise (exit {proc.returncode}), not the known failure: "
                f"{tail}", pytrace=False)


@known("cpu-fused-moe-amx-checks-abort", raises=AssertionError)
def test_cpu_fused_moe_amx_refuses_an_unaligned_hidden_size():
    _needs("cpu_fused_moe.amx")
    # Quarantined: the check inside the OpenMP region terminates the child (SIGABRT).
    code = textwrap.dedent("""
        import torch
        torch.cpu._init_amx()  # the tile state granted: only the shape is wrong
        from vllm import _custom_ops as ops
        E, H, I = 4, 48, 64  # H = 48: not a multiple of 32
        w13 = (torch.randn(E, 2 * I, H) * 0.05).bfloat16()
        try:
            ops.cpu_prepack_moe_weight(w13, "amx")
        except RuntimeError as e:
            print("REFUSED", str(e).splitlines()[0])
        else:
            print("ACCEPTED")
    """)
    proc = _child(code)
    text = proc.stdout + proc.stderr
    tail = text.strip().splitlines()[-3:]
    if proc.returncode == 0 and ("REFUSED" in proc.stdout or "ACCEPTED" in proc.stdout):
        return  # raises (or packs): the process survives an unsupported shape: fixed
    if proc.returncode == -6 and "Check failed" in text:  # the defect: abort in the check
        raise AssertionError("cpu_prepack_moe_weight(isa='amx') with H=48 terminated the "
                             "process (SIGABRT) instead of raising")
    pytest.fail(f"child failed otherwise (exit {proc.returncode}), not the known failure: "
                f"{tail}", pytrace=False)


@pytest.mark.mtp
@known("cpu-expand-batch-to-tokens-lost-write", "cpu-v1-sampler-dispatchers-skip-cpu-kernels")
@pytest.mark.parametrize("dtype", [torch.float32, torch.int32], ids=["float32", "int32"])
def test_cpu_expand_batch_to_tokens_writes_its_output(dtype):
    """Memory vLLM leaves unwritten is poisoned (NaN / int max), so the lost write is seen
    every run, never hidden by an allocation that happened to hold the right values."""
    _needs("vllm.rejection_sampler")  # puts the CPU kernels in place (releases.py)
    from vllm.v1.sample.rejection_sampler import expand_batch_to_tokens

    from suites.backends.vllm.rejection_sampler import poisoned_unwritten_memory

    cu_num_draft_tokens = torch.tensor([2, 3, 5], dtype=torch.int32)  # drafts 2, 1, 2
    per_request = torch.tensor([3, 5, 7]).to(dtype)
    with poisoned_unwritten_memory():
        out = expand_batch_to_tokens(per_request, cu_num_draft_tokens, 5)
    expected = torch.tensor([3, 3, 5, 7, 7]).to(dtype)
    assert torch.equal(out, expected), f"expanded {out.tolist()}, expected {expected.tolist()}"


@pytest.mark.mtp
@known("cpu-v1-sampler-dispatchers-skip-cpu-kernels")
def test_cpu_v1_sampler_verifies_a_greedy_draft():
    """One greedy request, drafts [2, 1] against target argmaxes [2, 0, 1]: vLLM's CPU
    rejection_sample must accept the first, replace the second with 0 and stop (the kernels
    run on CPU at all: in 0.30.0 the first kernel launch raises)."""
    from reference.speculative import SamplingParams, SpecBatch
    from suites.mtp.sampler_checks import check_greedy_exact

    backend = _needs("vllm.rejection_sample")  # puts the CPU kernels in place (releases.py)
    logits = torch.full((3, 4), -1.0)
    for row, token in enumerate((2, 0, 1)):
        logits[row, token] = 1.0
    batch = SpecBatch([[2, 1]], logits, [SamplingParams(temperature=0.0)])
    out = check_greedy_exact(backend, batch, 0, "one greedy request")
    assert out[0].tolist()[:2] == [2, 0], out.tolist()


@pytest.mark.mtp
@pytest.mark.triton
@known("v2-mtp-speculator-reads-state-pair-as-one-tensor")
def test_v2_mtp_speculator_drafts_from_a_state_pair():
    """Two requests, k = 2, a draft model returning (logits state, fed-back state) as DeepSeek's
    MTP layer does from 0.24.0: MTPSpeculator must draft from the first and feed back the
    second (reference/mtp.py's chain). (Two: with one request 0.24.0 indexes the tuple by a
    one-element tensor and fails later, differently.)"""
    from suites.mtp.speculator_checks import DraftRequest, SpeculatorProblem, check_draft_loop

    b = _needs("vllm.v2.mtp_speculator.interp")
    p = SpeculatorProblem((DraftRequest(2, 5, 0), DraftRequest(1, 9, 0)), k=2, seed=1,
                          pair=True)
    assert check_draft_loop(b, p).held_to_oracle == 2


@pytest.mark.mtp
@pytest.mark.triton
@known("v2-multi-module-mtp-drafts-with-module-0-head")
def test_v2_multi_module_speculator_drafts_step_s_with_module_s_head():
    """One request, two modules, k = 2: step 1's draft must come from module 1's logits (its
    own head), not module 0's."""
    from suites.mtp.speculator_checks import DraftRequest, SpeculatorProblem, check_draft_loop

    b = _needs("vllm.v2.multi_module_mtp_speculator.interp")
    p = SpeculatorProblem((DraftRequest(4, 10, 0),), k=2, num_modules=2, seed=2)
    assert check_draft_loop(b, p).held_to_oracle == 1


@pytest.mark.moe
@pytest.mark.triton
@known("triton-fp8-block-scalar-b-scale")
def test_triton_fp8_block_experts_at_the_default_tile():
    """fp8 w8a8 with 128 x 128 block scales through vLLM's Triton fused_moe_kernel at its
    default block config (BLOCK_SIZE_N = group_n): must match the oracle. In 0.34.0 the kernel
    indexes the scalar scale it loads there as a vector, and Triton refuses the program."""
    from fixtures.strategies import QuantExpertsProblem
    from reference import quant as Q
    from suites.moe import quant_checks

    b = _needs("triton.quant_experts.fp8_block.interp")
    p = QuantExpertsProblem(T=5, H=128, I=128, E=4, K=2, dtype="float16", routing="uniform",
                            scheme=Q.fp8_block(128, 128), seed=3)
    experts_properties.matches_oracle(quant_checks.QUANT_EXPERTS, b, p)


@known("cpu-fp8-w8a16-block-k-not-128-silently-wrong")
@pytest.mark.parametrize("block", [(128, 64), (64, 64), (128, 32)], ids=str)
def test_cpu_fp8_w8a16_block_k_not_128_refused_or_right(block):
    """The op given bk != 128 must refuse (RuntimeError) or be right; it is neither."""
    from dataclasses import replace

    from fixtures.strategies import QuantExpertsProblem
    from reference import quant as Q
    from suites.moe import quant_checks

    b = replace(_needs("fused_experts_cpu.fp8_w8a16"), fp8_blocks=(block,))  # past our refusal
    p = QuantExpertsProblem(T=9, H=256, I=128, E=4, K=2, dtype="bfloat16", routing="uniform",
                            scheme=Q.fp8_block(*block, quantize_activations=False), seed=3)
    try:
        experts_properties.matches_oracle(quant_checks.QUANT_EXPERTS, b, p)
    except RuntimeError:
        return  # a refusal is a fix


@known("cpu-fp8-w8a16-e4m3-zero-decode")
@pytest.mark.parametrize("code", [0.0, -0.0, 2.0 ** -9], ids=["zero", "negative_zero", "subnormal"])
def test_cpu_fp8_w8a16_decodes_e4m3_zero_and_subnormals(code):
    """W2 all one e4m3 code at block scale 1: the output must be code x sum(intermediate) (zero
    for a zero code); the kernel gives 2^-7 (1 + m/8) x sum(intermediate) instead."""
    from dataclasses import replace

    from fixtures.strategies import QuantExpertsProblem
    from reference import quant as Q
    from suites.moe import quant_checks

    b = _needs("fused_experts_cpu.fp8_w8a16")
    p = QuantExpertsProblem(T=4, H=128, I=128, E=1, K=1, dtype="bfloat16", routing="uniform",
                            scheme=Q.fp8_block(128, 128, False), seed=5)
    t = p.tensors()
    q2 = torch.full(t["w2"].q.shape, code).to(torch.float8_e4m3fn)
    t = dict(t, w2=replace(t["w2"], q=q2, scale=torch.ones_like(t["w2"].scale)))
    out = experts_properties.run(b, t).double()
    ref = quant_checks.oracle(t)
    one = quant_checks.oracle(dict(t, w2=replace(t["w2"], q=torch.ones_like(q2.float())
                                                 .to(torch.float8_e4m3fn))))  # code 1.0
    err = float((out - ref).abs().max())
    assert err <= 2.0 ** -8 * float(one.abs().max()), (
        f"W2 all e4m3 {code!r}: out[0, :4] {out[0, :4].tolist()}, expected {ref[0, :4].tolist()} "
        f"(sum of the intermediate x code; the kernel's equals sum x "
        f"{float(out[0, 0] / one[0, 0]):.6g})")


@pytest.mark.moe
@known("cpu-int4-moe-layer-hidden-not-128-gpu-path")
@pytest.mark.parametrize("fmt", ["gptq", "awq"])
def test_cpu_int4_moe_layer_hidden_not_128_builds_and_is_right(fmt):
    """A GPTQ / AWQ Qwen3-MoE layer at hidden 64 (CPUExpertsInt4 runs it at kernel level) must
    build on the CPU build and match the oracle; vLLM picks a CUDA-only method and raises."""
    from dataclasses import replace

    from fixtures.strategies import BlockProblem, QuantBlockProblem
    from reference import quant as Q
    from suites.moe.quant_checks import check_quant_block_matches_oracle

    b = replace(_needs(f"vllm.qwen3_moe_block.{fmt}"), hidden_multiple=32)  # past our refusal
    block = BlockProblem(E=8, K=2, H=64, I=64, Is=32, norm_topk_prob=True, T=5, gate_scale=4.0,
                         seed=1, family="qwen3_moe")
    p = QuantBlockProblem(block=block, scheme=Q.int4_w4a8(32, fmt == "awq"))
    check_quant_block_matches_oracle(b, p)


@known("cpu-dp-ep-all-gatherv-not-implemented", raises=NotImplementedError,
       match=r"^CpuCommunicator\.all_gatherv")
def test_cpu_communicator_all_gatherv_gathers():
    """What the MoE layer's DP/EP dispatch calls on CPU: all_gatherv of [hidden, weights, ids]
    over the EP group (one rank here: the gather is the input). Run in a child process, which
    owns its torch.distributed state."""
    code = textwrap.dedent("""
        import socket, torch, torch.distributed as dist
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0,
                                world_size=1)
        from vllm.distributed.device_communicators.cpu_communicator import CpuCommunicator
        comm = CpuCommunicator(dist.group.WORLD, unique_name="ep")
        x = [torch.ones(3, 4), torch.arange(3).float()]
        out = comm.all_gatherv(x, dim=0, sizes=[3])
        assert all(torch.equal(a, b) for a, b in zip(out, x)), out
    """)
    _needs("vllm.engine")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    if (r.returncode and r.stderr.rstrip().endswith("NotImplementedError")
            and re.search(r", in all_gatherv\n", r.stderr)):
        raise NotImplementedError("CpuCommunicator.all_gatherv (the known failure)")
    assert r.returncode == 0, r.stderr[-2000:]  # any other failure is not the ledgered one


@known("cpu-ep-experts-ignore-expert-map", raises=AssertionError)  # ids in range: runs, wrong
@pytest.mark.parametrize("name", ["vllm.qwen3_next_moe_block.ep2",
                                  "vllm.deepseek_v3_moe_block.ep2"])
def test_cpu_ep_rank_without_a_tokens_experts_adds_zero(name):
    """Every token routed to the two lowest experts rank 0 holds (ids inside both ranks' local
    range: nothing is read out of bounds): rank 1 must add exactly zero; vLLM's CPU experts
    read the global ids as rank 1's own local slots. Two worker processes (the EP group)."""
    from fixtures.strategies import BlockProblem, EPProblem
    from suites.moe.ep_checks import check_remote_zero

    b = _needs(name)
    block = BlockProblem(E=8, K=2, H=128, I=64, Is=64, norm_topk_prob=True, T=4, gate_scale=4.0,
                         seed=1, family=b.family)
    check_remote_zero(b, EPProblem(block=block, placement="linear", routing="one_rank"))


@known("qwen3_5-mtp-drafter-keeps-mrope", raises=AssertionError, match=None)  # its cause
def test_qwen3_5_mtp_drafter_positions_match_the_target():
    """The engine configuration of the tiny Qwen3.5 fixture with MTP (no engine started, in a
    child process: what vLLM's engine core builds): the drafter must use the target's kind of
    positions; vLLM 0.32 strips M-RoPE from the target only."""
    from suites.e2e.conftest import E2E_FIXTURES

    _needs("vllm.engine")
    _needs("vllm.qwen3_5_mtp")  # the Qwen3.5 files import here (the suite's vLLM plugin)
    code = textwrap.dedent(f"""
        from vllm.plugins import load_general_plugins
        load_general_plugins()
        from vllm.engine.arg_utils import EngineArgs
        vc = EngineArgs(model={str(E2E_FIXTURES["tiny_qwen3_5"][0])!r}, skip_tokenizer_init=True,
                        enforce_eager=True, dtype="bfloat16", enable_prefix_caching=False,
                        speculative_config={{"method": "mtp", "num_speculative_tokens": 1}}
                        ).create_engine_config()
        draft = vc.speculative_config.draft_model_config
        print(vc.model_config.uses_mrope, draft.uses_mrope, draft.architectures[0])
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]  # not the ledgered failure: fails as itself
    target, draft, arch = r.stdout.split()[-3:]
    assert arch == "Qwen3_5MoeMTP", r.stdout
    assert target == draft, (f"target uses_mrope {target}, drafter ({arch}) uses_mrope {draft}: "
                             "the drafter is fed positions of another kind than its target's")
