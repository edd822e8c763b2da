r"""Target densities with known answers, for fitting flows by reverse KL and for benchmarks.

**The four 2D energies of Rezende & Mohamed (2015, Table 1).** Each is an unnormalized density
:math:`p(z) \propto \exp(-U(z))` on :math:`z = (z_1, z_2) \in \mathbb{R}^2`, with

.. math::

    w_1(z) = \sin\!\left(\tfrac{2\pi z_1}{4}\right),\quad
    w_2(z) = 3\exp\!\left(-\tfrac12\left(\tfrac{z_1 - 1}{0.6}\right)^2\right),\quad
    w_3(z) = 3\,\sigma\!\left(\tfrac{z_1 - 1}{0.3}\right),

    U_1(z) = \tfrac12\left(\tfrac{\lVert z\rVert - 2}{0.4}\right)^2
      - \log\left(e^{-\frac12\left(\frac{z_1 - 2}{0.6}\right)^2}
                + e^{-\frac12\left(\frac{z_1 + 2}{0.6}\right)^2}\right),

    U_2(z) = \tfrac12\left(\tfrac{z_2 - w_1}{0.4}\right)^2 + c(z),

    U_3(z) = -\log\left(e^{-\frac12\left(\frac{z_2 - w_1}{0.35}\right)^2}
                + e^{-\frac12\left(\frac{z_2 - w_1 + w_2}{0.35}\right)^2}\right) + c(z),

    U_4(z) = -\log\left(e^{-\frac12\left(\frac{z_2 - w_1}{0.4}\right)^2}
                + e^{-\frac12\left(\frac{z_2 - w_1 + w_3}{0.35}\right)^2}\right) + c(z),

with :math:`\sigma` the logistic sigmoid; the log-sums are evaluated with ``logaddexp``.

*pyro-nf's confinement convention.* As printed in the paper, :math:`U_2, U_3, U_4` do not depend
on the size of :math:`z_1` and :math:`\exp(-U)` is not integrable. pyro-nf adds the weak
confinement :math:`c(z) = \tfrac12 (z_1/4)^2`, i.e. multiplies the density by the *unnormalized*
Gaussian factor :math:`\exp(-\tfrac12 (z_1/4)^2)` (the shape of :math:`\mathcal N(z_1; 0, 4^2)`
without its constant :math:`1/(4\sqrt{2\pi})`), so :math:`U` stays an energy. :math:`U_1` is
unchanged (it is normalizable as is). Every ``log_normalizer`` below is

.. math::

    \log Z = \log \int_{\mathbb{R}^2} \exp(-U(z))\, dz

*of exactly the energy implemented here* (confinement included, no other constant), so that
``log_prob(z) - log_normalizer`` is the normalized log-density.

For :math:`U_2, U_3, U_4` the inner integral over :math:`z_2` is a Gaussian integral whose value
does not depend on the shifts :math:`w_i`, which gives closed forms:
:math:`Z_2 = 0.4\sqrt{2\pi}\cdot 4\sqrt{2\pi} = 3.2\pi`, :math:`Z_3 = 2\cdot 0.35 \cdot 4 \cdot
2\pi = 5.6\pi` and :math:`Z_4 = (0.4 + 0.35)\cdot 4 \cdot 2\pi = 6\pi`. :math:`Z_1` has no closed
form. The values (:data:`LOG_NORMALIZERS`) are

======  ===================  ==============================================
target  :math:`\log Z`       how it is known
======  ===================  ==============================================
U1      1.87750162611        2D quadrature (Cartesian and polar agree, ~1e-12)
U2      2.30788069565508     :math:`\log(3.2\pi)`, exact; quadrature agrees
U3      2.86749648359051     :math:`\log(5.6\pi)`, exact; quadrature agrees
U4      2.93648935507746     :math:`\log(6\pi)`, exact; quadrature agrees
======  ===================  ==============================================

and :func:`quadrature_log_normalizer` recomputes any of them from scratch.

**Neal's funnel** in :math:`D` dimensions, :math:`z = (v, x_1, \dots, x_{D-1})`:
:math:`v \sim \mathcal N(0, 3^2)` and :math:`x_i \mid v \sim \mathcal N(0, e^{v})` (variance
:math:`e^v`). Its log density is exact and normalized (:math:`\log Z = 0`) and it has an exact
sampler.

**Two moons** (:func:`two_moons`) is a data generator (two interleaving half circles plus
Gaussian noise, like scikit-learn's ``make_moons``), not a density: it has no closed-form
``log_prob`` and therefore is a plain function, not a :class:`Target`.

:func:`get_target` builds a :class:`Target` by name and :func:`as_pyro_model` wraps one as a
Pyro model with a single latent site, to be fitted with any Pyro guide.

Example:
    >>> import torch
    >>> target = get_target("U1")
    >>> float(target.log_prob(torch.zeros(2, dtype=torch.float64)))
    -17.362
    >>> round(target.log_normalizer, 6)
    1.877502
    >>> get_target("funnel", dim=3).sample(4, generator=0).shape
    torch.Size([4, 3])

References:
    Rezende & Mohamed, *Variational Inference with Normalizing Flows*, ICML 2015 (Table 1).
    Neal, *Slice Sampling*, Annals of Statistics 31(3), 2003 (the funnel, Section 8).
    Pedregosa et al., *Scikit-learn: Machine Learning in Python*, JMLR 2011 (``make_moons``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from types import MappingProxyType
from typing import Any

import pyro
import pyro.distributions as dist
import torch

from ..utils.validation import check_event, check_positive_int

__all__ = [
    "LOG_NORMALIZERS",
    "TARGET_NAMES",
    "EnergyTarget",
    "NealFunnel",
    "Target",
    "as_pyro_model",
    "energy_u1",
    "energy_u2",
    "energy_u3",
    "energy_u4",
    "get_target",
    "quadrature_log_normalizer",
    "two_moons",
]

_LOG_2PI = math.log(2.0 * math.pi)

#: ``log Z = log ∫ exp(-U(z)) dz`` of the energies as implemented here (U2–U4 with pyro-nf's
#: confinement ``½ (z₁/4)²``). U1 from quadrature (see :func:`quadrature_log_normalizer`), U2–U4
#: exact closed forms; ``tests/test_targets.py`` checks all four against the quadrature.
LOG_NORMALIZERS: MappingProxyType[str, float] = MappingProxyType(
    {
        "U1": 1.87750162611,
        "U2": math.log(3.2 * math.pi),
        "U3": math.log(5.6 * math.pi),
        "U4": math.log(6.0 * math.pi),
    }
)

#: Names accepted by :func:`get_target`.
TARGET_NAMES: tuple[str, ...] = ("U1", "U2", "U3", "U4", "funnel")


# ------------------------------------------------------------------------------------------------
# The 2D energies
# ------------------------------------------------------------------------------------------------
def _w1(z1: torch.Tensor) -> torch.Tensor:
    return torch.sin((0.5 * math.pi) * z1)


def _w2(z1: torch.Tensor) -> torch.Tensor:
    return 3.0 * torch.exp(-0.5 * ((z1 - 1.0) / 0.6) ** 2)


def _w3(z1: torch.Tensor) -> torch.Tensor:
    return 3.0 * torch.sigmoid((z1 - 1.0) / 0.3)


def _confinement(z1: torch.Tensor) -> torch.Tensor:
    return 0.5 * (z1 / 4.0) ** 2


def _u1(z: torch.Tensor) -> torch.Tensor:
    z1 = z[..., 0]
    r = torch.linalg.vector_norm(z, dim=-1)
    ring = 0.5 * ((r - 2.0) / 0.4) ** 2
    return ring - torch.logaddexp(-0.5 * ((z1 - 2.0) / 0.6) ** 2, -0.5 * ((z1 + 2.0) / 0.6) ** 2)


def _u2(z: torch.Tensor) -> torch.Tensor:
    z1, z2 = z[..., 0], z[..., 1]
    return 0.5 * ((z2 - _w1(z1)) / 0.4) ** 2 + _confinement(z1)


def _u3(z: torch.Tensor) -> torch.Tensor:
    z1, z2 = z[..., 0], z[..., 1]
    a = z2 - _w1(z1)
    mix = torch.logaddexp(-0.5 * (a / 0.35) ** 2, -0.5 * ((a + _w2(z1)) / 0.35) ** 2)
    return _confinement(z1) - mix


def _u4(z: torch.Tensor) -> torch.Tensor:
    z1, z2 = z[..., 0], z[..., 1]
    a = z2 - _w1(z1)
    mix = torch.logaddexp(-0.5 * (a / 0.4) ** 2, -0.5 * ((a + _w3(z1)) / 0.35) ** 2)
    return _confinement(z1) - mix


def energy_u1(z: torch.Tensor) -> torch.Tensor:
    r"""Energy :math:`U_1` of Rezende & Mohamed (2015): a ring split into two arcs.

    :math:`U_1(z) = \tfrac12((\lVert z\rVert - 2)/0.4)^2 - \log(e^{-\frac12((z_1-2)/0.6)^2}
    + e^{-\frac12((z_1+2)/0.6)^2})`. Normalizable as is; :math:`\log Z_1 \approx 1.87750162611`.

    Args:
        z: tensor of shape ``(..., 2)``, float32 or float64, finite.

    Returns:
        ``U_1(z)`` of shape ``z.shape[:-1]``, same dtype and device as ``z``.

    Example:
        >>> import torch
        >>> energy_u1(torch.tensor([[0.0, 2.0], [0.0, 0.0]]))
        tensor([ 4.8624, 17.3624])

    References:
        Rezende & Mohamed, *Variational Inference with Normalizing Flows*, ICML 2015, Table 1.
    """
    return _u1(check_event("z", z, 2))


def energy_u2(z: torch.Tensor) -> torch.Tensor:
    r"""Energy :math:`U_2` (a sine wave) with pyro-nf's confinement.

    :math:`U_2(z) = \tfrac12((z_2 - w_1(z))/0.4)^2 + \tfrac12(z_1/4)^2` with
    :math:`w_1(z) = \sin(2\pi z_1/4)`. The second term is pyro-nf's convention (see the module
    docstring); :math:`\log Z_2 = \log(3.2\pi)` exactly.

    Args:
        z: tensor of shape ``(..., 2)``, float32 or float64, finite.

    Returns:
        ``U_2(z)`` of shape ``z.shape[:-1]``, same dtype and device as ``z``.

    Example:
        >>> import torch
        >>> energy_u2(torch.tensor([[1.0, 1.0], [0.0, 0.4]]))
        tensor([0.0312, 0.5000])

    References:
        Rezende & Mohamed, *Variational Inference with Normalizing Flows*, ICML 2015, Table 1.
    """
    return _u2(check_event("z", z, 2))


def energy_u3(z: torch.Tensor) -> torch.Tensor:
    r"""Energy :math:`U_3` (a sine wave with a split branch) with pyro-nf's confinement.

    :math:`U_3(z) = -\log(e^{-\frac12((z_2 - w_1)/0.35)^2} + e^{-\frac12((z_2 - w_1 + w_2)/0.35)^2})
    + \tfrac12(z_1/4)^2` with :math:`w_1 = \sin(2\pi z_1/4)` and
    :math:`w_2 = 3 e^{-\frac12((z_1 - 1)/0.6)^2}`; :math:`\log Z_3 = \log(5.6\pi)` exactly.

    Args:
        z: tensor of shape ``(..., 2)``, float32 or float64, finite.

    Returns:
        ``U_3(z)`` of shape ``z.shape[:-1]``, same dtype and device as ``z``.

    Example:
        >>> import torch
        >>> energy_u3(torch.tensor([[0.0, 0.0]], dtype=torch.float64))
        tensor([-0.0970], dtype=torch.float64)

    References:
        Rezende & Mohamed, *Variational Inference with Normalizing Flows*, ICML 2015, Table 1.
    """
    return _u3(check_event("z", z, 2))


def energy_u4(z: torch.Tensor) -> torch.Tensor:
    r"""Energy :math:`U_4` (a sine wave with a sigmoid step) with pyro-nf's confinement.

    :math:`U_4(z) = -\log(e^{-\frac12((z_2 - w_1)/0.4)^2} + e^{-\frac12((z_2 - w_1 + w_3)/0.35)^2})
    + \tfrac12(z_1/4)^2` with :math:`w_1 = \sin(2\pi z_1/4)` and
    :math:`w_3 = 3\sigma((z_1 - 1)/0.3)`; :math:`\log Z_4 = \log(6\pi)` exactly.

    Args:
        z: tensor of shape ``(..., 2)``, float32 or float64, finite.

    Returns:
        ``U_4(z)`` of shape ``z.shape[:-1]``, same dtype and device as ``z``.

    Example:
        >>> import torch
        >>> energy_u4(torch.tensor([[-4.0, 0.0]], dtype=torch.float64))
        tensor([-0.1931], dtype=torch.float64)

    References:
        Rezende & Mohamed, *Variational Inference with Normalizing Flows*, ICML 2015, Table 1.
    """
    return _u4(check_event("z", z, 2))


_ENERGIES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "U1": _u1,
    "U2": _u2,
    "U3": _u3,
    "U4": _u4,
}

# Quadrature boxes ((z1 range), (z2 range)) and why they are large enough:
# * U1: the ring factor exp(-½((r - 2)/0.4)²) is <= exp(-50) ≈ 2e-22 for r >= 6, and the other
#   factor is <= 2, so the mass outside [-6, 6]² is negligible.
# * U2–U4: in z1 the confinement exp(-½(z1/4)²) is a Gaussian of std 4 and the z2-integral is
#   bounded, so |z1| > 40 (10 std) carries a relative mass < 2e-23. In z2 every mode is centred
#   at w1 ∈ [-1, 1], at w1 - w2 or at w1 - w3 ∈ [-4, 1], with widths <= 0.4; the box edges
#   z2 = -8 and z2 = 6 are >= 10 widths away from any of them.
# The integrands are smooth and vanish to ~1e-22 at the box edges, so the midpoint rule converges
# spectrally (the Euler–Maclaurin corrections vanish); with step 0.05 the result changes by
# < 1e-10 when the step is halved or the box enlarged 1.5x (tested in tests/density/test_targets.py),
# and for U2–U4 it matches the closed forms to ~1e-15.
_QUADRATURE_BOXES: dict[str, tuple[tuple[float, float], tuple[float, float]]] = {
    "U1": ((-6.0, 6.0), (-6.0, 6.0)),
    "U2": ((-40.0, 40.0), (-8.0, 6.0)),
    "U3": ((-40.0, 40.0), (-8.0, 6.0)),
    "U4": ((-40.0, 40.0), (-8.0, 6.0)),
}


def _canonical_energy_name(name: object) -> str:
    if isinstance(name, str) and name.upper() in _ENERGIES:
        return name.upper()
    raise ValueError(f"name: expected one of {sorted(_ENERGIES)}, got {name!r}")


@functools.lru_cache(maxsize=64)
def _quadrature(name: str, step: float, box_scale: float) -> float:
    log_z = torch.zeros((), dtype=torch.float64)
    axes = []
    for lo, hi in _QUADRATURE_BOXES[name]:
        lo, hi = lo * box_scale, hi * box_scale
        n = max(1, math.ceil((hi - lo) / step))
        h = (hi - lo) / n
        axes.append(lo + h * (torch.arange(n, dtype=torch.float64) + 0.5))  # cell midpoints
        log_z = log_z + math.log(h)
    energy = _ENERGIES[name]
    z1, z2 = axes
    # Integrate one block of z1 rows at a time to keep memory bounded for fine grids.
    parts = [
        torch.logsumexp(-energy(torch.stack(torch.meshgrid(r, z2, indexing="ij"), -1)).flatten(), 0)
        for r in z1.split(max(1, 2_000_000 // len(z2)))
    ]
    return float(torch.logsumexp(torch.stack(parts), 0) + log_z)


def quadrature_log_normalizer(name: str, step: float = 0.05, box_scale: float = 1.0) -> float:
    r"""Compute :math:`\log Z = \log\int \exp(-U(z))\,dz` of an energy by 2D quadrature.

    Midpoint rule in float64 on a uniform grid of spacing ``step`` over a fixed box per target
    (:math:`[-6, 6]^2` for U1, :math:`[-40, 40] \times [-8, 6]` for U2–U4), multiplied by
    ``box_scale``; the sum is taken as a ``logsumexp``. The boxes hold all but ~1e-22 of the mass
    and the integrands are smooth, so the default grid is accurate to ~1e-10 (halving ``step`` or
    enlarging the box changes the result by less than that). Results are cached
    (``functools.lru_cache``).

    Args:
        name: ``"U1"``, ``"U2"``, ``"U3"`` or ``"U4"`` (case-insensitive).
        step: grid spacing, a float in ``(0, 1]``.
        box_scale: factor ``>= 1`` by which the default box is enlarged.

    Returns:
        :math:`\log Z` as a Python float (compare :data:`LOG_NORMALIZERS`).

    Example:
        >>> round(quadrature_log_normalizer("U2"), 10)
        2.3078806957
        >>> import math
        >>> abs(quadrature_log_normalizer("U4") - math.log(6 * math.pi)) < 1e-10
        True

    References:
        Rezende & Mohamed, *Variational Inference with Normalizing Flows*, ICML 2015, Table 1.
    """
    key = _canonical_energy_name(name)
    if isinstance(step, bool) or not isinstance(step, (int, float)) or not 0.0 < step <= 1.0:
        raise ValueError(f"step: expected a float in (0, 1], got {step!r}")
    if (
        isinstance(box_scale, bool)
        or not isinstance(box_scale, (int, float))
        or not 1.0 <= box_scale <= 10.0
    ):
        raise ValueError(f"box_scale: expected a float in [1, 10], got {box_scale!r}")
    return _quadrature(key, float(step), float(box_scale))


# ------------------------------------------------------------------------------------------------
# Random-number plumbing
# ------------------------------------------------------------------------------------------------
def _resolve_generator(
    generator: torch.Generator | int | None, device: torch.device
) -> tuple[torch.Generator | None, torch.device]:
    """Return ``(generator, device to draw on)``; an ``int`` is a seed for a fresh generator."""
    if generator is None:
        return None, device
    if isinstance(generator, torch.Generator):
        return generator, generator.device
    if isinstance(generator, int) and not isinstance(generator, bool):
        return torch.Generator(device=device).manual_seed(generator), device
    raise ValueError(
        "generator: expected a torch.Generator, an int seed or None, "
        f"got {type(generator).__name__}"
    )


def _resolve_dtype(dtype: torch.dtype | None) -> torch.dtype:
    dtype = torch.get_default_dtype() if dtype is None else dtype
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype: expected a floating-point torch.dtype, got {dtype!r}")
    return dtype


# ------------------------------------------------------------------------------------------------
# The common interface
# ------------------------------------------------------------------------------------------------
class Target:
    r"""A target density :math:`p(z) = \exp(\mathrm{log\_prob}(z) - \log Z)` on ``R^dim``.

    Attributes and methods shared by all targets:

    * ``name`` (str) and ``dim`` (int, the event size :math:`D`);
    * ``log_prob(z)``: the (possibly unnormalized) log density, ``z`` of shape ``(..., D)``,
      result of shape ``z.shape[:-1]`` with the dtype and device of ``z``;
    * ``log_normalizer``: :math:`\log Z = \log\int\exp(\mathrm{log\_prob}(z))\,dz` as a float;
    * ``normalized_log_prob(z) = log_prob(z) - log_normalizer``;
    * ``sample(n, generator=None, dtype=None, device=None)``: ``n`` exact draws, shape
      ``(n, D)``, where an exact sampler exists; otherwise ``NotImplementedError``.

    Subclasses implement ``_log_prob`` (on validated input), ``log_normalizer`` and optionally
    ``_sample``.

    Example:
        >>> import torch
        >>> target = get_target("funnel", dim=2)
        >>> isinstance(target, Target), target.name, target.dim
        (True, 'funnel', 2)
        >>> float(target.normalized_log_prob(torch.zeros(2)))
        -2.936

    References:
        Rezende & Mohamed, *Variational Inference with Normalizing Flows*, ICML 2015.
    """

    name: str
    dim: int

    def __init__(self, name: str, dim: int) -> None:
        self.name = name
        self.dim = check_positive_int("dim", dim)

    def _log_prob(self, z: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _sample(
        self, n: int, generator: torch.Generator | None, dtype: torch.dtype, device: torch.device
    ) -> torch.Tensor:
        raise NotImplementedError(
            f"target {self.name!r} has no exact sampler; exact samplers exist for 'funnel' (and "
            "the two_moons() data generator). Use MCMC, or a fitted flow, to draw from it."
        )

    @property
    def log_normalizer(self) -> float:
        """``log ∫ exp(log_prob(z)) dz`` as a Python float."""
        raise NotImplementedError

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """Log density (unnormalized unless stated) of ``z`` of shape ``(..., dim)``.

        Returns a tensor of shape ``z.shape[:-1]`` with the dtype and device of ``z``.
        """
        return self._log_prob(check_event("z", z, self.dim))

    def normalized_log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """``log_prob(z) - log_normalizer``: the normalized log density, shape ``z.shape[:-1]``."""
        return self.log_prob(z) - self.log_normalizer

    def sample(
        self,
        n: int,
        generator: torch.Generator | int | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> torch.Tensor:
        """Draw ``n`` exact samples, shape ``(n, dim)``.

        ``generator`` is a ``torch.Generator``, an ``int`` seed or ``None`` (global RNG).
        ``dtype`` defaults to ``torch.get_default_dtype()``, ``device`` to the generator's device
        (CPU without one). Raises ``NotImplementedError`` where no exact sampler exists.
        """
        n = check_positive_int("n", n)
        dtype = _resolve_dtype(dtype)
        if device is None:
            device = generator.device if isinstance(generator, torch.Generator) else "cpu"
        device = torch.device(device)
        gen, draw_device = _resolve_generator(generator, device)
        return self._sample(n, gen, dtype, draw_device).to(device)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, dim={self.dim})"


class EnergyTarget(Target):
    r"""One of the 2D energies :math:`U_1, \dots, U_4` of Rezende & Mohamed (2015).

    ``log_prob(z) = -U(z)`` (unnormalized), ``z`` of shape ``(..., 2)``; ``log_normalizer`` is
    the value in :data:`LOG_NORMALIZERS` (exact for U2–U4, which include pyro-nf's confinement
    :math:`\tfrac12(z_1/4)^2`; from quadrature for U1). There is no exact sampler: ``sample``
    raises ``NotImplementedError``.

    Args:
        name: ``"U1"``, ``"U2"``, ``"U3"`` or ``"U4"`` (case-insensitive).

    Example:
        >>> import torch
        >>> target = EnergyTarget("U2")
        >>> target.log_prob(torch.tensor([[0.0, 0.4], [1.0, 1.0]]))
        tensor([-0.5000, -0.0312])
        >>> round(target.log_normalizer, 8)
        2.3078807
        >>> target.sample(3)
        Traceback (most recent call last):
        ...
        NotImplementedError: target 'U2' has no exact sampler; ...

    References:
        Rezende & Mohamed, *Variational Inference with Normalizing Flows*, ICML 2015, Table 1.
    """

    def __init__(self, name: str) -> None:
        super().__init__(_canonical_energy_name(name), 2)
        self._energy = _ENERGIES[self.name]

    def _log_prob(self, z: torch.Tensor) -> torch.Tensor:
        return -self._energy(z)

    def energy(self, z: torch.Tensor) -> torch.Tensor:
        """The energy ``U(z) = -log_prob(z)``, ``z`` of shape ``(..., 2)``."""
        return self._energy(check_event("z", z, 2))

    @property
    def log_normalizer(self) -> float:
        """``log ∫ exp(-U(z)) dz`` from :data:`LOG_NORMALIZERS`."""
        return LOG_NORMALIZERS[self.name]


class NealFunnel(Target):
    r"""Neal's funnel in ``dim`` dimensions, with exact normalized log density and sampler.

    :math:`z = (v, x_1, \dots, x_{D-1})`, :math:`v \sim \mathcal N(0, 3^2)`,
    :math:`x_i \mid v \sim \mathcal N(0, e^{v})` independently (variance :math:`e^v`, standard
    deviation :math:`e^{v/2}`), so

    .. math::

        \log p(z) = -\frac{v^2}{18} - \log 3 - \frac{D-1}{2} v
                    - \frac12 \sum_{i=1}^{D-1} x_i^2 e^{-v} - \frac{D}{2}\log(2\pi),

    and ``log_normalizer`` is ``0.0``. ``v`` is the *first* coordinate.

    Args:
        dim: the event size :math:`D \ge 2` (default 10).

    Example:
        >>> import torch
        >>> funnel = NealFunnel(dim=3)
        >>> float(funnel.log_prob(torch.zeros(3)))
        -3.855
        >>> funnel.sample(5, generator=0, dtype=torch.float64).shape
        torch.Size([5, 3])

    References:
        Neal, *Slice Sampling*, Annals of Statistics 31(3), 2003, Section 8.
    """

    def __init__(self, dim: int = 10) -> None:
        super().__init__("funnel", check_positive_int("dim", dim, minimum=2))

    def _log_prob(self, z: torch.Tensor) -> torch.Tensor:
        v, x = z[..., 0], z[..., 1:]
        d = self.dim
        log_p_v = -0.5 * (v / 3.0) ** 2 - math.log(3.0) - 0.5 * _LOG_2PI
        # (x e^{-v/2})² rather than x² e^{-v}: finite (0, not nan) at x = 0 for any finite v
        # where exp(-v/2) does not overflow.
        quad = ((x * torch.exp(-0.5 * v).unsqueeze(-1)) ** 2).sum(-1)
        log_p_x = -0.5 * quad - 0.5 * (d - 1) * v - 0.5 * (d - 1) * _LOG_2PI
        return log_p_v + log_p_x

    @property
    def log_normalizer(self) -> float:
        """``0.0``: the funnel's log density is normalized."""
        return 0.0

    def _sample(
        self, n: int, generator: torch.Generator | None, dtype: torch.dtype, device: torch.device
    ) -> torch.Tensor:
        eps = torch.randn(n, self.dim, generator=generator, dtype=dtype, device=device)
        v = 3.0 * eps[:, :1]
        return torch.cat([v, eps[:, 1:] * torch.exp(0.5 * v)], dim=-1)


