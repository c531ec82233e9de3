"""Oracles: plain PyTorch, float64 by default, one concept per file, no vLLM import.

routing.py       routers (softmax top-k, grouped top-k, DeepSeek-V3 noaux_tc, gpt-oss)
experts.py       routed experts: gated activations and the grouped expert computation
moe.py           the sparse MoE block: config, weights, router + experts + shared expert
expert_parallel.py  expert placement over EP ranks (vLLM's linear / round_robin, redundant
                 experts) and the routed experts / shared-expert slices each rank computes
speculative.py   speculative sampling (Leviathan et al. / Chen et al. 2023), vLLM's target
                 processing, closed forms for small vocabularies
acceptance.py    acceptance metrics with vLLM's definitions
layers.py        RMSNorm (plain, zero-centred), partial rotary, gated attention, decoder layer
mtp.py           MTP modules (Qwen3-Next / Qwen3.5, DeepSeek-V3) and k-step draft chaining
target_model.py  the tiny Qwen3-Next fixture's full forward in fp64, greedy decoding with
                 margins, greedy speculative decoding with per-position acceptance
"""
