r"""One call that says whether a fitted guide can be trusted: :func:`diagnose`.

It draws :math:`S` joint samples :math:`z_s \sim q` with their log importance weights
:math:`\log w_s = \log p(x, z_s) - \log q(z_s)` and reports

* the ELBO estimate :math:`\frac1S\sum_s \log w_s` with its standard error;
* convergence of the optimization (from the :class:`~pyro_nf.training.History` of :func:`pyro_nf.fit`);
* the PSIS :math:`\hat k` and its verdict (Yao et al. 2018: below 0.5 good, 0.5–0.7 usable,
  above 0.7 the guide misses posterior mass and its summaries should not be trusted);
* the importance-sampling effective sample size :math:`(\sum w)^2 / \sum w^2`;
* the importance-weighted log evidence with its standard error;
* per site, how much Pareto-smoothed importance reweighting moves the marginal mean (in guide
  standard deviations) and the marginal scale (as :math:`|\log(\mathrm{sd}_w / \mathrm{sd}_q)|`):
  the sites with the largest shifts are the least reliable ones.

A guide is reported *trustworthy* when :math:`\hat k` is below its threshold, the fit converged
(if known) and no reweighting shift exceeds ``shift_tolerance`` (0.1: a mean moved by a tenth of
a standard deviation, or a scale by about 10%). Otherwise the report names the next step
(:attr:`TrustReport.next_step`):

* ``"reweight"`` — use :func:`reweighted_summary` — only when reweighting can be shown to be
  reliable: :math:`\hat k` is below its threshold, the fit converged (if known), *and* a second,
  independent batch of :math:`S` draws reproduces the reweighting shifts: for every coordinate,
  the signed mean shift (in guide sds) and the signed log sd ratio of the two batches differ by
  at most ``shift_tolerance`` (:attr:`TrustReport.reweighting_disagreement`). A small
  :math:`\hat k` alone is not enough: on a centered eight-schools posterior the reweighted
  :math:`\tau` stayed about 0.3 sd off while :math:`\hat k` allowed reweighting, and the two
  batches then disagree, because a few large weights decide each batch's answer;
* ``"refine"`` — otherwise: run :func:`pyro_nf.refine` (NUTS in the flow's base space, exact
  asymptotically), from the report with :meth:`TrustReport.refine` when the report came from
  :meth:`pyro_nf.FlowGuide.report` (which attaches the ``refiner``).

:func:`reweighted_summary` returns PSIS-reweighted posterior means and standard deviations,
which correct the guide's moments when :math:`\hat k` allows it (below about 0.7).

References:
    Yao, Vehtari, Simpson & Gelman, *Yes, but Did It Work?: Evaluating Variational Inference*,
    ICML 2018.
    Vehtari, Simpson, Gelman, Yao & Gabry, *Pareto Smoothed Importance Sampling*, JMLR 2024.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from ..training.loop import History
from ..utils.validation import check_float
from .draws import check_weight_arguments, weighted_draws
from .psis import MIN_PSIS_SAMPLES, importance_ess, khat_threshold, khat_verdict, log_evidence, psis

__all__ = ["SHIFT_TOLERANCE", "SiteReliability", "TrustReport", "diagnose", "reweighted_summary"]

#: Largest PSIS reweighting shift of a marginal (mean in guide sds, or the absolute log sd ratio) for
#: which :attr:`TrustReport.trustworthy` accepts the guide's own summaries.
SHIFT_TOLERANCE = 0.1
#: Why the report needs ``num_samples >= MIN_PSIS_SAMPLES`` (for the error message).
_PSIS_WHY = "PSIS k-hat needs at least 21 draws"


@dataclass(frozen=True)
class SiteReliability:
    """How much importance reweighting changes one site's marginal (larger = less reliable)."""

    name: str
    mean_shift: float
    log_sd_ratio: float

    @property
    def shift(self) -> float:
        """The larger of the two shifts (what :attr:`TrustReport.max_shift` compares)."""
        return max(self.mean_shift, self.log_sd_ratio)


