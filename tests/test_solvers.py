"""timeaware.odeint / odeint_adjoint against torchdiffeq's dopri5, on both backends.

Problems (float64 unless said): a linear system with an exact solution, a nonlinear batch (a
small tanh MLP), a mildly stiff relaxation, the same backwards in time, and the paper's ODE
function. For each: the same NFE as torchdiffeq, the solution within 1e-9 (relative), and for
the adjoint the gradients of y0, t and the parameters within 1e-6 (relative) and the same
backward NFE. The reference backend runs torchdiffeq's ops in torchdiffeq's order, so it is
also checked bit for bit. The Triton backend runs under the interpreter (tiny problems).
"""

from __future__ import annotations

import math

import pytest
import torch
import torchdiffeq
from torch import nn

from timeaware import BackendUnavailableError
from timeaware.models import ODEFunc
from timeaware.solvers import SolverError, SolverStats, odeint, odeint_adjoint

BACKENDS = ["reference", "triton"]
F64 = torch.float64


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-300)).item()


class Calls(nn.Module):
    """Counts calls of the wrapped function (torchdiffeq's NFE)."""

    def __init__(self, f):
        super().__init__()
        self.f = f
        self.n = 0

    def forward(self, t, y):
        self.n += 1
        return self.f(t, y)


class Linear(nn.Module):
    """dy/dt = y A^T, a damped rotation: y(t) = y0 expm(A t)^T."""

    def __init__(self):
        super().__init__()
        self.A = nn.Parameter(torch.tensor([[-0.5, 1.0], [-1.0, -0.5]], dtype=F64))

    def forward(self, t, y):
        return y @ self.A.T

    def exact(self, y0, t):
        return torch.stack([y0 @ torch.linalg.matrix_exp(self.A * ti).T for ti in t]).detach()


