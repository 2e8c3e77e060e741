"""rlhf_ray.process.set_up_process: bitsandbytes' import-time torch.compile wrappers are built at their
first call, so a process that loads a quantized model does not load inductor's compiler for nothing."""

from __future__ import annotations

import subprocess
import sys

import pytest

from rlhf_ray.process import _compile_at_first_call

PROBE = """
import sys
{setup}
from transformers.utils import is_bitsandbytes_available
assert is_bitsandbytes_available()  # a find_spec before the import, as transformers' quantizer does
import bitsandbytes, peft
import bitsandbytes.backends.default.ops as ops
print("torch._inductor.compile_fx" in sys.modules, "networkx" in sys.modules, type(bitsandbytes.__loader__).__name__)
"""


def probe(setup: str) -> list[str]:
    out = subprocess.run([sys.executable, "-c", PROBE.format(setup=setup)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.split()


@pytest.mark.slow  # a fresh interpreter imports torch, transformers and peft: 4-10 s, too long for test-fast
def test_bitsandbytes_imports_without_the_compiler_stack_after_set_up():
    # without set_up_process both are True (bitsandbytes 0.50)
    after = probe("from rlhf_ray.process import set_up_process; set_up_process(); set_up_process()")
    assert after == ["False", "False", "SourceFileLoader"]  # and the package keeps its real loader


def test_compile_runs_once_at_the_first_call_with_its_options():
    calls = []

    def eager(fn, **kwargs):
        calls.append(kwargs)
        return lambda *a, **k: ("compiled", fn(*a, **k))

    @_compile_at_first_call(eager, dynamic=False)
    def double(x):
        """doubles"""
        return 2 * x

    plain = _compile_at_first_call(eager, lambda x: x + 1)
    assert calls == [] and double.__name__ == "double" and double.__doc__ == "doubles"
    assert double(3) == ("compiled", 6) and double(4) == ("compiled", 8) and plain(1) == ("compiled", 2)
    assert calls == [{"dynamic": False}, {}]


def test_only_a_fresh_worker_freezes_its_imports_and_only_once():
    code = (
        "import gc; from rlhf_ray import process as p; p.set_up_process(); a = p.freeze_startup(); "
        "n = gc.get_freeze_count(); p.set_up_worker(); b = p.freeze_startup(); c = p.freeze_startup(); "
        "print(a, n, b, c, gc.get_freeze_count() > 0)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["False", "0", "True", "False", "True"], out.stderr[-2000:]