@dataclass(frozen=True)
class TrustReport:
    """Everything :func:`diagnose` measured; ``str(report)`` is a readable summary.

    ``reweighting_disagreement``: the largest difference, over coordinates, between the
    reweighting shifts (signed mean shift in sds, signed log sd ratio) of two independent
    batches of draws; measured only when reweighting is a candidate (``None`` otherwise).
    ``refiner``: a zero-argument-ready callable running :func:`pyro_nf.refine` for this guide
    and model (set by :meth:`pyro_nf.FlowGuide.report`; see :meth:`with_refiner`).
    """

    elbo: float
    elbo_se: float
    khat: float
    verdict: str
    ess: float
    num_samples: int
    log_evidence: float
    log_evidence_se: float
    converged: bool | None = None
    stop_reason: str | None = None
    steps: int | None = None
    sites: list[SiteReliability] = field(default_factory=list)
    shift_tolerance: float = SHIFT_TOLERANCE
    reweighting_disagreement: float | None = None
    refiner: Callable[..., Any] | None = field(default=None, repr=False, compare=False)

    @property
    def reweighting_reliable(self) -> bool:
        """``k̂`` below the sample-size dependent threshold (at most 0.7): importance sampling
        may be relied on (see :attr:`reweighting_confirmed` for the stronger check)."""
        return self.khat < khat_threshold(self.num_samples)

    @property
    def reweighting_confirmed(self) -> bool:
        """``k̂`` allows reweighting *and* a second, independent batch of draws reproduces the
        reweighting shifts within ``shift_tolerance``: the reweighted summaries can be used."""
        return (
            self.reweighting_reliable
            and self.reweighting_disagreement is not None
            and self.reweighting_disagreement <= self.shift_tolerance
        )

    @property
    def max_shift(self) -> float:
        """The largest reweighting shift over sites (mean shift in sds, or the absolute log sd ratio)."""
        return max((s.shift for s in self.sites), default=0.0)

    @property
    def trustworthy(self) -> bool:
        """``k̂`` below its threshold, converged (if known), and no reweighting shift above
        ``shift_tolerance``: the guide's own summaries can be used as they are."""
        return (
            self.reweighting_reliable
            and self.converged is not False
            and self.max_shift <= self.shift_tolerance
        )

    @property
    def next_step(self) -> str:
        """``"none"`` (trustworthy), ``"reweight"`` (use :func:`reweighted_summary`; only when
        :attr:`reweighting_confirmed` and converged) or ``"refine"`` (run
        :func:`pyro_nf.refine`, e.g. by :meth:`refine`)."""
        if self.trustworthy:
            return "none"
        if self.reweighting_confirmed and self.converged is not False:
            return "reweight"
        return "refine"

    def with_refiner(self, refiner: Callable[..., Any]) -> TrustReport:
        """A copy of this report whose :meth:`refine` calls ``refiner(**options)``.

        Example:
            >>> r = TrustReport(0.0, 0.0, 0.9, "bad", 10.0, 100, 0.0, 0.0)
            >>> r.with_refiner(lambda **kw: ("refined", kw)).refine(num_chains=2)
            ('refined', {'num_chains': 2})
        """
        if not callable(refiner):
            raise ValueError(f"refiner: expected a callable, got {type(refiner).__name__}")
        return replace(self, refiner=refiner)

    def refine(self, **options: Any) -> Any:
        """Run the attached refiner (:func:`pyro_nf.refine` for this guide and model, with
        ``options`` such as ``num_chains``, ``num_samples``, ``seed``): an ArviZ
        ``InferenceData`` of asymptotically exact draws."""
        if self.refiner is None:
            raise ValueError(
                "refiner: this report has none attached (it did not come from "
                "FlowGuide.report()); call pyro_nf.refine(model, guide, *args) instead"
            )
        return self.refiner(**options)

    def _verdict_line(self) -> str:
        step = self.next_step
        if step == "none":
            return "trustworthy"
        if step == "reweight":
            worst = max(self.sites, key=lambda s: s.shift)
            return (
                f"DO NOT TRUST the guide's own summaries: reweighting moves {worst.name!r} by "
                f"{self.max_shift:.2f} (> {self.shift_tolerance:g}); k-hat allows and a second "
                "batch of draws confirms PSIS-reweighted summaries (pyro_nf.reweighted_summary)"
            )
        return "DO NOT TRUST the guide as is: " + self._why_refine()

    def _why_refine(self) -> str:
        """Why reweighting is not recommended, and the recommendation to refine."""
        why = []
        if not self.reweighting_reliable:
            why.append(f"k-hat {self.khat:.2f} is too large for reweighting")
        elif self.reweighting_disagreement is not None and not self.reweighting_confirmed:
            why.append(
                "two independent batches of draws disagree on the reweighting shifts by "
                f"{self.reweighting_disagreement:.2f} (> {self.shift_tolerance:g}), so "
                "reweighted summaries cannot be relied on"
            )
        if self.converged is False:
            why.append("the fit did not converge")
        how = "report.refine()" if self.refiner is not None else "pyro_nf.refine(model, guide, ...)"
        return "; ".join(why) + f"; refine it to exact draws: {how}"

    def __str__(self) -> str:
        conv = (
            "unknown (no fit history)"
            if self.converged is None
            else (
                f"converged after {self.steps} steps"
                if self.converged
                else f"NOT converged ({self.stop_reason} after {self.steps} steps)"
            )
        )
        lines = [
            f"ELBO            {self.elbo:.4f} ± {self.elbo_se:.4f}",
            f"optimization    {conv}",
            f"PSIS k-hat      {self.khat:.3f} ({self.verdict}; threshold {khat_threshold(self.num_samples):.2f})",
            f"IS ESS          {self.ess:.1f} of {self.num_samples} ({100 * self.ess / self.num_samples:.1f}%)",
            f"log evidence    {self.log_evidence:.4f} ± {self.log_evidence_se:.4f}",
            f"verdict         {self._verdict_line()}",
            f"next step       {self.next_step}",
        ]
        if self.sites:
            lines.append(
                "least reliable sites (reweighting shift of the mean in sds, |log sd ratio|):"
            )
            for s in self.sites[:5]:
                lines.append(f"  {s.name:<20} {s.mean_shift:8.3f} {s.log_sd_ratio:8.3f}")
        return "\n".join(lines)


