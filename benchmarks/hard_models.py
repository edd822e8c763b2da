r"""Five hard posteriors for FlowGuide's defaults, and their cached reference moments.

Every model is written the way a user would write it (centered, unstandardized, flat-ish
priors); every reference is of the *posterior*, computed in whatever parameterization gives a
clean answer (exact formulas, quadrature, or a long run of Pyro's NUTS on a reparameterized but
equivalent model) and reported in the constrained space of the user's model.

1. ``linreg`` — linear regression, :math:`N = 100`, design columns
   :math:`(1, x_1, x_2, x_3, x_1 x_2)` with :math:`x_1 \sim \mathcal N(0, 1)` (scale 1),
   :math:`x_2 \sim \mathcal U(60, 100)` (scale 100, never centered), :math:`x_3 \sim
   \mathcal N(0, 10^2)` (scale 10) and the interaction :math:`x_1 x_2` (scale 100);
   :math:`\beta \sim \mathcal N(0, 1000^2 I)` (practically flat), :math:`\sigma \sim
   \mathrm{HalfNormal}(5)`, :math:`y \sim \mathcal N(X\beta, \sigma^2 I)`. Because :math:`x_2` sits
   far from 0 relative to its spread, the intercept and :math:`\beta_2` (and :math:`\beta_1` and
   the interaction's :math:`\beta_4`) have posterior correlation :math:`\approx -0.99`, and the
   posterior sds of the coefficients span three orders of magnitude. Reference: *exact*, by
   quadrature over :math:`\sigma` (given :math:`\sigma` the coefficients are Gaussian:
   precision :math:`A_\sigma = X^\top X/\sigma^2 + I/1000^2`, mean
   :math:`A_\sigma^{-1} X^\top y/\sigma^2`; :math:`p(\sigma \mid y) \propto p(\sigma)\,
   \mathcal N(y; 0, \sigma^2 I + 1000^2 X X^\top)`), checked against NUTS.
2. ``german_credit`` — logistic regression on UCI German credit with **raw** features (scales
   from 1 to about 70) and an intercept (:math:`D = 25`), :math:`\beta \sim \mathcal N(0, 10^2 I)`.
   Reference: NUTS on the QR reparameterization :math:`\theta = R^\ast\beta`
   (:math:`X = Q^\ast R^\ast`, :math:`Q^\ast = Q\sqrt{N - 1}`), whose posterior is well
   conditioned; :math:`\beta = (R^\ast)^{-1}\theta`.
3. ``eight_schools`` — centered eight schools: :math:`\mu \sim \mathcal N(0, 5^2)`,
   :math:`\tau \sim \mathrm{HalfCauchy}(5)`, :math:`\theta_j \sim \mathcal N(\mu, \tau^2)`,
   :math:`y_j \sim \mathcal N(\theta_j, \sigma_j^2)`. Reference: NUTS on the non-centered model
   (:math:`\theta_j = \mu + \tau\tilde\theta_j`).
4. ``funnel`` — Neal's funnel in 10 dimensions (:class:`pyro_nf.targets.NealFunnel`, one site
   ``z = (v, x_1..x_9)``). Reference: exact, :math:`\mathbb E = 0`, :math:`\mathrm{sd}(v) = 3`,
   :math:`\mathrm{sd}(x_i) = \sqrt{\mathbb E e^{v}} = e^{9/4}`.
5. ``hierarchical`` — radon-like varying intercepts and slopes in 50 groups (synthetic, seed
   fixed; 423 rows, group sizes 1 to 61 (median 5), a binary predictor that is 1 in 93 rows, so
   many groups say little about their slope), centered: :math:`a_j \sim \mathcal N(\mu_a,
   \sigma_a^2)`, :math:`b_j \sim \mathcal N(\mu_b, \sigma_b^2)`, :math:`y_i \sim \mathcal
   N(a_{g_i} + b_{g_i} x_i, \sigma_y^2)`, :math:`\mu \sim \mathcal N(0, 5^2)`,
   :math:`\sigma \sim \mathrm{HalfNormal}(1)`; :math:`D = 105`. Reference: NUTS on the
   non-centered model.

NUTS references use Pyro's NUTS in float64, 4 chains run one after another (seeds
``seed + c``), and are rejected unless split-:math:`\hat R \le 1.01` for every coordinate. They
are cached in ``benchmarks/reference/hard_<model>.json`` (means, sds, R-hat, bulk ESS,
settings, seed), so that the benchmark and CI never rerun NUTS.

References:
    Gelman et al., *Bayesian Data Analysis*, 3rd ed., §5.5 (eight schools), §14 (regression).
    Gelman & Hill, *Data Analysis Using Regression and Multilevel Models*, 2007 (radon).
    Neal, *Slice Sampling*, Annals of Statistics 31(3), 2003 (the funnel).
    Hoffman & Gelman, *The No-U-Turn Sampler*, JMLR 15, 2014.
    Stan Development Team, *Stan User's Guide*, "QR reparameterization".
"""