def get_target(name: str, dim: int | None = None) -> Target:
    """Build a :class:`Target` by name: ``"U1"``–``"U4"`` or ``"funnel"`` (case-insensitive).

    Args:
        name: one of :data:`TARGET_NAMES`.
        dim: event size; only for ``"funnel"`` (default 10). For the energies it must be
            ``None`` or ``2``.

    Returns:
        An :class:`EnergyTarget` or a :class:`NealFunnel`.

    Raises:
        ValueError: unknown ``name`` (the message lists the valid names; ``"two_moons"`` is
            pointed to :func:`two_moons`, a data generator without a density), or a ``dim``
            that does not fit the target.

    Example:
        >>> get_target("u3")
        EnergyTarget(name='U3', dim=2)
        >>> get_target("funnel")
        NealFunnel(name='funnel', dim=10)
        >>> get_target("banana")
        Traceback (most recent call last):
        ...
        ValueError: name: expected one of ['U1', 'U2', 'U3', 'U4', 'funnel'], got 'banana'

    References:
        Rezende & Mohamed, *Variational Inference with Normalizing Flows*, ICML 2015, Table 1.
        Neal, *Slice Sampling*, Annals of Statistics 31(3), 2003.
    """
    key = name.lower() if isinstance(name, str) else None
    if key in ("two_moons", "two-moons", "moons"):
        raise ValueError(
            f"name: {name!r} is a data generator without a closed-form density, not a Target; "
            f"call pyro_nf.targets.two_moons(n, ...) instead. Valid target names: "
            f"{list(TARGET_NAMES)}"
        )
    if key == "funnel":
        return NealFunnel(10 if dim is None else dim)
    if key is not None and key.upper() in _ENERGIES:
        if dim is not None and dim != 2:
            raise ValueError(
                f"dim: target {key.upper()!r} is 2-dimensional; expected 2, got {dim!r}"
            )
        return EnergyTarget(key)
    raise ValueError(f"name: expected one of {list(TARGET_NAMES)}, got {name!r}")


