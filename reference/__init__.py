"""Oracles: plain PyTorch, float64 by default, one concept per file, no vLLM import.

routing.py   routers (softmax top-k, grouped top-k, DeepSeek-V3 noaux_tc, gpt-oss)
experts.py   routed experts: gated activations and the grouped expert computation
moe.py       the sparse MoE block: config, weights, router + experts + shared expert
"""
