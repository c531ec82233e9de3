"""Checkpoint packings of 4-bit MoE weights: how the codes of reference/quant.py's canonical
layout (one code per weight, [E, N, K], N output rows, K input columns) sit in the tensors a
checkpoint ships. Written from the formats' definitions:

  mxfp4 (gpt-oss, OCP MX)  blocks  uint8 [E, N, K/2]: element 2j in the low nibble, 2j+1 in the
                                   high nibble (gpt-oss `weights.py`: lut[blk & 0x0F] -> even,
                                   lut[blk >> 4] -> odd)
                           scales  uint8 [E, N, K/32]: the e8m0 exponent codes as stored
  GPTQ (AutoGPTQ v1)       qweight int32 [E, K/8, N]: packed along K, row k // 8, bits
                                   4 * (k % 8) .. +3 (the lowest nibble is the first k)
                           qzeros  int32 [E, G, N/8]: packed along N the same way, each nibble
                                   holding z - 1 (the v1 format's offset: kernels add 1 back)
                           scales  [E, G, N]
  AWQ (AutoAWQ GEMM)       qweight int32 [E, K, N/8]: packed along N, nibble i of a word holds
                                   column AWQ_ORDER[i] of its group of 8 (interleaved order)
                           qzeros  int32 [E, G, N/8]: packed the same way, no offset
                           scales  [E, G, N]
The packers are exact bit manipulations; each has its unpacker and tests/oracles/test_reference_quant.py
checks them on hand-written words.
"""

from __future__ import annotations

import torch

AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)  # nibble i of an AWQ word holds column AWQ_ORDER[i]


def _to_int32(words: torch.Tensor) -> torch.Tensor:  # int64 words < 2^32 -> int32 bit pattern
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)


def _nibbles_to_words(codes: torch.Tensor) -> torch.Tensor:  # [..., n, 8] codes 0..15 -> [..., n]
    shifts = torch.arange(8, dtype=torch.int64) * 4
    return _to_int32((codes.to(torch.int64) << shifts).sum(-1))


def _words_to_nibbles(words: torch.Tensor) -> torch.Tensor:  # int32 [..., n] -> [..., n, 8] uint8
    shifts = torch.arange(8, dtype=torch.int64) * 4
    return ((words.to(torch.int64)[..., None] >> shifts) & 0xF).to(torch.uint8)


# --------------------------------------------------------------------------- mxfp4


def pack_mxfp4(codes: torch.Tensor) -> torch.Tensor:  # uint8 [..., K] (0..15) -> uint8 [..., K/2]
    if codes.shape[-1] % 2:
        raise ValueError(f"mxfp4 packs two elements per byte: K={codes.shape[-1]} is odd")
    c = codes.to(torch.uint8)
    return c[..., 0::2] | (c[..., 1::2] << 4)


def unpack_mxfp4(blocks: torch.Tensor) -> torch.Tensor:  # uint8 [..., K/2] -> uint8 [..., K]
    lo, hi = blocks & 0x0F, blocks >> 4
    return torch.stack([lo, hi], dim=-1).flatten(-2)


# --------------------------------------------------------------------------- GPTQ


def pack_gptq(codes: torch.Tensor, zero: torch.Tensor | None, scale: torch.Tensor,
              bits: int = 4) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """codes uint8 [E, N, K], zero uint8 [E, N, G] or None, scale [E, N, G] ->
    (qweight int32 [E, K/8, N], qzeros int32 [E, G, N/8] holding z - 1, or None,
    scales [E, G, N])."""
    if bits != 4:
        raise ValueError("only 4-bit GPTQ packing is modelled")
    E, N, K = codes.shape
    if K % 8 or N % 8:
        raise ValueError(f"GPTQ int4 packs 8 codes per int32: K={K} and N={N} must divide by 8")
    qweight = _nibbles_to_words(codes.transpose(1, 2).reshape(E, K // 8, 8, N).transpose(2, 3))
    qzeros = None
    if zero is not None:
        z = ((zero.to(torch.int64) - 1) & 0xF).transpose(1, 2)  # [E, G, N], v1 offset
        qzeros = _nibbles_to_words(z.reshape(E, z.shape[1], N // 8, 8))
    return qweight.contiguous(), qzeros, scale.transpose(1, 2).contiguous()


def unpack_gptq(qweight: torch.Tensor, qzeros: torch.Tensor | None, scales: torch.Tensor):
    """The inverse of pack_gptq: (codes [E, N, K], zero [E, N, G] or None, scale [E, N, G])."""
    E, K8, N = qweight.shape
    codes = _words_to_nibbles(qweight).permute(0, 1, 3, 2).reshape(E, K8 * 8, N).transpose(1, 2)
    zero = None
    if qzeros is not None:
        z = _words_to_nibbles(qzeros).reshape(E, qzeros.shape[1], N).to(torch.int64)
        zero = ((z + 1) & 0xF).to(torch.uint8).transpose(1, 2)
    return codes.contiguous(), zero, scales.transpose(1, 2)


# --------------------------------------------------------------------------- AWQ


def _awq_words(cols: torch.Tensor) -> torch.Tensor:  # [..., N] codes -> [..., N/8] int32
    *lead, N = cols.shape
    groups = cols.reshape(*lead, N // 8, 8)
    return _nibbles_to_words(groups[..., list(AWQ_ORDER)])


def _awq_cols(words: torch.Tensor) -> torch.Tensor:  # [..., N/8] int32 -> [..., N] codes
    nib = _words_to_nibbles(words)  # [..., N/8, 8]: nibble i holds column AWQ_ORDER[i]
    cols = torch.empty_like(nib)
    cols[..., list(AWQ_ORDER)] = nib
    return cols.flatten(-2)


def pack_awq(codes: torch.Tensor, zero: torch.Tensor | None, scale: torch.Tensor,
             bits: int = 4) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """codes uint8 [E, N, K], zero uint8 [E, N, G] or None (AWQ checkpoints always have them:
    None packs the middle code 8), scale [E, N, G] -> (qweight int32 [E, K, N/8],
    qzeros int32 [E, G, N/8], scales [E, G, N])."""
    if bits != 4:
        raise ValueError("only 4-bit AWQ packing is modelled")
    N = codes.shape[1]
    if N % 8:
        raise ValueError(f"AWQ int4 packs 8 output columns per int32: N={N} must divide by 8")
    if zero is None:
        zero = torch.full(scale.shape, 8, dtype=torch.uint8)
    return (_awq_words(codes.transpose(1, 2)).contiguous(),
            _awq_words(zero.transpose(1, 2)).contiguous(), scale.transpose(1, 2).contiguous())


def unpack_awq(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor):
    """The inverse of pack_awq: (codes [E, N, K], zero [E, N, G], scale [E, N, G])."""
    return (_awq_cols(qweight).transpose(1, 2).contiguous(), _awq_cols(qzeros).transpose(1, 2),
            scales.transpose(1, 2))