# ------------------------------------------------------------------------------------------------
# Two moons
# ------------------------------------------------------------------------------------------------
def two_moons(
    n: int,
    noise: float = 0.05,
    generator: torch.Generator | int | None = None,
    *,
    shuffle: bool = True,
    return_labels: bool = False,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    r"""Two interleaving half circles with Gaussian noise (like scikit-learn's ``make_moons``).

    The first :math:`n_0 = \lfloor n/2 \rfloor` points lie on the upper half circle
    :math:`(\cos t, \sin t)` and the other :math:`n_1 = n - n_0` on the lower one
    :math:`(1 - \cos t, \tfrac12 - \sin t)`, with :math:`t` evenly spaced on :math:`[0, \pi]`
    (``linspace``, endpoints included); then, if ``shuffle``, the rows are permuted and i.i.d.
    :math:`\mathcal N(0, \mathtt{noise}^2)` is added to every coordinate. A data generator for
    density-estimation demos: the limiting density has no closed form (no ``log_prob``).

    Args:
        n, noise: number of points (an integer ``>= 2``) and the standard deviation of the
            noise (a finite float ``>= 0``).
        generator: a ``torch.Generator``, an ``int`` seed (same seed, same data) or ``None``.
        shuffle, return_labels: permute the rows (default ``True``); also return the ``int64``
            labels (0 upper moon, 1 lower moon), shape ``(n,)``.
        dtype, device: of the result (default ``torch.get_default_dtype()``, and the
            generator's device, else CPU).

    Returns:
        Points of shape ``(n, 2)``, and the labels if ``return_labels``.

    Example:
        >>> x = two_moons(100, generator=0)
        >>> x.shape, x.dtype, torch.equal(x, two_moons(100, generator=0))
        (torch.Size([100, 2]), torch.float32, True)
        >>> x, y = two_moons(7, noise=0.0, shuffle=False, return_labels=True)
        >>> y.tolist(), x[0].tolist(), x[3].tolist()
        ([0, 0, 0, 1, 1, 1, 1], [1.0, 0.0], [0.0, 0.5])
    """
    n = check_positive_int("n", n, minimum=2)
    _check_noise(noise)
    dtype = _resolve_dtype(dtype)
    if device is None:
        device = generator.device if isinstance(generator, torch.Generator) else "cpu"
    device = torch.device(device)
    gen, draw_device = _resolve_generator(generator, device)
    x, labels = _moon_arcs(n, dtype, draw_device)
    x, labels = _shuffle_and_jitter(x, labels, noise, shuffle, gen)
    x, labels = x.to(device), labels.to(device)
    return (x, labels) if return_labels else x


def _check_noise(noise: Any) -> None:
    """Raise unless ``noise`` is a finite float ``>= 0``."""
    if (
        isinstance(noise, bool)
        or not isinstance(noise, (int, float))
        or not math.isfinite(noise)
        or noise < 0
    ):
        raise ValueError(f"noise: expected a finite float >= 0, got {noise!r}")


def _moon_arcs(
    n: int, dtype: torch.dtype, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """The noiseless moons in order: ``n // 2`` upper points, then the lower ones, and labels."""
    n_upper = n // 2
    n_lower = n - n_upper
    t_upper = torch.linspace(0.0, math.pi, n_upper, dtype=dtype, device=device)
    t_lower = torch.linspace(0.0, math.pi, n_lower, dtype=dtype, device=device)
    upper = torch.stack([torch.cos(t_upper), torch.sin(t_upper)], dim=-1)
    lower = torch.stack([1.0 - torch.cos(t_lower), 0.5 - torch.sin(t_lower)], dim=-1)
    labels = torch.cat(
        [
            torch.zeros(n_upper, dtype=torch.int64, device=device),
            torch.ones(n_lower, dtype=torch.int64, device=device),
        ]
    )
    return torch.cat([upper, lower], dim=0), labels


def _shuffle_and_jitter(
    x: torch.Tensor,
    labels: torch.Tensor,
    noise: float,
    shuffle: bool,
    gen: torch.Generator | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Permute the rows (if ``shuffle``), then add the Gaussian noise (if ``noise > 0``)."""
    n = x.shape[0]
    if shuffle:
        perm = torch.randperm(n, generator=gen, device=x.device)
        x, labels = x[perm], labels[perm]
    if noise > 0:
        x = x + noise * torch.randn(n, 2, generator=gen, dtype=x.dtype, device=x.device)
    return x, labels


# ------------------------------------------------------------------------------------------------
# Pyro wrapper
# ------------------------------------------------------------------------------------------------
def as_pyro_model(
    target: Target,
    name: str = "z",
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> Callable[[], torch.Tensor]:
    r"""Wrap a :class:`Target` as a Pyro model with one latent site ``name`` of shape ``(dim,)``.

    The model is::

        z = pyro.sample(name, Normal(0, 1).expand([dim]).to_event(1).mask(False))
        pyro.factor(name + "_log_density", target.log_prob(z))
        return z

    The masked Normal contributes a log density of exactly 0 (an improper flat prior on
    :math:`\mathbb{R}^D`), so the model's joint is :math:`\log p(z) = \mathrm{target.log\_prob}(z)`
    (unnormalized; an ELBO estimates :math:`\log Z` minus the KL gap). Unlike
    ``dist.ImproperUniform`` it can be sampled (from :math:`\mathcal N(0, I)`), which Pyro's
    autoguides need to initialise with their default ``init_loc_fn``.

    Args:
        target, name: the target to wrap; the name of the latent site (a non-empty string).
        dtype, device: of that placeholder prior (default ``torch.get_default_dtype()``, CPU);
            match them to your guide's.

    Returns:
        A callable ``model()`` taking no arguments and returning ``z``; it carries the wrapped
        target as ``model.target``.

    Example:
        >>> import torch, pyro
        >>> target = get_target("U1")
        >>> model = as_pyro_model(target, dtype=torch.float64)
        >>> z = torch.tensor([1.0, 2.0], dtype=torch.float64)
        >>> trace = pyro.poutine.trace(pyro.poutine.condition(model, {"z": z})).get_trace()
        >>> bool(torch.isclose(trace.log_prob_sum(), target.log_prob(z)))
        True
    """
    _check_model_args(target, name)
    prior = _flat_prior(target.dim, _resolve_dtype(dtype), device)

    def model() -> torch.Tensor:
        z = pyro.sample(name, prior)
        pyro.factor(name + "_log_density", target.log_prob(z))
        return z

    model.target = target  # type: ignore[attr-defined]
    return model


def _check_model_args(target: Any, name: Any) -> None:
    """Raise unless ``target`` is a :class:`Target` and ``name`` a non-empty string."""
    if not isinstance(target, Target):
        raise ValueError(f"target: expected a pyro_nf.targets.Target, got {type(target).__name__}")
    if not isinstance(name, str) or not name:
        raise ValueError(f"name: expected a non-empty string, got {name!r}")


def _flat_prior(
    dim: int, dtype: torch.dtype, device: torch.device | str | None
) -> dist.TorchDistribution:
    """``Normal(0, 1)`` on ``R^dim`` masked out: log density 0, but it can be sampled."""
    loc = torch.zeros(dim, dtype=dtype, device=torch.device("cpu" if device is None else device))
    return dist.Normal(loc, torch.ones_like(loc)).to_event(1).mask(False)