def _weighted_samples(
    model: Callable, guide: Callable, args: tuple, kwargs: dict, num_samples: int
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``(log_w (S,), {site: (S, -1)})`` from ``num_samples`` independent guide draws
    (vectorized in chunks of bounded memory when the model allows it, else one model trace per
    draw; see :func:`pyro_nf.diagnostics.draws.weighted_draws`)."""
    log_w, draws = weighted_draws(model, guide, args, kwargs, num_samples)
    return log_w, {k: v.reshape(num_samples, -1) for k, v in draws.items()}


def _moments(
    values: torch.Tensor, weights: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-coordinate mean and sd of ``values`` (S, P) in float64, weighted if ``weights``."""
    values = values.double()
    if weights is None:
        return values.mean(0), values.std(0)
    w = weights.double().unsqueeze(-1)
    mean = (w * values).sum(0)
    var = (w * (values - mean) ** 2).sum(0)
    return mean, var.clamp_min(0).sqrt()


def reweighted_summary(
    model: Callable,
    guide: Callable,
    *args: Any,
    num_samples: int = 2000,
    model_kwargs: dict[str, Any] | None = None,
) -> dict[str, dict[str, torch.Tensor]]:
    r"""Per-site posterior means and sds from the guide (``raw_*``) and PSIS-reweighted
    (``mean``, ``sd``), flattened per site, plus the ``khat`` they rest on.

    Example:
        >>> import pyro, pyro.distributions as dist
        >>> def model():
        ...     pyro.sample("z", dist.Normal(1.0, 1.0))
        >>> def guide():   # right shape, wrong location
        ...     pyro.sample("z", dist.Normal(0.8, 1.2))
        >>> pyro.set_rng_seed(0)
        >>> s = reweighted_summary(model, guide, num_samples=4000)
        >>> abs(float(s["z"]["mean"]) - 1.0) < abs(float(s["z"]["raw_mean"]) - 1.0)
        True
    """
    check_weight_arguments(
        model, guide, num_samples, MIN_PSIS_SAMPLES, _PSIS_WHY, model_kwargs=model_kwargs
    )
    log_w, samples = _weighted_samples(model, guide, args, dict(model_kwargs or {}), num_samples)
    smoothed, khat = psis(log_w)
    weights = smoothed.exp()
    out = {}
    for name, values in samples.items():
        raw_mean, raw_sd = _moments(values, None)
        mean, sd = _moments(values, weights)
        out[name] = {"raw_mean": raw_mean, "raw_sd": raw_sd, "mean": mean, "sd": sd, "khat": khat}
    return out


def diagnose(
    model: Callable,
    guide: Callable,
    *args: Any,
    num_samples: int = 2000,
    history: History | None = None,
    model_kwargs: dict[str, Any] | None = None,
    shift_tolerance: float = SHIFT_TOLERANCE,
) -> TrustReport:
    r"""The trust report of a fitted guide (see the module docstring for what it contains).

    ``history`` defaults to ``guide.history`` (set by :func:`pyro_nf.fit`); ``shift_tolerance``
    is the largest reweighting shift the guide's own summaries may need to be called
    trustworthy (see the module docstring).

    Example:
        >>> import pyro, pyro.distributions as dist
        >>> def model():
        ...     pyro.sample("z", dist.StudentT(2.0, 0.0, 1.0))
        >>> def guide():   # tails far too light
        ...     pyro.sample("z", dist.Normal(0.0, 0.3))
        >>> pyro.set_rng_seed(0)
        >>> report = diagnose(model, guide, num_samples=2000)
        >>> report.verdict, report.trustworthy
        ('bad', False)
    """
    check_weight_arguments(
        model, guide, num_samples, MIN_PSIS_SAMPLES, _PSIS_WHY, model_kwargs=model_kwargs
    )
    if history is not None and not isinstance(history, History):
        raise ValueError(
            f"history: expected None or the History returned by pyro_nf.fit, got {type(history).__name__}"
        )
    check_float("shift_tolerance", shift_tolerance, "a positive finite float", lambda v: v > 0)
    history = getattr(guide, "history", None) if history is None else history
    kwargs = dict(model_kwargs or {})
    log_w, samples = _weighted_samples(model, guide, args, kwargs, num_samples)
    smoothed, khat = psis(log_w)
    report = TrustReport(
        **_weight_summary(log_w, float(khat), num_samples),
        **_history_summary(history),
        sites=_site_reliabilities(samples, smoothed.exp()),
        shift_tolerance=shift_tolerance,
    )
    if report.reweighting_reliable and not report.trustworthy and report.converged is not False:
        first = _signed_shifts(samples, smoothed.exp())
        gap = _disagreement(first, model, guide, args, kwargs, num_samples)
        report = replace(report, reweighting_disagreement=gap)
    return report


def _disagreement(
    first: torch.Tensor, model: Callable, guide: Callable, args: tuple, kwargs: dict, num: int
) -> float:
    """The largest difference between the signed shifts ``first`` (see :func:`_signed_shifts`)
    and those of a second, independent batch of ``num`` draws."""
    log_w, samples = _weighted_samples(model, guide, args, kwargs, num)
    second = _signed_shifts(samples, psis(log_w)[0].exp())
    return float((first - second).abs().max())


def _signed_shifts(samples: dict[str, torch.Tensor], weights: torch.Tensor) -> torch.Tensor:
    """Every coordinate's signed reweighting shifts: the mean shift in guide sds, then the log
    sd ratio (reweighted over raw), concatenated over sites: ``(2 P,)`` in float64."""
    parts = []
    for values in samples.values():
        raw_mean, raw_sd = _moments(values, None)
        mean, sd = _moments(values, weights)
        scale = raw_sd.clamp_min(1e-300)
        parts += [(mean - raw_mean) / scale, (sd.clamp_min(1e-300) / scale).log()]
    return torch.cat(parts)


def _site_reliabilities(
    samples: dict[str, torch.Tensor], weights: torch.Tensor
) -> list[SiteReliability]:
    """Each site's reweighting shifts, least reliable (largest total shift) first."""
    sites = []
    for name, values in samples.items():
        raw_mean, raw_sd = _moments(values, None)
        mean, sd = _moments(values, weights)
        scale = raw_sd.clamp_min(1e-300)
        shift = float(((mean - raw_mean).abs() / scale).max())
        ratio = float((sd.clamp_min(1e-300) / scale).log().abs().max())
        sites.append(SiteReliability(name, shift, ratio))
    sites.sort(key=lambda s: -(s.mean_shift + s.log_sd_ratio))
    return sites


def _weight_summary(log_w: torch.Tensor, khat: float, num_samples: int) -> dict[str, Any]:
    """The :class:`TrustReport` fields computed from the ``(S,)`` log weights and their k-hat."""
    evidence, evidence_se = log_evidence(log_w)
    return {
        "elbo": float(log_w.mean()),
        "elbo_se": float(log_w.std() / num_samples**0.5),
        "khat": khat,
        "verdict": khat_verdict(khat, num_samples),
        "ess": float(importance_ess(log_w)),
        "num_samples": num_samples,
        "log_evidence": float(evidence),
        "log_evidence_se": float(evidence_se),
    }


def _history_summary(history: History | None) -> dict[str, Any]:
    """The :class:`TrustReport` convergence fields from a fit's history (all ``None`` without)."""
    if history is None:
        return {"converged": None, "stop_reason": None, "steps": None}
    return {
        "converged": history.converged,
        "stop_reason": history.stop_reason,
        "steps": history.num_steps,
    }
