"""MoE suites: experts kernels and routers held to reference/ and to invariants."""
