"""CUDA graphs of the ODE function: ``ODEFunc(cuda_graphs=True)`` and ``NODEClassifier``.

* CPU: the error messages, and the graph runner's logic with an eager stand-in for
  ``torch.cuda.CUDAGraph`` that has a graph's static-buffer semantics: a replay overwrites the
  captured outputs in place, and the backward replay reads the activations of the LATEST
  forward replay. A runner that forgot to copy its outputs out, or to replay the forward again
  before a stale backward, gives wrong numbers here.
* GPU (skipped without CUDA): real graphs against the ungraphed function, through
  ``torchdiffeq.odeint`` and ``odeint_adjoint``, and a NODE training step.
"""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import assert_rel_close, grad_atol
from torchdiffeq import odeint, odeint_adjoint

import timeaware
from timeaware.models import NODEClassifier, ODEBlock, ODEFunc
from timeaware.models.odefunc import _CudaGraphBackend, _GraphRunner

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only error")


# ------------------------------------------------------------------------------------------
# An eager stand-in for CUDA graphs (CPU)
# ------------------------------------------------------------------------------------------
def _as_tuple(v):
    return v if isinstance(v, tuple) else (v,)


class FakeGraph:
    """Replays by running the captured function again and writing its results into the
    tensors the capture returned (in place, without autograd noticing, as a graph replay
    writes device memory)."""

    def __init__(self, backend, fn, result):
        self.backend, self.fn, self.result = backend, fn, result

    def replay(self):
        self.backend.replays += 1
        for static, fresh in zip(_as_tuple(self.result), _as_tuple(self.fn())):
            static.data.copy_(fresh.detach())


class FakeBackend:
    def __init__(self):
        self.captures = self.warmups = self.replays = 0

    def check(self, x):
        pass

    def warmup(self, fn, device, iters):
        self.warmups += 1
        fn()  # once: warm-up runs matter on a GPU only (lazy init, autotuning, Triton JIT)

    def capture(self, fn, pool=None):
        self.captures += 1
        result = fn()
        return FakeGraph(self, fn, result), result

    def pool(self, graph):
        return None


def graphed(f: ODEFunc) -> FakeBackend:
    """Give ``f`` a graph runner on the stand-in backend; returns the backend (counters)."""
    backend = FakeBackend()
    f._graphs = _GraphRunner(f, backend)
    return backend


def small_func(backend="reference", seed=0, **kw):
    torch.manual_seed(seed)
    f = ODEFunc(4, groups=2, backend=backend, **kw)
    with torch.no_grad():
        for n, p in f.named_parameters():
            if "norm" in n and n.endswith("weight"):
                p.uniform_(0.5, 1.5)
            elif "norm" in n and n.endswith("bias"):
                p.uniform_(-0.5, 0.5)
    return f


def twins(backend="reference", **kw):
    """(ungraphed, graphed on the stand-in) with the same parameters."""
    plain = small_func(backend, **kw)
    g = small_func(backend, **kw)
    g.load_state_dict(plain.state_dict())
    return plain, g, graphed(g)


def assert_grads_close(got, want, rtol, what):
    atol = grad_atol([w for w in want if w is not None])
    for k, (a, b) in enumerate(zip(got, want)):
        assert (a is None) == (b is None), f"{what} {k}"
        if b is not None:
            assert_rel_close(a, b, rtol, f"{what} {k}", atol)


# ------------------------------------------------------------------------------------------
# CPU: the runner's logic
# ------------------------------------------------------------------------------------------
def test_graphed_calls_match_and_outputs_are_not_aliased():
    plain, g, backend = twins()
    xs = [torch.randn(2, 4, 3, 3) for _ in range(3)]
    ts = [torch.tensor(v) for v in (0.1, 0.5, 0.9)]
    with torch.no_grad():
        outs = [g(t, x) for t, x in zip(ts, xs)]  # kept alive together, as a solver does
        for t, x, y in zip(ts, xs, outs):
            torch.testing.assert_close(y, plain(t, x), rtol=0, atol=0)
        torch.testing.assert_close(g(0.5, xs[0]), plain(0.5, xs[0]), rtol=0, atol=0)
    assert backend.captures == 2  # (0-d tensor t, no grad) and (number t, no grad)
    assert g.nfe == 4 and g.num_cuda_graphs == 2


