"""Gaussian diffusion (DDPM) with linear betas: training loss and three samplers."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..nn._utils import check_positive_int
from .node import CountingFunc, ODESolverError, _odeint, is_solver_failure


def _progress(iterable, enabled: bool, total: int, desc: str):
    if not enabled:
        return iterable
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is optional
        return iterable
    return tqdm(iterable, total=total, desc=desc)


def _check_shape(shape) -> tuple[int, ...]:
    try:
        shape = tuple(int(s) for s in shape)
    except TypeError:
        raise TypeError(f"shape: got {shape!r}, expected a tuple (N, C, H, W)") from None
    if len(shape) != 4 or min(shape) < 1:
        raise ValueError(f"shape: got {shape}, expected (N, C, H, W) with positive sizes")
    return shape


def _randn(shape, generator, device, dtype) -> Tensor:
    gdev = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=gdev, dtype=dtype).to(device)


class GaussianDiffusion(nn.Module):
    """DDPM forward process with linear betas, eps-prediction loss, and samplers.

    ``q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I)`` with ``beta_t`` linear from
    ``beta_1`` to ``beta_T`` over ``timesteps`` steps (indices ``t = 0 .. T-1``), ``abar_t =
    prod_{s<=t} (1 - beta_s)``.

    Args:
        model: ``model(x_t, t) -> eps`` with x_t (N, C, H, W) and t (N,) long timesteps, e.g.
            :class:`~timeaware.models.UNet`.
        timesteps: T.
        beta_1, beta_T: first and last beta.

    Attributes:
        last_nfe: model evaluations of the last sampler call.
    """

    def __init__(
        self, model: nn.Module, timesteps: int = 1000, beta_1: float = 1e-4, beta_T: float = 0.02
    ) -> None:
        super().__init__()
        if not callable(model):
            raise TypeError(f"model: got {type(model).__name__}, expected a callable module")
        self.model = model
        self.timesteps = check_positive_int(timesteps, "timesteps")
        if not 0 < beta_1 <= beta_T < 1:
            raise ValueError(
                f"beta_1, beta_T: got ({beta_1!r}, {beta_T!r}), expected 0 < beta_1 <= beta_T < 1"
            )
        self.beta_1, self.beta_T = float(beta_1), float(beta_T)
        betas = torch.linspace(beta_1, beta_T, self.timesteps, dtype=torch.float64)
        abar = torch.cumprod(1.0 - betas, 0)
        abar_prev = F.pad(abar[:-1], (1, 0), value=1.0)
        self.register_buffer("betas", betas.float(), persistent=False)
        self.register_buffer("alphas_bar", abar.float(), persistent=False)
        self.register_buffer("sqrt_abar", abar.sqrt().float(), persistent=False)
        self.register_buffer("sqrt_1m_abar", (1 - abar).sqrt().float(), persistent=False)
        self.register_buffer("coef_eps", (betas / (1 - abar).sqrt()).float(), persistent=False)
        self.register_buffer("sqrt_recip_alpha", (1 / (1 - betas).sqrt()).float(), persistent=False)
        post_var = betas * (1 - abar_prev) / (1 - abar)
        self.register_buffer("posterior_var", post_var.float(), persistent=False)
        self._abar64 = abar  # float64 copy for DDIM coefficients (CPU)
        self.last_nfe = 0

    @staticmethod
    def _gather(buf: Tensor, t: Tensor, ndim: int) -> Tensor:
        return buf.to(t.device)[t].reshape(-1, *([1] * (ndim - 1)))

    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise``; x0, noise (N, ...), t (N,)."""
        return (
            self._gather(self.sqrt_abar, t, x0.dim()).to(x0.dtype) * x0
            + self._gather(self.sqrt_1m_abar, t, x0.dim()).to(x0.dtype) * noise
        )

    def loss(self, x0: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Eps-prediction MSE at uniformly drawn timesteps (DDPM's L_simple).

        Args:
            x0: (N, C, H, W) data, scaled to [-1, 1].
            generator: optional ``torch.Generator`` for t and the noise (on its own device; the
                samples are moved to x0's device).

        Returns:
            0-d tensor, the mean squared error over all elements.
        """
        if not isinstance(x0, Tensor) or x0.dim() < 2 or not x0.is_floating_point():
            raise TypeError("x0: expected a floating tensor (N, C, H, W)")
        n = x0.shape[0]
        gdev = generator.device if generator is not None else x0.device
        t = torch.randint(0, self.timesteps, (n,), generator=generator, device=gdev)
        t = t.to(x0.device)
        noise = _randn(x0.shape, generator, x0.device, x0.dtype)
        return F.mse_loss(self.model(self.q_sample(x0, t, noise), t), noise)

    def _param(self) -> Tensor:
        for p in self.model.parameters():
            return p
        return self.betas

    @torch.no_grad()
    def sample_ancestral(
        self,
        shape,
        generator: torch.Generator | None = None,
        progress: bool = False,
        var_type: str = "fixedlarge",
        clip: bool = True,
    ) -> Tensor:
        """DDPM ancestral sampling, T model evaluations.

        ``x_{t-1} = 1/sqrt(alpha_t) (x_t - beta_t / sqrt(1 - abar_t) eps) + sigma_t z``, no noise
        at the last step.

        Args:
            shape: (N, C, H, W).
            generator: optional ``torch.Generator`` for all noise.
            progress: show a tqdm bar (if tqdm is installed).
            var_type: ``"fixedlarge"`` (sigma_t^2 = beta_t, DDPM's CIFAR choice) or
                ``"fixedsmall"`` (the posterior variance).
            clip: clamp the result to [-1, 1].

        Returns:
            (N, C, H, W) samples in the model's dtype.
        """
        shape = _check_shape(shape)
        if var_type not in ("fixedlarge", "fixedsmall"):
            raise ValueError(f"var_type: got {var_type!r}, expected 'fixedlarge' or 'fixedsmall'")
        p = self._param()
        x = _randn(shape, generator, p.device, p.dtype)
        var = self.betas if var_type == "fixedlarge" else self.posterior_var
        steps = range(self.timesteps - 1, -1, -1)
        for i in _progress(steps, progress, self.timesteps, "ancestral"):
            t = torch.full((shape[0],), i, device=p.device, dtype=torch.long)
            eps = self.model(x, t)
            mean = self.sqrt_recip_alpha[i] * (x - self.coef_eps[i] * eps)
            if i > 0:
                x = mean + var[i].sqrt() * _randn(shape, generator, p.device, p.dtype)
            else:
                x = mean
        self.last_nfe = self.timesteps
        return x.clamp(-1, 1) if clip else x

    @torch.no_grad()
    def sample_ddim(
        self,
        shape,
        steps: int = 50,
        eta: float = 0.0,
        generator: torch.Generator | None = None,
        progress: bool = False,
        clip: bool = True,
    ) -> Tensor:
        """DDIM sampling (Song et al. 2021) on ``steps`` evenly spaced timesteps, ``steps`` NFE.

        ``x_prev = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev - sigma^2) eps + sigma z`` with
        ``sigma = eta sqrt((1 - abar_prev) / (1 - abar_t)) sqrt(1 - abar_t / abar_prev)``;
        ``eta = 0`` is deterministic, ``eta = 1`` is DDPM-like.

        Args:
            shape: (N, C, H, W).
            steps: number of timesteps, 1 <= steps <= T.
            eta: stochasticity, >= 0.
            generator, progress, clip: as :meth:`sample_ancestral`.

        Returns:
            (N, C, H, W) samples.
        """
        shape = _check_shape(shape)
        steps = check_positive_int(steps, "steps")
        if steps > self.timesteps:
            raise ValueError(f"steps: got {steps}, expected at most timesteps={self.timesteps}")
        if not eta >= 0:
            raise ValueError(f"eta: got {eta!r}, expected eta >= 0")
        p = self._param()
        if steps == 1:
            seq = [self.timesteps - 1]
        else:  # evenly spaced, both ends included; spacing >= 1 so rounding keeps them distinct
            seq = torch.linspace(0, self.timesteps - 1, steps, dtype=torch.float64)
            seq = seq.round().long().tolist()
        abar = self._abar64
        x = _randn(shape, generator, p.device, p.dtype)
        pairs = list(zip(reversed(seq), [*reversed(seq[:-1]), -1]))
        for i, j in _progress(pairs, progress, len(pairs), "ddim"):
            a_t = abar[i].item()
            a_prev = abar[j].item() if j >= 0 else 1.0
            t = torch.full((shape[0],), i, device=p.device, dtype=torch.long)
            eps = self.model(x, t)
            x0 = (x - (1 - a_t) ** 0.5 * eps) / a_t**0.5
            if clip:
                x0 = x0.clamp(-1, 1)
            sigma = eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)) ** 0.5
            x = a_prev**0.5 * x0 + max(1 - a_prev - sigma**2, 0.0) ** 0.5 * eps
            if sigma > 0 and j >= 0:
                x = x + sigma * _randn(shape, generator, p.device, p.dtype)
        self.last_nfe = len(pairs)
        return x.clamp(-1, 1) if clip else x

    def _vp_coeffs(self):
        """Continuous VP-SDE of this chain (Song et al. 2021): beta(s) = b0 + s (b1 - b0), s in
        [0, 1], with b0 = T * beta_1 and b1 = T * beta_T."""
        b0, b1 = self.timesteps * self.beta_1, self.timesteps * self.beta_T
        return b0, b1

    @torch.no_grad()
    def sample_pf_ode(
        self,
        shape,
        method: str = "dopri5",
        rtol: float = 1e-3,
        atol: float = 1e-3,
        generator: torch.Generator | None = None,
        eps: float = 1e-3,
        options: dict | None = None,
        clip: bool = True,
    ) -> tuple[Tensor, int]:
        """Sample by integrating the probability-flow ODE with a torchdiffeq solver.

        The DDPM chain is the discretisation of the VP-SDE with ``beta(s) = b0 + s (b1 - b0)``,
        ``b0 = T beta_1``, ``b1 = T beta_T`` (Song et al. 2021). Its probability-flow ODE,
        ``dx/ds = -beta(s)/2 (x - eps_theta(x, s (T-1)) / sigma(s))`` with
        ``sigma(s)^2 = 1 - exp(-s b0 - s^2 (b1 - b0) / 2)``, is integrated from s = 1 to
        s = ``eps`` with an adaptive solver. The model sees the continuous timestep
        ``s * (T - 1)``.

        Args:
            shape: (N, C, H, W).
            method, rtol, atol, options: torchdiffeq solver settings (passed explicitly).
            generator: optional ``torch.Generator`` for the initial noise.
            eps: final time (s = 0 is singular).
            clip: clamp the result to [-1, 1].

        Returns:
            ``(x, nfe)``: (N, C, H, W) samples and the number of model evaluations.

        Raises:
            ODESolverError: the solver failed; carries the NFE reached.
        """
        shape = _check_shape(shape)
        if not 0 < eps < 1:
            raise ValueError(f"eps: got {eps!r}, expected 0 < eps < 1")
        p = self._param()
        b0, b1 = self._vp_coeffs()
        tmax = self.timesteps - 1
        model = self.model
        n = shape[0]

        class _Drift(nn.Module):
            def forward(self, s, x):
                beta = b0 + s * (b1 - b0)
                log_abar = -s * b0 - 0.5 * s**2 * (b1 - b0)
                sigma = torch.sqrt(-torch.expm1(log_abar))
                t = (s * tmax).to(x.dtype).expand(n)
                return -0.5 * beta * (x - model(x, t) / sigma)

        func = CountingFunc(_Drift())
        x = _randn(shape, generator, p.device, p.dtype)
        times = torch.tensor([1.0, eps], dtype=p.dtype, device=p.device)
        options = _stop_at(eps, method, options, p)
        try:
            out = _odeint(False)(
                func, x, times, rtol=rtol, atol=atol, method=method, options=options
            )[1]
        except (AssertionError, RuntimeError) as e:
            if is_solver_failure(e):
                self.last_nfe = func.count
                raise ODESolverError(str(e), func.count, "sample") from e
            raise
        self.last_nfe = func.count
        return (out.clamp(-1, 1) if clip else out), func.count


def _stop_at(eps: float, method: str, options: dict | None, like: Tensor) -> dict | None:
    """``options`` with ``eps`` added to ``step_t`` for an adaptive torchdiffeq solver.

    An adaptive step may otherwise end past ``eps`` (torchdiffeq interpolates back to the
    requested time), and its stages would evaluate the drift at s < 0, where sigma(s) is
    NaN: the solve then fails with "underflow in dt". Making the solver step exactly to ``eps``
    keeps every evaluation in [eps, 1]. Fixed-grid methods already end on the last time.
    """
    from torchdiffeq._impl.odeint import SOLVERS
    from torchdiffeq._impl.rk_common import RKAdaptiveStepsizeODESolver

    solver = SOLVERS.get(method)
    if solver is None or not issubclass(solver, RKAdaptiveStepsizeODESolver):
        return options
    options = dict(options or {})
    stop = torch.tensor([eps], dtype=like.dtype, device=like.device)
    given = options.get("step_t")
    if given is not None:
        stop = torch.cat([torch.as_tensor(given, dtype=like.dtype, device=like.device), stop])
    options["step_t"] = stop
    return options
