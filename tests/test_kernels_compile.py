"""The kernels compile for real GPUs (sm_80, sm_90), checked ahead of time with no GPU present.

The interpreter accepts constructs the GPU compiler rejects; this runs
``tests/gpu_compile_check.py --quick`` in a subprocess (it needs TRITON_INTERPRET=0 before triton
is imported) and fails with the compiler's message for every variant that does not compile.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("gpu_compile_check.py")


def test_every_kernel_variant_compiles_for_sm80_and_sm90(tmp_path):
    pytest.importorskip("triton")
    # a fresh cache, so every variant is really compiled rather than found on disk
    env = {**os.environ, "TRITON_INTERPRET": "0", "TRITON_DEFAULT_FP_FUSION": "1",
           "TRITON_CACHE_DIR": str(tmp_path)}  # fmt: skip
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick"], capture_output=True, text=True, env=env,
        timeout=900,
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-8000:]
    assert " 0 failures" in proc.stdout and "distinct kernel variants" in proc.stdout, out


SPECIALISATION = r"""
import sys
sys.path.insert(0, sys.argv[1])
import gpu_compile_check as g  # sets TRITON_INTERPRET=0 before triton is imported
import torch
from triton.runtime.jit import JITFunction
from timeaware.kernels import group_norm_act as k

JITFunction.run = g._record
k._target_programs = lambda device: 264
x = torch.empty(4, 64, 8, 8)  # NCHW: stride_xhw = 1, stride_xc = 64, stride_xn = 4096
odd = torch.empty(4 * 64 * 8 * 8 + 1)[1:].view(4, 64, 8, 8)  # data 4 bytes past alignment
for t in (x, odd):
    k.group_norm_act_fwd(t, 32, None, None, 1e-5, "relu", None, None, None, None, None)
jobs = [v for key, v in g._JOBS.items() if key[0] == "_gn_fwd_packed_kernel"]
assert len(jobs) == 2, len(jobs)
divisible = []
for fn, sig, consts, attrs, launch in jobs:
    const = {fn.arg_names[i[0]]: v for i, v in consts.items()}
    div = {fn.arg_names[i[0]] for i, v in attrs.items() if ["tt.divisibility", 16] in v}
    assert const["stride_xhw"] == 1, const  # an int equal to 1 is compiled as a constant
    assert {"stride_xc", "stride_xn", "Y"} <= div, div  # 64, 4096, a fresh allocation
    assert "HW" in div and "G" in div  # 64 and 32
    divisible.append("X" in div)
assert sorted(divisible) == [False, True], divisible  # only the aligned x is marked
print("specialisation OK")
"""


def test_compile_check_specialises_like_the_jit():
    # the AOT check compiles the signature the JIT produces at run time: ints == 1 become
    # constexprs, ints divisible by 16 and 16-byte-aligned pointers get tt.divisibility=16
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    proc = subprocess.run(
        [sys.executable, "-c", SPECIALISATION, str(SCRIPT.parent)],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0 and "specialisation OK" in proc.stdout, (proc.stdout + proc.stderr)[
        -4000:
    ]