def test_graphed_forward_backward_matches():
    plain, g, backend = twins()
    x = torch.randn(2, 4, 3, 3)
    t = torch.tensor(0.3)
    for k in range(2):
        res = []
        for f in (plain, g):
            xi = (x + k).requires_grad_(True)
            ti = (t + k).requires_grad_(True)
            y = f(ti, xi)
            gy = torch.linspace(-1, 1, y.numel()).view_as(y)
            res.append((y.detach(), torch.autograd.grad(y, [ti, xi, *f.parameters()], gy)))
        torch.testing.assert_close(res[1][0], res[0][0], rtol=0, atol=0)
        assert_grads_close(res[1][1], res[0][1], 1e-6, "grad")
    assert backend.captures == 2  # forward + backward graph of one signature


@pytest.mark.parametrize(
    "backend, adjoint",
    [("reference", False), ("reference", True), ("triton", False)],
    ids=["odeint", "odeint_adjoint", "odeint-triton"],
)
def test_graphed_through_torchdiffeq(backend, adjoint):
    """dopri5 through odeint (autograd backpropagates through the recorded evaluations in
    reverse order: each backward finds the static activations of a later forward and must
    replay its own forward first) and through odeint_adjoint (each backward-solve evaluation
    is a forward replay followed by autograd.grad on (t, y, params))."""
    plain, g, fake = twins(backend)
    x0 = torch.randn(2, 4, 3, 3)
    times = torch.tensor([0.0, 0.25, 0.5])
    solve = odeint_adjoint if adjoint else odeint
    # dopri5 on the eager backend; one fixed rk4 step (4 evaluations) under the interpreter
    method = dict(method="dopri5")
    if backend == "triton":
        times = times[:2]
        method = dict(method="rk4", options=dict(step_size=0.25))
    res = []
    for f in (plain, g):
        f.reset_nfe()
        x = x0.clone().requires_grad_(True)
        kw = dict(adjoint_params=tuple(f.parameters())) if adjoint else {}
        ys = solve(f, x, times, rtol=1e-4, atol=1e-4, **method, **kw)
        w = torch.linspace(-1, 1, ys.numel()).view_as(ys)
        grads = torch.autograd.grad((ys * w).sum(), [x, *f.parameters()])
        res.append((ys.detach(), grads, f.nfe))
    (ys_p, g_p, nfe_p), (ys_g, g_g, nfe_g) = res
    assert nfe_g == nfe_p >= 4
    torch.testing.assert_close(ys_g, ys_p, rtol=1e-6, atol=1e-7)
    assert_grads_close(g_g, g_p, 1e-5, "grad")
    if not adjoint:
        # every backward but the first found another forward's activations: replayed again
        assert fake.replays > 2 * nfe_g
    else:
        assert g.num_cuda_graphs == 2  # forward solve (no grad) + backward solve (grad)


def test_odeblock_and_classifier_with_graphs():
    """ODEBlock (its evaluation counter wraps the graphed function) and a NODE training step,
    adjoint and not, equal the ungraphed model; after an optimizer step too."""
    for adjoint in (False, True):
        kw = dict(channels=4, image_size=8, groups=2, dropout=0.0, adjoint=adjoint)
        torch.manual_seed(5)
        plain = NODEClassifier(3, 5, rtol=1e-4, atol=1e-4, **kw)
        m = copy.deepcopy(plain)
        graphed(m.odeblock.odefunc)
        x = torch.randn(2, 3, 8, 8)
        labels = torch.tensor([1, 3])
        opts = [torch.optim.SGD(mod.parameters(), lr=0.1) for mod in (plain, m)]
        for _ in range(2):
            losses, grads = [], []
            for mod, opt in zip((plain, m), opts):
                opt.zero_grad()
                loss = torch.nn.functional.cross_entropy(mod(x), labels)
                loss.backward()
                losses.append(loss.detach())
                grads.append([p.grad.clone() for p in mod.parameters()])
                opt.step()
            torch.testing.assert_close(losses[1], losses[0], rtol=1e-6, atol=1e-7)
            assert_grads_close(grads[1], grads[0], 1e-5, "param grad")
            assert m.nfe_forward == plain.nfe_forward and m.nfe_backward == plain.nfe_backward