from __future__ import annotations

import json
import math
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pyro
import pyro.distributions as dist
import torch

import pyro_nf
from pyro_nf.diagnostics.inference_data import flat_convergence, flat_draws
from pyro_nf.diagnostics.reference import run_nuts

__all__ = [
    "MODELS",
    "REFERENCE_DIR",
    "HardProblem",
    "Reference",
    "eight_schools_centered",
    "eight_schools_noncentered",
    "flatten",
    "get_problem",
    "german_credit_data",
    "hierarchical_centered",
    "hierarchical_data",
    "hierarchical_noncentered",
    "linreg_data",
    "linreg_exact_reference",
    "linreg_model",
    "load_reference",
    "logistic_model",
    "compute_reference",
    "reference_path",
    "save_reference",
]

#: Cached references (committed).
REFERENCE_DIR = Path(__file__).resolve().parent / "reference"

#: Model names, in the order the benchmark runs them.
MODELS = ("linreg", "german_credit", "eight_schools", "funnel", "hierarchical")

LINREG_N = 100
LINREG_PRIOR_SCALE = 1000.0
LINREG_SIGMA_PRIOR = 5.0
LINREG_TRUE_BETA = (2.0, 0.5, 0.03, -0.2, 0.01)
LINREG_TRUE_SIGMA = 1.0
LINREG_NAMES = ("1", "x1", "x2", "x3", "x1*x2")

GERMAN_PRIOR_SCALE = 10.0

EIGHT_SCHOOLS_Y = (28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0)
EIGHT_SCHOOLS_SIGMA = (15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0)

FUNNEL_DIM = 10

HIER_GROUPS = 50
HIER_TRUE = {"mu_a": 1.5, "mu_b": -0.7, "sigma_a": 0.4, "sigma_b": 0.25, "sigma_y": 0.75}


# -- models (as a user writes them) --------------------------------------------------------------


def linreg_model(x: torch.Tensor, y: torch.Tensor) -> None:
    r"""Linear regression with a very wide prior: :math:`\beta \sim \mathcal N(0, 1000^2 I)`,
    :math:`\sigma \sim \mathrm{HalfNormal}(5)`, :math:`y \sim \mathcal N(X\beta, \sigma^2 I)`.

    ``x``: design ``(N, P)`` (intercept column included), ``y``: ``(N,)``. Vectorizes over
    particles (``beta @ x.T``).

    Example:
        >>> x, y = linreg_data()
        >>> tr = pyro.poutine.trace(linreg_model).get_trace(x, y)
        >>> tr.nodes["beta"]["value"].shape, x.shape
        (torch.Size([5]), torch.Size([100, 5]))
    """
    beta = pyro.sample(
        "beta", dist.Normal(x.new_zeros(x.shape[-1]), LINREG_PRIOR_SCALE).to_event(1)
    )
    sigma = pyro.sample("sigma", dist.HalfNormal(x.new_tensor(LINREG_SIGMA_PRIOR)))
    pyro.sample("y", dist.Normal(beta @ x.T, sigma.unsqueeze(-1)).to_event(1), obs=y)


def logistic_model(x: torch.Tensor, y: torch.Tensor, prior_scale: float = GERMAN_PRIOR_SCALE):
    r"""Logistic regression :math:`y \sim \mathrm{Bernoulli}(\mathrm{sigmoid}(X\beta))`,
    :math:`\beta \sim \mathcal N(0, \mathrm{prior\_scale}^2 I)`; ``x`` ``(N, P)``, ``y`` ``(N,)``.

    Example:
        >>> x, y = torch.randn(20, 3), torch.randint(0, 2, (20,)).float()
        >>> pyro.poutine.trace(logistic_model).get_trace(x, y).nodes["beta"]["value"].shape
        torch.Size([3])
    """
    beta = pyro.sample("beta", dist.Normal(x.new_zeros(x.shape[-1]), prior_scale).to_event(1))
    pyro.sample("y", dist.Bernoulli(logits=beta @ x.T).to_event(1), obs=y)


def _logistic_qr_model(
    q: torch.Tensor, y: torch.Tensor, prior_tril: torch.Tensor
) -> None:  # NUTS only
    theta = pyro.sample(
        "theta", dist.MultivariateNormal(q.new_zeros(q.shape[-1]), scale_tril=prior_tril)
    )
    pyro.sample("y", dist.Bernoulli(logits=theta @ q.T).to_event(1), obs=y)


