"""Triton stand-ins for the device-library calls inside vLLM's Triton programs that Triton's
interpreter cannot run (imported only where triton is installed, under TRITON_INTERPRET=1).

  round_int8   vLLM's int8_utils.round_int8 is `tl.extra.cuda.libdevice.round(x).to(tl.int8)`:
               CUDA's libdevice `round`, nearest with halves away from zero. The interpreter
               has no libdevice, so this is the same function in plain Triton.
"""

import triton
import triton.language as tl


@triton.jit
def round_int8(x):
    r = tl.floor(tl.abs(x) + 0.5)
    return tl.where(x < 0, -r, r).to(tl.int8)