def test_new_signature_is_captured_again_and_lru_bounded():
    _, g, backend = twins()
    x = torch.randn(2, 4, 3, 3)
    with torch.no_grad():
        g(0.1, x)
        g(0.2, x)
        assert backend.captures == 1
        g(0.1, torch.randn(3, 4, 3, 3))  # batch size
        g(torch.tensor([0.1, 0.2]), x)  # per-sample t
    g(0.1, x)  # grad mode (the parameters require grad)
    g.eval()
    with torch.no_grad():
        g(0.1, x)
    assert backend.captures == 5 + 1  # 4 forward-only signatures, 1 with its backward graph
    assert g.num_cuda_graphs == 5
    g.max_cuda_graphs = 2
    with torch.no_grad():
        g(0.3, x.clone())  # the most recent (eval, no grad) signature: kept, no capture
        g(0.1, torch.randn(1, 4, 3, 3))
    assert g.num_cuda_graphs == 2 and backend.captures == 7
    g.reset_cuda_graphs()
    assert g.num_cuda_graphs == 0


def test_graphed_backward_is_once_differentiable():
    _, g, _ = twins()
    x = torch.randn(2, 4, 3, 3, requires_grad=True)
    (gx,) = torch.autograd.grad(g(0.2, x).square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable|differentiate"):
        gx.sum().backward()


def test_deepcopy_drops_the_graphs():
    f = small_func()
    f.cuda_graphs = True
    graphed(f)
    with torch.no_grad():
        f(0.1, torch.randn(1, 4, 3, 3))
    c = copy.deepcopy(f)
    assert f.num_cuda_graphs == 1 and c.num_cuda_graphs == 0
    assert isinstance(c._graphs.backend, _CudaGraphBackend)


# ------------------------------------------------------------------------------------------
# CPU: errors
# ------------------------------------------------------------------------------------------
@no_cuda
def test_cuda_graphs_need_a_cuda_device():
    with pytest.raises(RuntimeError, match="cuda_graphs=True needs a CUDA device"):
        ODEFunc(8, cuda_graphs=True)
    with pytest.raises(RuntimeError, match="cuda_graphs=True needs a CUDA device"):
        NODEClassifier(channels=8, image_size=8, cuda_graphs=True)


def test_cuda_graphs_reject_cpu_tensors_and_bad_options():
    f = small_func()
    f._graphs = _GraphRunner(f)  # the real backend, whatever this machine has
    with pytest.raises(RuntimeError, match=r"got x on cpu, expected a CUDA tensor .*shape"):
        f(0.1, torch.randn(1, 4, 3, 3))
    with pytest.raises(TypeError, match="cuda_graphs: got str"):
        ODEFunc(4, cuda_graphs="yes")
    with pytest.raises(ValueError, match="norm: got 'batch' with cuda_graphs=True"):
        ODEFunc(4, norm="batch", cuda_graphs=True)
    with pytest.raises(ValueError, match=r"t: got a tensor of shape \(3,\)"):
        f(torch.zeros(3), torch.randn(2, 4, 3, 3))  # checked before any graph work


# ------------------------------------------------------------------------------------------
# GPU: real CUDA graphs
# ------------------------------------------------------------------------------------------
def _gpu_twins(**kw):
    torch.manual_seed(0)
    plain = ODEFunc(64, backend="auto", **kw).cuda()
    g = ODEFunc(64, backend="auto", cuda_graphs=True, **kw).cuda()
    g.load_state_dict(plain.state_dict())
    return plain, g


@cuda
@pytest.mark.parametrize("adjoint", [False, True], ids=["odeint", "odeint_adjoint"])
def test_gpu_graphed_through_torchdiffeq(adjoint):
    plain, g = _gpu_twins()
    x0 = torch.randn(8, 64, 8, 8, device="cuda")
    times = torch.tensor([0.0, 1.0], device="cuda")
    solve = odeint_adjoint if adjoint else odeint
    res = []
    for f in (plain, g):
        f.reset_nfe()
        x = x0.clone().requires_grad_(True)
        kw = dict(adjoint_params=tuple(f.parameters())) if adjoint else {}
        ys = solve(f, x, times, rtol=1e-3, atol=1e-3, method="dopri5", **kw)
        w = torch.randn(ys.shape, generator=torch.Generator("cuda").manual_seed(1), device="cuda")
        grads = torch.autograd.grad((ys * w).sum(), [x, *f.parameters()])
        res.append((ys.detach(), grads, f.nfe))
    (ys_p, g_p, nfe_p), (ys_g, g_g, nfe_g) = res
    assert nfe_g == nfe_p
    assert_rel_close(ys_g, ys_p, 1e-5, "state")
    assert_grads_close(g_g, g_p, 1e-4, "grad")
    assert g.num_cuda_graphs == (2 if adjoint else 1)


@cuda
def test_gpu_graph_follows_weight_updates_and_shapes():
    plain, g = _gpu_twins()
    opts = [torch.optim.SGD(f.parameters(), lr=0.5) for f in (plain, g)]
    t = torch.tensor(0.3, device="cuda")
    for n in (8, 8, 5):  # a new batch size is captured again
        x = torch.randn(n, 64, 8, 8, device="cuda", requires_grad=True)
        outs = []
        for f, opt in zip((plain, g), opts):
            opt.zero_grad()
            y = f(t, x)
            y.square().mean().backward()
            outs.append((y.detach(), [p.grad.clone() for p in f.parameters()]))
            opt.step()  # in place: the graph reads the new weights (and recomputes time maps)
        assert_rel_close(outs[1][0], outs[0][0], 1e-5, "output")
        assert_grads_close(outs[1][1], outs[0][1], 1e-4, "param grad")
    assert g.num_cuda_graphs == 2
    with pytest.raises(RuntimeError, match="expected a CUDA tensor"):
        g(t, torch.randn(2, 64, 8, 8))


@cuda
def test_gpu_node_classifier_training_step_with_graphs():
    torch.manual_seed(0)
    plain = NODEClassifier(channels=64, image_size=32, dropout=0.0).cuda()
    m = NODEClassifier(channels=64, image_size=32, dropout=0.0, cuda_graphs=True).cuda()
    m.load_state_dict(plain.state_dict())
    x = torch.randn(16, 3, 32, 32, device="cuda")
    y = torch.randint(0, 10, (16,), device="cuda")
    with timeaware.use_backend("auto"):
        res = []
        for mod in (plain, m):
            loss = torch.nn.functional.cross_entropy(mod(x), y)
            loss.backward()
            res.append((loss.detach(), [p.grad for p in mod.parameters()], mod.nfe_backward))
    assert_rel_close(res[1][0], res[0][0], 1e-5, "loss")
    assert_grads_close(res[1][1], res[0][1], 1e-3, "param grad")
    assert res[1][2] == res[0][2] > 0
    assert isinstance(m.odeblock, ODEBlock) and m.odeblock.odefunc.num_cuda_graphs == 2


def test_modules_pickled_before_the_new_attributes_still_load():
    """A pickle made before ``cuda_graphs`` / the ConcatConv cache existed lacks those
    attributes: unpickling fills in the defaults."""
    import pickle

    f = small_func()
    for m in (f.conv1, f.conv2):
        del m.__dict__["use_cache"]
    del f.__dict__["cuda_graphs"]
    g = pickle.loads(pickle.dumps(f))
    assert g.cuda_graphs is False and g._graphs is None and g.conv1.use_cache is True
    x = torch.randn(1, 4, 3, 3)
    torch.testing.assert_close(g(0.2, x), small_func()(0.2, x))