def _qr_reparam(
    x: torch.Tensor, prior_scale: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""Scaled thin QR :math:`X = Q^\ast R^\ast` and the prior of :math:`\theta = R^\ast\beta`
    when :math:`\beta \sim \mathcal N(0, s^2 I)`: :math:`\theta \sim \mathcal N(0, s^2 R^\ast
    R^{\ast\top})`. Returns ``(Q*, R*, chol(s² R* R*ᵀ), (R*)⁻¹)``."""
    qm, r = torch.linalg.qr(x)
    scale_n = math.sqrt(x.shape[0] - 1)
    q_star, r_star = qm * scale_n, r / scale_n
    prior_tril = torch.linalg.cholesky(prior_scale**2 * r_star @ r_star.T)
    return q_star, r_star, prior_tril, torch.linalg.inv(r_star)


def _linreg_qr_model(q: torch.Tensor, y: torch.Tensor, prior_tril: torch.Tensor) -> None:
    theta = pyro.sample(
        "theta", dist.MultivariateNormal(q.new_zeros(q.shape[-1]), scale_tril=prior_tril)
    )
    sigma = pyro.sample("sigma", dist.HalfNormal(q.new_tensor(LINREG_SIGMA_PRIOR)))
    pyro.sample("y", dist.Normal(theta @ q.T, sigma.unsqueeze(-1)).to_event(1), obs=y)


def eight_schools_centered(y: torch.Tensor, sigma: torch.Tensor) -> None:
    r"""Centered eight schools: :math:`\mu \sim \mathcal N(0, 5^2)`,
    :math:`\tau \sim \mathrm{HalfCauchy}(5)`, :math:`\theta_j \sim \mathcal N(\mu, \tau^2)`,
    :math:`y_j \sim \mathcal N(\theta_j, \sigma_j^2)`; ``y``, ``sigma``: ``(8,)``.

    Example:
        >>> y, s = torch.tensor(EIGHT_SCHOOLS_Y), torch.tensor(EIGHT_SCHOOLS_SIGMA)
        >>> pyro.poutine.trace(eight_schools_centered).get_trace(y, s).nodes["theta"]["value"].shape
        torch.Size([8])
    """
    mu = pyro.sample("mu", dist.Normal(y.new_tensor(0.0), 5.0))
    tau = pyro.sample("tau", dist.HalfCauchy(y.new_tensor(5.0)))
    with pyro.plate("schools", y.shape[-1]):
        theta = pyro.sample("theta", dist.Normal(mu, tau))
        pyro.sample("obs", dist.Normal(theta, sigma), obs=y)


def eight_schools_noncentered(y: torch.Tensor, sigma: torch.Tensor) -> None:
    r"""Non-centered eight schools (same posterior over :math:`\mu, \tau, \theta`; NUTS only)."""
    mu = pyro.sample("mu", dist.Normal(y.new_tensor(0.0), 5.0))
    tau = pyro.sample("tau", dist.HalfCauchy(y.new_tensor(5.0)))
    with pyro.plate("schools", y.shape[-1]):
        theta_raw = pyro.sample("theta_raw", dist.Normal(y.new_tensor(0.0), 1.0))
        theta = pyro.deterministic("theta", mu + tau * theta_raw)
        pyro.sample("obs", dist.Normal(theta, sigma), obs=y)


def hierarchical_centered(
    x: torch.Tensor, group: torch.Tensor, y: torch.Tensor, num_groups: int = HIER_GROUPS
) -> None:
    r"""Centered varying intercepts and slopes (radon-like).

    :math:`\mu_a, \mu_b \sim \mathcal N(0, 5^2)`, :math:`\sigma_a, \sigma_b, \sigma_y \sim
    \mathrm{HalfNormal}(1)`, :math:`a_j \sim \mathcal N(\mu_a, \sigma_a^2)`,
    :math:`b_j \sim \mathcal N(\mu_b, \sigma_b^2)` (``num_groups`` of each),
    :math:`y_i \sim \mathcal N(a_{g_i} + b_{g_i} x_i, \sigma_y^2)`. ``x``, ``y``: ``(N,)``
    floats, ``group``: ``(N,)`` integers in ``[0, num_groups)``.

    Example:
        >>> x, g, y = hierarchical_data()
        >>> tr = pyro.poutine.trace(hierarchical_centered).get_trace(x, g, y)
        >>> tr.nodes["a"]["value"].shape, tr.nodes["b"]["value"].shape
        (torch.Size([50]), torch.Size([50]))
    """
    zero = y.new_tensor(0.0)
    mu_a = pyro.sample("mu_a", dist.Normal(zero, 5.0))
    mu_b = pyro.sample("mu_b", dist.Normal(zero, 5.0))
    sigma_a = pyro.sample("sigma_a", dist.HalfNormal(zero + 1.0))
    sigma_b = pyro.sample("sigma_b", dist.HalfNormal(zero + 1.0))
    sigma_y = pyro.sample("sigma_y", dist.HalfNormal(zero + 1.0))
    with pyro.plate("groups", num_groups):
        a = pyro.sample("a", dist.Normal(mu_a, sigma_a))
        b = pyro.sample("b", dist.Normal(mu_b, sigma_b))
    with pyro.plate("obs", y.shape[-1]):
        pyro.sample("y", dist.Normal(a[..., group] + b[..., group] * x, sigma_y), obs=y)


def hierarchical_noncentered(
    x: torch.Tensor, group: torch.Tensor, y: torch.Tensor, num_groups: int = HIER_GROUPS
) -> None:
    """The non-centered form of :func:`hierarchical_centered` (same posterior; NUTS only)."""
    zero = y.new_tensor(0.0)
    mu_a = pyro.sample("mu_a", dist.Normal(zero, 5.0))
    mu_b = pyro.sample("mu_b", dist.Normal(zero, 5.0))
    sigma_a = pyro.sample("sigma_a", dist.HalfNormal(zero + 1.0))
    sigma_b = pyro.sample("sigma_b", dist.HalfNormal(zero + 1.0))
    sigma_y = pyro.sample("sigma_y", dist.HalfNormal(zero + 1.0))
    with pyro.plate("groups", num_groups):
        a_raw = pyro.sample("a_raw", dist.Normal(zero, 1.0))
        b_raw = pyro.sample("b_raw", dist.Normal(zero, 1.0))
        a = pyro.deterministic("a", mu_a + sigma_a * a_raw)
        b = pyro.deterministic("b", mu_b + sigma_b * b_raw)
    with pyro.plate("obs", y.shape[-1]):
        pyro.sample("y", dist.Normal(a[..., group] + b[..., group] * x, sigma_y), obs=y)


# -- data -----------------------------------------------------------------------------------------


def linreg_data(
    n: int = LINREG_N, seed: int = 0, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """The badly scaled regression design ``(N, 5)`` and response ``(N,)`` (seeded).

    Example:
        >>> x, y = linreg_data()
        >>> [round(float(c), 1) for c in x.abs().mean(0)]
        [1.0, 0.9, 79.9, 9.1, 72.7]
    """
    g = torch.Generator().manual_seed(seed)
    x1 = torch.randn(n, generator=g, dtype=torch.float64)
    x2 = 60.0 + 40.0 * torch.rand(n, generator=g, dtype=torch.float64)
    x3 = 10.0 * torch.randn(n, generator=g, dtype=torch.float64)
    x = torch.stack([torch.ones_like(x1), x1, x2, x3, x1 * x2], dim=-1)
    beta = torch.tensor(LINREG_TRUE_BETA, dtype=torch.float64)
    y = x @ beta + LINREG_TRUE_SIGMA * torch.randn(n, generator=g, dtype=torch.float64)
    return x.to(dtype), y.to(dtype)


def german_credit_data(dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw German credit features with an intercept column last, ``(1000, 25)``, and labels.

    Raises ``FileNotFoundError`` if the data are absent from
    :func:`pyro_nf.datasets.default_data_dir`.
    """
    data = pyro_nf.datasets.load_german_credit(standardize=False, intercept=True, dtype=dtype)
    return data.x, data.y


def hierarchical_data(
    seed: int = 1, num_groups: int = HIER_GROUPS, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Synthetic radon-like data ``(x, group, y)`` from the model with :data:`HIER_TRUE` (seeded).

    Group sizes are ``1 + Geometric(1/8)`` (many small groups, a few large), ``x`` is 1 with
    probability 0.2 (like the radon "floor" indicator).

    Example:
        >>> x, g, y = hierarchical_data()
        >>> x.shape == g.shape == y.shape, int(g.max()) + 1, int(torch.bincount(g).min())
        (True, 50, 1)
    """
    g = torch.Generator().manual_seed(seed)
    p = 1.0 / 8.0
    u = torch.rand(num_groups, generator=g, dtype=torch.float64)
    sizes = 1 + torch.floor(torch.log1p(-u) / math.log1p(-p)).long()
    group = torch.repeat_interleave(torch.arange(num_groups), sizes)
    n = int(group.numel())
    t = HIER_TRUE
    a = t["mu_a"] + t["sigma_a"] * torch.randn(num_groups, generator=g, dtype=torch.float64)
    b = t["mu_b"] + t["sigma_b"] * torch.randn(num_groups, generator=g, dtype=torch.float64)
    x = (torch.rand(n, generator=g, dtype=torch.float64) < 0.2).to(torch.float64)
    y = a[group] + b[group] * x + t["sigma_y"] * torch.randn(n, generator=g, dtype=torch.float64)
    return x.to(dtype), group, y.to(dtype)


# -- problems ---------------------------------------------------------------------------------


@dataclass
class Reference:
    """Reference posterior moments of the coordinates of a problem (constrained space).

    Attributes:
        model: problem name.
        names: ``P`` coordinate names, e.g. ``"beta[x2]"``, ``"a[7]"``.
        mean, sd: lists of length ``P``.
        source: ``"exact"``, ``"quadrature"`` or ``"nuts"``.
        rhat, ess: split R-hat and bulk ESS per coordinate (NUTS), else empty (rank-normalized,
            ``az.rhat``/``az.ess``, for references computed since run_nuts returns ArviZ data).
        settings: how it was produced (sampler, chains, draws, seed, versions, time, ...).
        checks: extra evidence (e.g. NUTS vs quadrature differences), free-form.
    """

    model: str
    names: list[str]
    mean: list[float]
    sd: list[float]
    source: str
    rhat: list[float] = field(default_factory=list)
    ess: list[float] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    checks: dict[str, Any] = field(default_factory=dict)

    def save(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {k: getattr(self, k) for k in self.__dataclass_fields__}
        path.write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: Path) -> Reference:
        return cls(**json.loads(path.read_text(encoding="utf-8")))

    def tensors(self, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mean, sd)`` as tensors of shape ``(P,)``."""
        return torch.tensor(self.mean, dtype=dtype), torch.tensor(self.sd, dtype=dtype)


@dataclass
class HardProblem:
    """A user's model, its arguments, and how its latent sites map to reported coordinates.

    Attributes:
        name: short name (``"linreg"`` ...), ``title``: one line for tables.
        model: the model as a user writes it (centered, unstandardized).
        args: the model's positional arguments (float32 unless asked otherwise).
        sites: latent site names in model order (their flattened values, concatenated, are the
            reported coordinates).
        names: the ``P`` coordinate names.
        max_plate_nesting: for vectorized particles.
        notes: what is hard about it.
    """

    name: str
    title: str
    model: Callable[..., Any]
    args: tuple
    sites: tuple[str, ...]
    names: list[str]
    max_plate_nesting: int
    notes: str = ""

    def coords(self, samples: dict[str, torch.Tensor], n: int) -> torch.Tensor:
        """Concatenate ``samples[site].reshape(n, -1)`` over :attr:`sites` → ``(n, P)``."""
        return flatten(samples, self.sites, n)


def flatten(samples: dict[str, torch.Tensor], sites: Sequence[str], n: int) -> torch.Tensor:
    """``(n, P)``: the sites' draws, each flattened, concatenated in ``sites`` order."""
    return torch.cat([samples[s].reshape(n, -1).double() for s in sites], dim=-1)


def get_problem(name: str, dtype: torch.dtype = torch.float32) -> HardProblem:
    """Build problem ``name`` (one of :data:`MODELS`).

    Example:
        >>> p = get_problem("eight_schools")
        >>> p.sites, len(p.names)
        (('mu', 'tau', 'theta'), 10)
    """
    if name == "linreg":
        x, y = linreg_data(dtype=dtype)
        return HardProblem(
            "linreg",
            "linear regression, flat prior, scales 1-100, corr -0.99",
            linreg_model,
            (x, y),
            ("beta", "sigma"),
            [f"beta[{c}]" for c in LINREG_NAMES] + ["sigma"],
            0,
            "unstandardized predictors (x2 ~ U(60, 100) never centered), an interaction, a "
            "N(0, 1000^2) prior: posterior sds span 3 orders of magnitude, two pairs of "
            "coefficients correlated about -0.99",
        )
    if name == "german_credit":
        x, y = german_credit_data(dtype)
        return HardProblem(
            "german_credit",
            "logistic regression, German credit, raw features",
            partial(logistic_model, prior_scale=GERMAN_PRIOR_SCALE),
            (x, y),
            ("beta",),
            [f"beta[{j:02d}]" for j in range(1, 25)] + ["beta[intercept]"],
            0,
            f"24 raw features (scales 1 to ~70) + intercept, beta ~ N(0, {GERMAN_PRIOR_SCALE:g}^2)",
        )
    if name == "eight_schools":
        y = torch.tensor(EIGHT_SCHOOLS_Y, dtype=dtype)
        s = torch.tensor(EIGHT_SCHOOLS_SIGMA, dtype=dtype)
        return HardProblem(
            "eight_schools",
            "eight schools, centered",
            eight_schools_centered,
            (y, s),
            ("mu", "tau", "theta"),
            ["mu", "tau"] + [f"theta[{j}]" for j in range(8)],
            1,
            "centered: a funnel between log tau and theta",
        )
    if name == "funnel":
        target = pyro_nf.targets.NealFunnel(FUNNEL_DIM)
        model = pyro_nf.targets.as_pyro_model(target, name="z", dtype=dtype)
        return HardProblem(
            "funnel",
            "Neal's funnel, 10-D",
            model,
            (),
            ("z",),
            ["v"] + [f"x[{i}]" for i in range(1, FUNNEL_DIM)],
            0,
            "v ~ N(0, 3^2), x_i ~ N(0, e^v): scales e^{-4.5}..e^{4.5} in one posterior",
        )
    if name == "hierarchical":
        x, grp, y = hierarchical_data(dtype=dtype)
        return HardProblem(
            "hierarchical",
            "varying intercepts + slopes, 50 groups, centered",
            hierarchical_centered,
            (x, grp, y),
            ("mu_a", "mu_b", "sigma_a", "sigma_b", "sigma_y", "a", "b"),
            ["mu_a", "mu_b", "sigma_a", "sigma_b", "sigma_y"]
            + [f"a[{j}]" for j in range(HIER_GROUPS)]
            + [f"b[{j}]" for j in range(HIER_GROUPS)],
            1,
            f"{y.numel()} rows in 50 groups of 1-{int(torch.bincount(grp).max())}, x = 1 in "
            f"{int(x.sum())} rows: many slopes barely identified, centered (funnels in sigma_b)",
        )
    raise ValueError(f"name: expected one of {MODELS}, got {name!r}")


# -- references -------------------------------------------------------------------------------


def reference_path(name: str) -> Path:
    """``benchmarks/reference/hard_<name>.json``."""
    return REFERENCE_DIR / f"hard_{name}.json"


def load_reference(name: str) -> Reference | None:
    """The cached reference of problem ``name``, or ``None`` if it was never computed."""
    path = reference_path(name)
    return Reference.load(path) if path.exists() else None


def _versions() -> dict[str, str]:
    return {
        "pyro": pyro.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def _nuts_reference(
    name: str,
    names: Sequence[str],
    idata: Any,
    var_names: Sequence[str],
    max_rhat: float,
    **extra: Any,
) -> Reference:
    """The moments of the coordinates ``var_names`` (flattened, in order: ``names``) of the
    ``run_nuts`` draws ``idata``, with their rank-normalized R-hat and bulk ESS; raise if an
    R-hat exceeds ``max_rhat``."""
    draws, _ = flat_draws(idata, var_names)
    conv = flat_convergence(idata, var_names)
    rhat, ess = conv["rhat"], conv["ess_bulk"]
    info = {
        **dict(idata.attrs),
        "ess_tail": [round(float(e), 1) for e in conv["ess_tail"]],
        "coords": f"posterior variables {list(var_names)}, flattened",
        **extra,
    }
    if not bool((rhat <= max_rhat).all()):
        worst = int(rhat.argmax())
        raise RuntimeError(
            f"{name}: NUTS rank-normalized R-hat up to {float(rhat.max()):.4f} > {max_rhat} "
            f"({names[worst]}); run longer before trusting it"
        )
    flat = draws.reshape(-1, draws.shape[-1])
    return Reference(
        model=name,
        names=list(names),
        mean=[float(m) for m in flat.mean(0)],
        sd=[float(s) for s in flat.std(0)],
        source="nuts",
        rhat=[round(float(r), 5) for r in rhat],
        ess=[round(float(e), 1) for e in ess],
        settings=info,
    )


def linreg_exact_reference(grid: int = 4001) -> Reference:
    r"""Exact posterior moments of :func:`linreg_model` by quadrature over :math:`\log\sigma`
    (float64; the coefficients are Gaussian given :math:`\sigma`). ``checks`` holds the
    posterior correlation matrix of :math:`\beta`."""
    x, y = linreg_data(dtype=torch.float64)
    n, p = x.shape
    xtx, xty, yty = x.T @ x, x.T @ y, y @ y
    # log sigma grid: the posterior of sigma is concentrated near its OLS estimate
    resid = y - x @ torch.linalg.lstsq(x, y.unsqueeze(-1)).solution.squeeze(-1)
    s_hat = float((resid @ resid / (n - p)).sqrt())
    log_s = torch.linspace(math.log(s_hat) - 1.5, math.log(s_hat) + 1.5, grid, dtype=torch.float64)
    eye = torch.eye(p, dtype=torch.float64)
    logw, means, covs = [], [], []
    tau2 = LINREG_PRIOR_SCALE**2
    for ls in log_s:
        s2 = math.exp(2 * float(ls))
        prec = xtx / s2 + eye / tau2
        chol = torch.linalg.cholesky(prec)
        b = xty / s2
        m = torch.cholesky_solve(b.unsqueeze(-1), chol).squeeze(-1)
        logdet = 2 * chol.diagonal().log().sum()
        # log N(y; 0, s2 I + tau2 X X^T) by the Woodbury identity / Gaussian integral
        log_marg = (
            -0.5 * n * math.log(2 * math.pi * s2)
            - 0.5 * p * math.log(tau2)
            - 0.5 * logdet
            - 0.5 * yty / s2
            + 0.5 * b @ m
        )
        log_prior = dist.HalfNormal(torch.tensor(LINREG_SIGMA_PRIOR, dtype=torch.float64)).log_prob(
            ls.exp()
        )
        logw.append(log_marg + log_prior + ls)  # + ls: d sigma = sigma d log sigma
        means.append(m)
        covs.append(torch.cholesky_inverse(chol))
    logw_t = torch.stack(logw)
    w = torch.softmax(logw_t, 0)
    if float(w[0]) > 1e-12 or float(w[-1]) > 1e-12:
        raise RuntimeError("linreg quadrature: the sigma grid does not cover the posterior")
    m_all, c_all = torch.stack(means), torch.stack(covs)
    mean_b = (w[:, None] * m_all).sum(0)
    second = (w[:, None, None] * (c_all + m_all[:, :, None] * m_all[:, None, :])).sum(0)
    cov_b = second - mean_b[:, None] * mean_b[None, :]
    sig = log_s.exp()
    mean_s = float((w * sig).sum())
    sd_s = float(((w * sig**2).sum() - mean_s**2) ** 0.5)
    sd_b = cov_b.diagonal().sqrt()
    corr = cov_b / (sd_b[:, None] * sd_b[None, :])
    return Reference(
        model="linreg",
        names=[f"beta[{c}]" for c in LINREG_NAMES] + ["sigma"],
        mean=[float(v) for v in mean_b] + [mean_s],
        sd=[float(v) for v in sd_b] + [sd_s],
        source="quadrature",
        settings={
            "method": "exact: beta | sigma Gaussian; sigma by quadrature on a log grid",
            "grid_points": grid,
            "log_sigma_range": [float(log_s[0]), float(log_s[-1])],
            "dtype": "float64",
            "data_seed": 0,
            **_versions(),
        },
        checks={
            "beta_correlation": [[round(float(c), 5) for c in row] for row in corr],
            "min_correlation": float(corr.min()),
        },
    )


def compute_reference(name: str, *, quick: bool = False, seed: int = 0) -> Reference:
    """Compute the reference of problem ``name`` (slow: NUTS; ``quick`` for a short smoke run
    whose R-hat is not enforced). Saves nothing (see :func:`save_reference`)."""
    problem = get_problem(name, dtype=torch.float64)
    scale = 0.05 if quick else 1.0
    max_rhat = float("inf") if quick else 1.01

    def n(k: int) -> int:
        return max(50, int(k * scale))

    if name == "funnel":
        sd_x = math.exp(9.0 / 4.0)
        g = torch.Generator().manual_seed(seed)
        exact = pyro_nf.targets.NealFunnel(FUNNEL_DIM).sample(
            1_000_000, generator=g, dtype=torch.float64
        )
        return Reference(
            model="funnel",
            names=problem.names,
            mean=[0.0] * FUNNEL_DIM,
            sd=[3.0] + [sd_x] * (FUNNEL_DIM - 1),
            source="exact",
            settings={"method": "analytic: v ~ N(0, 3^2), sd(x_i) = sqrt(E e^v) = e^(9/4)"},
            checks={
                "exact_sampling_1e6": {
                    "seed": seed,
                    "mean": [round(float(v), 4) for v in exact.mean(0)],
                    "sd": [round(float(v), 4) for v in exact.std(0)],
                }
            },
        )
    if name == "linreg":
        ref = linreg_exact_reference()
        x, y = problem.args
        q_star, r_star, prior_tril, r_inv = _qr_reparam(x, LINREG_PRIOR_SCALE)

        # start the chains around the least-squares fit (prior draws of a N(0, 1000^2) prior
        # are so far out that NUTS's warmup crawls for hours), dispersed by ~3 posterior sds
        theta_ls = q_star.T @ y / (x.shape[0] - 1)
        resid = y - q_star @ theta_ls
        sigma_ls = float((resid @ resid / (x.shape[0] - x.shape[1])).sqrt())
        se = sigma_ls / math.sqrt(x.shape[0] - 1)

        def init_values(c: int) -> dict[str, torch.Tensor]:
            g = torch.Generator().manual_seed(1000 + seed + c)
            jitter = torch.randn(theta_ls.shape, generator=g, dtype=theta_ls.dtype)
            u = float(torch.rand((), generator=g, dtype=torch.float64))
            return {
                "theta": theta_ls + 3.0 * se * jitter,
                "sigma": torch.tensor(sigma_ls * (0.7 + 0.6 * u), dtype=theta_ls.dtype),
            }

        def lin_beta(samples: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            return {"beta": samples["theta"] @ r_inv.T.to(samples["theta"])}

        out = run_nuts(
            _linreg_qr_model,
            q_star,
            y,
            prior_tril,
            derived=lin_beta,
            warmup=n(1000),
            num_samples=n(2500),
            seed=seed,
            target_accept_prob=0.9,
            init_values=init_values,
        )
        nuts = _nuts_reference(
            name,
            problem.names,
            out,
            ["beta", "sigma"],
            max_rhat,
            reparameterization="QR: theta = R* beta (X = Q* R*, Q* = Q sqrt(N-1))",
        )
        mean, sd = ref.tensors()
        nm, ns = nuts.tensors()
        ref.checks["nuts"] = {
            "mean": nuts.mean,
            "sd": nuts.sd,
            "rhat": nuts.rhat,
            "ess": nuts.ess,
            "settings": nuts.settings,
            "max_abs_mean_diff_over_sd": float(((nm - mean).abs() / sd).max()),
            "max_abs_log_sd_ratio": float((ns / sd).log().abs().max()),
        }
        return ref
    if name == "german_credit":
        x, y = problem.args
        q_star, r_star, prior_tril, r_inv = _qr_reparam(x, GERMAN_PRIOR_SCALE)

        def to_beta(samples: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            return {"beta": samples["theta"] @ r_inv.T.to(samples["theta"])}

        out = run_nuts(
            _logistic_qr_model,
            q_star,
            y,
            prior_tril,
            derived=to_beta,
            warmup=n(1000),
            num_samples=n(2000),
            seed=seed,
            target_accept_prob=0.9,
        )
        return _nuts_reference(
            name,
            problem.names,
            out,
            ["beta"],
            max_rhat,
            reparameterization="QR: theta = R* beta (X = Q* R*, Q* = Q sqrt(N-1))",
        )
    if name == "eight_schools":
        # theta = mu + tau * theta_raw is the model's deterministic site: in the posterior
        out = run_nuts(
            eight_schools_noncentered,
            *problem.args,
            warmup=n(1000),
            num_samples=n(4000),
            seed=seed,
            target_accept_prob=0.95,
        )
        return _nuts_reference(
            name,
            problem.names,
            out,
            ["mu", "tau", "theta"],
            max_rhat,
            reparameterization="non-centered: theta = mu + tau * theta_raw",
        )
    if name == "hierarchical":
        # a and b are the model's deterministic sites: in the posterior
        out = run_nuts(
            hierarchical_noncentered,
            *problem.args,
            warmup=n(700),
            num_samples=n(2500),
            seed=seed,
            target_accept_prob=0.95,
        )
        return _nuts_reference(
            name,
            problem.names,
            out,
            [*problem.sites[:5], "a", "b"],
            max_rhat,
            reparameterization="non-centered: a = mu_a + sigma_a a_raw, b = mu_b + sigma_b b_raw",
        )
    raise ValueError(f"name: expected one of {MODELS}, got {name!r}")


def save_reference(ref: Reference) -> Path:
    """Write ``ref`` to ``benchmarks/reference/hard_<model>.json``."""
    return ref.save(reference_path(ref.model))


if __name__ == "__main__":  # pragma: no cover - one-off: python benchmarks/hard_models.py NAME...
    import argparse

    parser = argparse.ArgumentParser(description="Compute and cache the hard-posterior references.")
    parser.add_argument("models", nargs="*", choices=MODELS, default=list(MODELS))
    parser.add_argument("--quick", action="store_true", help="short NUTS runs, not saved")
    parser.add_argument("--seed", type=int, default=0)
    opts = parser.parse_args()
    torch.set_num_threads(1)
    for model_name in opts.models:
        t0 = time.perf_counter()
        reference = compute_reference(model_name, quick=opts.quick, seed=opts.seed)
        print(
            f"{model_name}: source={reference.source} max R-hat="
            f"{max(reference.rhat) if reference.rhat else 'n/a'} min ESS="
            f"{min(reference.ess) if reference.ess else 'n/a'} "
            f"({time.perf_counter() - t0:.0f}s)",
            flush=True,
        )
        if not opts.quick:
            print(f"  wrote {save_reference(reference)}")