class MLP(nn.Module):
    """A nonlinear, time-dependent field on a batch of 3-d states."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w1 = nn.Parameter(torch.randn(3, 8, generator=g, dtype=F64) * 0.5)
        self.b1 = nn.Parameter(torch.randn(8, generator=g, dtype=F64) * 0.1)
        self.w2 = nn.Parameter(torch.randn(8, 3, generator=g, dtype=F64) * 0.5)

    def forward(self, t, y):
        return torch.tanh(y @ self.w1 + self.b1 * torch.cos(t)) @ self.w2


class Stiff(nn.Module):
    """Mildly stiff relaxation dy/dt = -lam (y - cos t) (lam * dt is stability-limited)."""

    def __init__(self):
        super().__init__()
        self.lam = nn.Parameter(torch.tensor(12.0, dtype=F64))

    def forward(self, t, y):
        return -self.lam * (y - torch.cos(t))


def paper_func():
    torch.manual_seed(3)
    return ODEFunc(4, groups=2, act="softplus", backend="reference").double()


# name: (func factory, y0 factory, t, rtol, atol); tolerances chosen for ~10-20 steps (the
# Triton backend runs under the interpreter at ~0.1 s per step)
PROBLEMS = {
    "linear": (Linear, lambda: torch.tensor([[1.0, 0.0], [0.3, -0.7]], dtype=F64),
               torch.tensor([0.0, 0.5, 1.5], dtype=F64), 1e-6, 1e-8),
    "nonlinear": (MLP, lambda: torch.randn(5, 3, dtype=F64),
                  torch.tensor([0.0, 1.0], dtype=F64), 1e-6, 1e-8),
    "stiff": (Stiff, lambda: torch.tensor([0.0, 1.0, 2.0], dtype=F64),
              torch.tensor([0.0, 1.0], dtype=F64), 1e-4, 1e-6),
    "backwards": (MLP, lambda: torch.randn(4, 3, dtype=F64),
                  torch.tensor([1.0, 0.4, -0.6], dtype=F64), 1e-5, 1e-7),
    "paper": (paper_func, lambda: torch.randn(2, 4, 3, 3, dtype=F64),
              torch.tensor([0.0, 1.0], dtype=F64), 1e-4, 1e-4),
}  # fmt: skip


def setup(name):
    make_f, make_y0, t, rtol, atol = PROBLEMS[name]
    torch.manual_seed(0)
    return make_f(), make_y0(), t, rtol, atol


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(PROBLEMS))
def test_forward_matches_torchdiffeq(name, backend):
    f, y0, t, rtol, atol = setup(name)
    c = Calls(f)
    with torch.no_grad():
        ref = torchdiffeq.odeint(c, y0, t, rtol=rtol, atol=atol, method="dopri5")
        stats = SolverStats()
        out = odeint(f, y0, t, rtol=rtol, atol=atol, backend=backend, stats=stats)
    assert out.shape == ref.shape and out.dtype == ref.dtype
    assert stats.forward.nfe == c.n, (stats.forward.nfe, c.n)
    assert stats.forward.attempted == (c.n - 2) // 6
    assert stats.forward.masked == 0 and stats.forward.calls == c.n
    assert rel(out, ref) < 1e-9
    if backend == "reference":  # torchdiffeq's ops in torchdiffeq's order
        assert torch.equal(out, ref)
    if name == "linear":  # and both near the exact solution
        assert rel(out, f.exact(y0, t)) < 1e-5
    print(f"{name}/{backend}: NFE {stats.forward.nfe} (torchdiffeq {c.n}), "
          f"rel diff {rel(out, ref):.1e}")  # fmt: skip


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["linear", "stiff", "backwards", "paper"])
def test_adjoint_matches_torchdiffeq(name, backend):
    f, y0, t, rtol, atol = setup(name)
    if backend == "triton":  # fewer steps under the interpreter
        rtol, atol = rtol * 10, atol * 10
    weight = torch.linspace(-1, 1, y0.numel(), dtype=F64).view_as(y0)
    grads, nfes = {}, {}
    for solver in ("torchdiffeq", "timeaware"):
        f.zero_grad(set_to_none=True)
        y = y0.clone().requires_grad_(True)
        tt = t.clone().requires_grad_(True)
        c = Calls(f)
        stats = SolverStats()
        kw = dict(rtol=rtol, atol=atol, adjoint_params=tuple(f.parameters()))
        if solver == "torchdiffeq":
            out = torchdiffeq.odeint_adjoint(c, y, tt, method="dopri5", **kw)
        else:
            out = odeint_adjoint(c, y, tt, backend=backend, stats=stats, **kw)
        n_fwd = c.n
        (out * weight).sum().backward()
        grads[solver] = [y.grad, tt.grad] + [p.grad for p in f.parameters()]
        if solver == "torchdiffeq":
            nfes[solver] = (n_fwd, c.n - n_fwd)
        else:
            nfes[solver] = (stats.forward.nfe, stats.backward.nfe)
            assert stats.backward.calls == c.n - n_fwd  # no masked attempts here
    assert nfes["timeaware"] == nfes["torchdiffeq"], nfes
    for a, b in zip(grads["timeaware"], grads["torchdiffeq"]):
        assert rel(a, b) < 1e-6
        if backend == "reference":
            assert torch.equal(a, b)
    print(f"{name}/{backend}: NFE-F/NFE-B {nfes['timeaware']} (torchdiffeq {nfes['torchdiffeq']})")


@pytest.mark.parametrize("backend", BACKENDS)
def test_float32_matches_torchdiffeq(backend):
    torch.manual_seed(0)
    f = MLP().float()
    y0 = torch.randn(4, 3)
    t = torch.tensor([0.0, 0.7, 1.5])
    c = Calls(f)
    with torch.no_grad():
        ref = torchdiffeq.odeint(c, y0, t, rtol=1e-4, atol=1e-6)
        stats = SolverStats()
        out = odeint(f, y0, t, rtol=1e-4, atol=1e-6, backend=backend, stats=stats)
    assert out.dtype == torch.float32
    assert stats.forward.nfe == c.n
    assert rel(out, ref) < 1e-5


def test_triton_equals_reference_on_every_output_time():
    # many output times, several inside each step (dense output), decreasing time
    torch.manual_seed(1)
    f = MLP()
    y0 = torch.randn(3, 3, dtype=F64)
    t = torch.linspace(2.0, 0.0, 23, dtype=F64)
    c = Calls(f)
    with torch.no_grad():
        ref = torchdiffeq.odeint(c, y0, t, rtol=1e-5, atol=1e-7)
        outs = {b: odeint(f, y0, t, rtol=1e-5, atol=1e-7, backend=b) for b in BACKENDS}
    assert c.n < 2 + 6 * 22  # fewer steps than output times
    assert torch.equal(outs["reference"], ref)
    assert rel(outs["triton"], outs["reference"]) < 1e-12
    assert torch.equal(outs["triton"][0], y0)


def test_through_solver_gradients_on_reference_backend():
    f, y0, t, rtol, atol = setup("nonlinear")
    grads = []
    for solve in (torchdiffeq.odeint, odeint):
        f.zero_grad(set_to_none=True)
        y = y0.clone().requires_grad_(True)
        tt = t.clone().requires_grad_(True)
        out = solve(f, y, tt, rtol=rtol, atol=atol)  # auto: reference on CPU
        (out**2).sum().backward()
        grads.append([y.grad, tt.grad] + [p.grad for p in f.parameters()])
    for a, b in zip(*grads):  # torchdiffeq's graph (summed in another order: not bit for bit)
        assert rel(a, b) < 1e-12


def test_triton_backend_refuses_gradients_through_the_solver():
    f, y0, t, rtol, atol = setup("nonlinear")
    with pytest.raises(BackendUnavailableError, match="odeint_adjoint"):
        odeint(f, y0.clone().requires_grad_(True), t, backend="triton")
    # parameters that require grad are found on the first evaluation
    with pytest.raises(BackendUnavailableError, match="odeint_adjoint"):
        odeint(f, y0, t, backend="triton")
    with torch.no_grad():  # no graph wanted: fine
        odeint(f, y0, t, rtol=1e-3, atol=1e-3, backend="triton")


def test_rejected_step_with_overflow_does_not_poison_gradients():
    # the first (too large) step overflows exp() to inf and is rejected: torchdiffeq's graph
    # never sees it, and neither does the reference backend's (a masked torch.where would
    # backpropagate 0 * inf = NaN through it; checked: with settle() disabled this gives NaN)
    a = torch.tensor(1.0, dtype=F64, requires_grad=True)
    calls = []

    def f(t, y):
        out = a * torch.exp(3.0 * y)
        calls.append(bool(torch.isfinite(out).all()))
        return out

    y0 = torch.tensor([0.0], dtype=F64)
    t = torch.tensor([0.0, 0.5 / 3], dtype=F64)
    grads = []
    for solve in (torchdiffeq.odeint, odeint):
        out = solve(f, y0, t, rtol=1e-6, atol=1e-8, options={"first_step": 0.5})
        (g,) = torch.autograd.grad(out[-1].sum(), a)
        grads.append(g)
    assert not all(calls)  # an evaluation overflowed
    assert torch.isfinite(grads[1]) and torch.equal(grads[0], grads[1])


@pytest.mark.parametrize("backend", BACKENDS)
def test_options_match_torchdiffeq(backend):
    f, y0, t, rtol, atol = setup("stiff")
    opts = dict(first_step=0.01, max_step=0.05, safety=0.8, ifactor=5.0, dfactor=0.3)
    c = Calls(f)
    with torch.no_grad():
        ref = torchdiffeq.odeint(c, y0, t, rtol=rtol, atol=atol, options=opts)
        stats = SolverStats()
        out = odeint(f, y0, t, rtol=rtol, atol=atol, options=opts, backend=backend, stats=stats)
    assert stats.forward.nfe == c.n and (c.n - 1) % 6 == 0  # first_step: no probe evaluation
    assert rel(out, ref) < 1e-9


@pytest.mark.parametrize("backend", BACKENDS)
def test_masked_attempts_after_the_end_change_nothing(backend):
    # check_every=7: the host looks once per 7 attempts, so attempts run after the end
    f, y0, t, rtol, atol = setup("linear")
    f = Calls(f)
    with torch.no_grad():
        ref = odeint(f, y0, t, rtol=1e-3, atol=1e-3, backend=backend)
        n_ref = f.n
        f.n = 0
        stats = SolverStats()
        out = odeint(f, y0, t, rtol=1e-3, atol=1e-3, backend=backend, stats=stats,
                     options={"check_every": 7})  # fmt: skip
    s = stats.forward
    assert s.nfe == n_ref  # exact NFE: masked attempts are not evaluations
    assert s.masked > 0 and f.n == s.calls == s.nfe + 6 * s.masked  # but the function ran
    assert s.polls == math.ceil((s.attempted + s.masked) / 7)
    assert torch.equal(out, ref)
    assert s.accepted == s.attempted  # no rejection at this tolerance


@pytest.mark.parametrize("backend", BACKENDS)
def test_at_most_one_host_check_per_step(backend):
    f, y0, t, rtol, atol = setup("stiff")
    stats = SolverStats()
    with torch.no_grad():
        odeint(f, y0, t, rtol=rtol, atol=atol, backend=backend, stats=stats)
    s = stats.forward
    assert 1 <= s.polls <= s.attempted and s.masked == 0
    assert s.polls < s.attempted / 2  # the adaptive schedule checks less often as dt settles


# ------------------------------------------------------------------------------------------
# failures: torchdiffeq's messages, exact NFE
# ------------------------------------------------------------------------------------------


def nan_after(t, y):
    return torch.where(t > 0.3, torch.full_like(y, float("nan")), -y)


def oscillating(t, y):
    return torch.cos(10 * t) * y


def frozen(t, y):
    return torch.zeros_like(y)


FAILURES = {
    "max_num_steps": (oscillating, {"max_num_steps": 3}, torch.ones(3, dtype=F64)),
    "underflow": (nan_after, None, torch.ones(3, dtype=F64)),
    "non_finite": (frozen, None, torch.tensor([1.0, math.inf], dtype=F64)),
}


# NaN/inf are the point here: the interpreter's numpy warns about them
_IEEE_WARNINGS = pytest.mark.filterwarnings("ignore:.*encountered in:RuntimeWarning")


@_IEEE_WARNINGS
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reason", list(FAILURES))
def test_failures_match_torchdiffeq(reason, backend):
    f, opts, y0 = FAILURES[reason]
    t = torch.tensor([0.0, 1.0], dtype=F64)
    c = Calls(f)
    with pytest.raises(AssertionError) as td:
        torchdiffeq.odeint(c, y0, t, options=opts)
    stats = SolverStats()
    with pytest.raises(SolverError) as ours:
        odeint(f, y0, t, options=opts, backend=backend, stats=stats)
    e = ours.value
    assert isinstance(e, AssertionError) and isinstance(e, RuntimeError)
    assert e.reason == reason and e.nfe == c.n == stats.forward.nfe
    prefix = str(td.value).split(":")[0].split(" (")[0].split(" tensor")[0]
    assert str(e).startswith(prefix), (str(e), str(td.value))


@_IEEE_WARNINGS
def test_bad_t_found_on_the_device():
    y0 = torch.ones(2, dtype=F64)
    for t in ([0.0, 1.0, 0.5], [0.0, 0.0]):
        for backend in BACKENDS:
            with pytest.raises(ValueError, match="strictly increasing or decreasing"):
                odeint(lambda t, y: -y, y0, torch.tensor(t, dtype=F64), backend=backend)


# ------------------------------------------------------------------------------------------
# edge cases and bad input
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_single_time_and_empty_state(backend):
    c = Calls(lambda t, y: -y)
    t1 = torch.tensor([0.5], dtype=F64)
    y0 = torch.ones(3, dtype=F64)
    stats = SolverStats()
    out = odeint(c, y0, t1, backend=backend, stats=stats)
    assert torch.equal(out, y0[None]) and stats.forward.nfe == 2  # torchdiffeq's too
    assert c.n == 2 and stats.forward.attempted == 0 and stats.forward.polls == 1
    out[0, 0] = 5.0
    assert y0[0] == 1.0  # the result does not alias y0
    empty = odeint(lambda t, y: -y, torch.ones(0, 4, dtype=F64), torch.tensor([0.0, 1.0]))
    assert empty.shape == (2, 0, 4)


def test_function_returning_aliased_buffers():
    # a function that writes every result into the same buffer (or returns its input): the
    # fused stepper must not read a k that a later evaluation overwrote
    buf = torch.empty(4, dtype=F64)

    def reuse(t, y):
        torch.mul(y, -0.5 + torch.sin(t), out=buf)
        return buf

    y0 = torch.arange(1.0, 5.0, dtype=F64)
    t = torch.tensor([0.0, 1.0], dtype=F64)
    with torch.no_grad():  # (torchdiffeq's own initial step is wrong for this function)
        ref = torchdiffeq.odeint(lambda t, y: reuse(t, y).clone(), y0, t, rtol=1e-6, atol=1e-8)
        out = odeint(reuse, y0, t, rtol=1e-6, atol=1e-8, backend="triton")
        same = odeint(lambda t, y: y, y0, t, rtol=1e-3, atol=1e-3, backend="triton")
    assert rel(out, ref) < 1e-9
    assert rel(same[-1], y0 * math.e) < 1e-3


def test_bad_inputs_raise_clear_errors():
    y0, t = torch.ones(2), torch.tensor([0.0, 1.0])
    f = lambda t, y: -y  # noqa: E731
    with pytest.raises(TypeError, match="func"):
        odeint(3, y0, t)
    with pytest.raises(TypeError, match="y0: got dtype torch.int64"):
        odeint(f, torch.ones(2, dtype=torch.int64), t)
    with pytest.raises(NotImplementedError, match="tuple.*torchdiffeq"):
        odeint(f, (y0, y0), t)
    with pytest.raises(ValueError, match="t: got shape"):
        odeint(f, y0, torch.zeros(2, 2))
    with pytest.raises(NotImplementedError, match="rk4.*torchdiffeq"):
        odeint(f, y0, t, method="rk4")
    with pytest.raises(ValueError, match="method: got 'rk45'"):
        odeint(f, y0, t, method="rk45")
    with pytest.raises(NotImplementedError, match="step_t.*torchdiffeq"):
        odeint(f, y0, t, options={"step_t": torch.tensor([0.5])})
    with pytest.raises(NotImplementedError, match="norm.*torchdiffeq"):
        odeint(f, y0, t, options={"norm": lambda x: x.abs().max()})
    with pytest.raises(ValueError, match="unknown option 'foo'"):
        odeint(f, y0, t, options={"foo": 1})
    with pytest.raises(ValueError, match="max_num_steps"):
        odeint(f, y0, t, options={"max_num_steps": 0})
    with pytest.raises(ValueError, match="rtol: got -1"):
        odeint(f, y0, t, rtol=-1.0)
    with pytest.raises(NotImplementedError, match="per-element"):
        odeint(f, y0, t, atol=torch.ones(2))
    with pytest.raises(NotImplementedError, match="event"):
        odeint(f, y0, t, event_fn=lambda t, y: y)
    with pytest.raises(ValueError, match="returned shape"):
        odeint(lambda t, y: y[:1], y0, t)
    with pytest.raises(ValueError, match="backend"):
        odeint(f, y0, t, backend="cuda")
    with pytest.raises(BackendUnavailableError, match="float32/float64"):
        odeint(f, y0.half(), t, backend="triton")

    class WithCallback(nn.Module):
        def forward(self, t, y):
            return -y

        def callback_step(self, t0, y0, dt):
            pass

    with pytest.raises(NotImplementedError, match="callback_step"):
        odeint(WithCallback(), y0, t)
    with pytest.raises(ValueError, match="adjoint_params"):
        odeint_adjoint(f, y0, t)
    with pytest.raises(NotImplementedError, match="seminorm"):
        odeint_adjoint(Linear(), y0, t, adjoint_options={"norm": "max"})


@pytest.mark.parametrize("backend", BACKENDS)
def test_adjoint_seminorm_matches_torchdiffeq(backend):
    f, y0, t, rtol, atol = setup("nonlinear")
    res = {}
    for solver in ("torchdiffeq", "timeaware"):
        f.zero_grad(set_to_none=True)
        y = y0.clone().requires_grad_(True)
        c = Calls(f)
        kw = dict(rtol=rtol, atol=atol, adjoint_options={"norm": "seminorm"},
                  adjoint_params=tuple(f.parameters()))  # fmt: skip
        if solver == "torchdiffeq":
            out = torchdiffeq.odeint_adjoint(c, y, t, **kw)
        else:
            out = odeint_adjoint(c, y, t, backend=backend, **kw)
        n_fwd = c.n
        out[-1].sum().backward()
        res[solver] = (c.n - n_fwd, [y.grad] + [p.grad for p in f.parameters()])
    assert res["timeaware"][0] == res["torchdiffeq"][0]
    for a, b in zip(res["timeaware"][1], res["torchdiffeq"][1]):
        assert rel(a, b) < 1e-6


def test_multi_program_plan_matches_one_program(monkeypatch):
    # the GPU plan (chunks of a few elements, one program each) under the interpreter
    from timeaware.kernels import dopri5 as K

    f, y0, t, rtol, atol = setup("nonlinear")
    with torch.no_grad():
        one = odeint(f, y0, t, rtol=rtol, atol=atol, backend="triton")
    monkeypatch.setattr(K, "CPU_CHUNK", 4)
    monkeypatch.setattr(K, "_PLANS", {})
    stats = SolverStats()
    with torch.no_grad():
        many = odeint(f, y0, t, rtol=rtol, atol=atol, backend="triton", stats=stats)
    plan = next(iter(K._PLANS.values()))
    assert plan.P == 4 and plan.G == 4  # 15 elements in chunks of 4
    assert rel(many, one) < 1e-13


def test_attempts_reuse_the_same_buffers():
    # what CUDA-graph capture of an attempt needs: every launch of every attempt reads and
    # writes the same solver buffers (only the function's outputs k2..k7 are new tensors), and
    # no attempt syncs (test_budgets_solver counts the syncs)
    from timeaware.profiling import _patch_triton_run

    seen: dict = {}

    def wrapper(orig):
        def run(self, *args, grid, warmup, **kwargs):
            names = self.arg_names
            ptrs = {n: a.data_ptr() for n, a in zip(names, args) if isinstance(a, torch.Tensor)}
            key = (self.fn.__name__, kwargs.get("ROW"))
            fixed = {n: p for n, p in ptrs.items() if n not in ("K2", "K3", "K4", "K5", "K6", "K7")}
            seen.setdefault(key, []).append(fixed)
            return orig(self, *args, grid=grid, warmup=warmup, **kwargs)

        return run

    f, y0, t, rtol, atol = setup("nonlinear")
    stats = SolverStats()
    with torch.no_grad(), _patch_triton_run(wrapper):
        odeint(f, y0, t, rtol=rtol, atol=atol, backend="triton", stats=stats)
    runs = stats.forward.attempted
    assert runs > 3
    assert len(seen[("_dp5_begin_kernel", None)]) == runs
    for key, calls in seen.items():
        assert all(c == calls[0] for c in calls), key


def test_auto_falls_back_to_the_reference_when_the_function_needs_grad(monkeypatch):
    # auto on a CUDA state picks the kernels; when the first evaluation turns out to require
    # grad it continues on the reference stepper, reusing that evaluation (simulated on CPU)
    from timeaware.solvers import _spec

    monkeypatch.setattr(_spec, "resolve", lambda requested, y0, needs_grad: ("triton", True))
    f, y0, t, rtol, atol = setup("nonlinear")
    c = Calls(f)
    stats = SolverStats()
    out = odeint(c, y0, t, rtol=rtol, atol=atol, stats=stats)
    assert out.requires_grad and stats.forward.nfe == stats.forward.calls == c.n
    with torch.no_grad():
        ref = torchdiffeq.odeint(f, y0, t, rtol=rtol, atol=atol)
    assert torch.equal(out.detach(), ref)
    out.sum().backward()
    assert all(p.grad is not None for p in f.parameters())


def test_output_requiring_grad_later_in_the_solve_is_not_dropped(monkeypatch):
    # a parameter that enters only for t > 0.3: the first evaluations carry no graph, later
    # ones do; the kernels must not silently drop it (forced: error; auto: restart on the
    # reference stepper, simulated on CPU)
    from timeaware.solvers import _spec

    w = torch.tensor(2.0, dtype=F64, requires_grad=True)

    def f(t, y):
        return -y * w if t > 0.3 else -y

    y0 = torch.ones(3, dtype=F64)
    t = torch.tensor([0.0, 1.0], dtype=F64)
    with pytest.raises(BackendUnavailableError, match="odeint_adjoint"):
        odeint(f, y0, t, backend="triton")
    monkeypatch.setattr(_spec, "resolve", lambda requested, y0, needs_grad: ("triton", True))
    stats = SolverStats()
    out = odeint(f, y0, t, rtol=1e-6, atol=1e-8, stats=stats)
    ref = torchdiffeq.odeint(f, y0, t, rtol=1e-6, atol=1e-8)
    assert torch.equal(out, ref) and stats.forward.calls > stats.forward.nfe  # restarted
    (g,) = torch.autograd.grad(out[-1].sum(), w)
    (g_ref,) = torch.autograd.grad(ref[-1].sum(), w)
    assert g != 0 and torch.equal(g, g_ref)
