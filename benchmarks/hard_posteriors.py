r"""Do FlowGuide's *defaults* work on hard real posteriors, and do they say when they don't?

For each of five hard posteriors (:mod:`hard_models`: badly scaled linear regression with
:math:`\rho \approx -0.99`, logistic regression on raw German credit features, centered eight
schools, Neal's 10-D funnel, a centered 50-group varying-slopes model) this fits, under the
**same step budget and learning rate**:

* ``FlowGuide`` — ``pyro_nf.FlowGuide(model)`` and ``pyro_nf.fit(model, guide, *args,
  steps=S, lr=lr)`` with every other setting at its default (flow family, depth, start,
  decentering, ``FlowGuide.default_num_particles`` ELBO particles, early stopping on the
  smoothed ELBO — a run may stop before ``S``; the JSON's ``library`` entry identifies the
  code whose defaults were measured);
* Pyro's ``AutoNormal``, ``AutoMultivariateNormal``, ``AutoIAFNormal(num_transforms=4)`` and
  ``AutoNormalizingFlow`` with Pyro's ``spline_coupling`` (two coupling layers, 8 bins, each
  followed by a reversal) and with BNAF (``iterated(2, block_autoregressive)``, as in Pyro's
  ``AutoNormalizingFlow`` example), otherwise at their defaults, fitted by the same loop
  (``pyro_nf.fit(..., early_stopping=None)``: torch Adam at ``lr`` over every parameter,
  ``Trace_ELBO`` with Pyro's default of one particle, all ``S`` steps);
* the first three again with 4 particles per step (``[P=4]``, as many as FlowGuide draws).

``--num-particles P`` gives every guide ``P`` particles instead.

and measures, against a reference posterior (exact, quadrature or long NUTS, cached in
``benchmarks/reference/hard_*.json``), in the constrained space of the user's model and over
every coordinate of every latent site:

* ``mean err`` :math:`= \max_i |\bar z_i - m_i| / s_i` (guide mean vs reference mean, in
  reference sds) and ``log sd`` :math:`= \max_i |\log(\hat s_i / s_i)|`, from ``--samples``
  guide draws;
* PSIS :math:`\hat k` (:func:`pyro_nf.psis_khat`, ``--khat-samples`` draws);
* wall time (guide construction, FlowGuide's Laplace step, and the fit) and ms per step;
* for FlowGuide: whether early stopping declared convergence, the trust report's verdict
  (:meth:`FlowGuide.report`), and the PSIS-reweighted errors (:func:`pyro_nf.reweighted_summary`)
  where :math:`\hat k < 0.7`.

**Target** per model: FlowGuide's default reaches ``mean err <= 0.1`` and ``log sd <= 0.1``, or
flags the failure with :math:`\hat k > 0.7`; and it beats every Pyro guide (its error
:math:`\max(\text{mean err}, \text{log sd})` is the smallest).

``--variants`` adds FlowGuide runs with non-default arguments (the investigation of where the
defaults fall short); they are reported separately and never enter the verdicts. ``no_reparam`` is FlowGuide on
the model's sites as written (``reparam=False``: no automatic non-centering of location–scale
sites, :mod:`pyro_nf.infer.reparam`; run only where the model has such sites); ``spline_*`` the spline families.

Usage::

    python benchmarks/hard_posteriors.py                      # full run (~20 min, 1 thread)
    python benchmarks/hard_posteriors.py --quick              # smoke run (seconds per model)
    python benchmarks/hard_posteriors.py --models linreg eight_schools --steps 2000
    python benchmarks/hard_posteriors.py --models funnel --variants init_loc particles8
    python benchmarks/hard_posteriors.py --recompute-reference --models eight_schools  # NUTS

References:
    Yao, Vehtari, Simpson & Gelman, *Yes, but Did It Work?: Evaluating Variational Inference*,
    ICML 2018.
    Kingma et al., *Improved Variational Inference with Inverse Autoregressive Flow*, NeurIPS 2016.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pyro
import pyro.distributions.transforms as T
import torch
from pyro.infer.autoguide import (
    AutoIAFNormal,
    AutoMultivariateNormal,
    AutoNormal,
    AutoNormalizingFlow,
)
from pyro.infer.autoguide.initialization import init_to_feasible
from pyro.infer.importance import vectorized_importance_weights

import pyro_nf
from pyro_nf.infer.reparam import loc_scale_sites
from pyro_nf.infer.svi import default_num_particles
from pyro_nf.training import TrainingDivergedError

try:  # run as a script (benchmarks/ on sys.path) or imported as ``benchmarks.hard_posteriors``
    import hard_models as hm
    from _common import format_table, load_results, merged_rows, save_json, set_threads
except ImportError:  # pragma: no cover
    from benchmarks import hard_models as hm
    from benchmarks._common import (
        format_table,
        load_results,
        merged_rows,
        save_json,
        set_threads,
    )

RESULTS_DIR = Path(__file__).resolve().parent / "results"
DEFAULT_OUT = RESULTS_DIR / "hard_posteriors.json"
QUICK_OUT = RESULTS_DIR / "hard_posteriors_quick.json"

#: Accuracy target for FlowGuide's default (max |mean error| / sd and max |log sd ratio|).
TOL_MEAN, TOL_LOG_SD = 0.1, 0.1
#: PSIS k-hat above which a guide is flagged as untrustworthy.
KHAT_FLAG = 0.7

FLOWGUIDE = "FlowGuide"


def _pyro_spline_coupling(dim: int) -> T.ComposeTransformModule:
    """Pyro's ``spline_coupling`` (8 bins, bound 3, its default hidden sizes) twice, each
    followed by a reversal so that both halves are transformed."""
    flip = torch.arange(dim - 1, -1, -1)
    return T.ComposeTransformModule(
        [T.spline_coupling(dim), T.Permute(flip), T.spline_coupling(dim), T.Permute(flip)]
    )


def _pyro_bnaf(dim: int) -> T.ComposeTransformModule:
    """Pyro's ``block_autoregressive`` (BNAF, hidden factors [8, 8]) twice, as in
    ``AutoNormalizingFlow``'s own example (``partial(iterated, 2, block_autoregressive)``)."""
    return T.iterated(2, T.block_autoregressive, dim)


PYRO_GUIDES: dict[str, Callable[[Callable], Any]] = {
    "AutoNormal": AutoNormal,
    "AutoMultivariateNormal": AutoMultivariateNormal,
    "AutoIAFNormal(4)": lambda model: AutoIAFNormal(model, num_transforms=4),
    "AutoNF[spline_coupling]": lambda model: AutoNormalizingFlow(model, _pyro_spline_coupling),
    "AutoNF[BNAF]": lambda model: AutoNormalizingFlow(model, _pyro_bnaf),
}
#: Pyro's Gaussian and IAF guides again, fitted with as many ELBO particles per step as
#: FlowGuide's default (``FlowGuide.default_num_particles``): the side-by-side check that
#: FlowGuide's lead is not its particles.
PYRO_PARTICLES = {
    f"{name}[P=4]": 4 for name in ("AutoNormal", "AutoMultivariateNormal", "AutoIAFNormal(4)")
}
PYRO_GUIDES.update({name: PYRO_GUIDES[name.removesuffix("[P=4]")] for name in PYRO_PARTICLES})
GUIDE_NAMES = (FLOWGUIDE, *PYRO_GUIDES)


class PlateauDecay:
    """Investigation only: run at ``lr`` until the smoothed loss plateaus, then divide the
    learning rate by ``1 / factor`` (up to ``decays`` times, one plateau each), then stop.

    Passed to :func:`pyro_nf.fit` as ``lr_schedule=pd.scheduler, callback=pd.callback,
    early_stopping=None``; the plateau test is :class:`pyro_nf.EarlyStopping`'s (an EMA of the
    loss with ``smoothing``, no improvement by ``rel_delta · |best|`` for ``patience`` steps).
    """

    def __init__(
        self,
        patience: int = 200,
        factor: float = 0.1,
        decays: int = 2,
        smoothing: float = 0.02,
        rel_delta: float = 1e-4,
    ) -> None:
        self.patience, self.factor, self.decays = patience, factor, decays
        self.smoothing, self.rel_delta = smoothing, rel_delta
        self.opt: torch.optim.Optimizer | None = None
        self.ema, self.count, self.best, self.best_step, self.done = math.nan, 0, math.inf, 0, 0

    def scheduler(self, opt: torch.optim.Optimizer) -> PlateauDecay:
        self.opt = opt
        return self

    def step(self) -> None:  # the LRScheduler interface; the work is in the callback
        pass

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def callback(self, step: int, history: Any) -> bool:
        value = history.losses[-1]
        if not math.isfinite(value):
            return False
        self.count += 1
        rate = max(self.smoothing, 1.0 / self.count)
        self.ema = value if self.count == 1 else self.ema + rate * (value - self.ema)
        if self.count <= 1.0 / self.smoothing or self.ema < self.best - self.rel_delta * abs(
            self.best
        ):
            self.best, self.best_step = self.ema, step
        if step - self.best_step < self.patience:
            return False
        if self.done >= self.decays:
            return True
        assert self.opt is not None
        for group in self.opt.param_groups:
            group["lr"] *= self.factor
        self.done += 1
        self.best, self.best_step = self.ema, step
        return False


def _plateau_decay(patience: int = 200) -> dict[str, Any]:
    pd = PlateauDecay(patience=patience)
    return {"early_stopping": None, "lr_schedule": pd.scheduler, "callback": pd.callback}


#: Investigation: FlowGuide with non-default arguments, ``name -> (guide kwargs, fit kwargs)``
#: (fit kwargs may be a zero-argument callable building fresh objects).
VARIANTS: dict[str, tuple[dict[str, Any], Any]] = {
    "init_loc": ({"init": "loc"}, {}),
    "init_map": ({"init": "map"}, {}),
    "particles8": ({}, {"num_particles": 8}),
    "cosine": ({}, {"lr_schedule": "cosine", "early_stopping": None}),
    "no_stop": ({}, {"early_stopping": None}),
    "lr3e-3": ({}, {"lr": 3e-3}),
    "lr3e-2": ({}, {"lr": 3e-2}),
    "affine_diagonal": ({"affine": "diagonal"}, {}),
    "init_feasible_lr3e-2": ({"init_loc_fn": init_to_feasible}, {"lr": 3e-2}),
    "depth4": ({"depth": 4}, {}),
    "init_loc_particles8": ({"init": "loc"}, {"num_particles": 8}),
    "init_loc_depth4": ({"init": "loc", "depth": 4}, {}),
    "float64": ({}, {}),  # the model's data in float64 (Laplace Hessian in double precision)
    "float64_particles8": ({}, {"num_particles": 8}),
    "plateau_decay": ({}, _plateau_decay),
    "plateau_decay_particles8": ({}, lambda: {**_plateau_decay(), "num_particles": 8}),
    "init_feasible": ({"init_loc_fn": init_to_feasible}, {}),
    "init_feasible_plateau_decay": ({"init_loc_fn": init_to_feasible}, _plateau_decay),
    "init_feasible_particles8": ({"init_loc_fn": init_to_feasible}, {"num_particles": 8}),
    "affine_update": ({"update": "affine"}, {}),
    "sigmoid_update": ({"update": "sigmoid"}, {}),
    "sigmoid_update_plateau_decay": ({"update": "sigmoid"}, _plateau_decay),
    "affine_update_depth4": ({"update": "affine", "depth": 4}, {}),
    "affine_update_particles8": ({"update": "affine"}, {"num_particles": 8}),
    "init_loc_plateau_decay": ({"init": "loc"}, _plateau_decay),
    "no_reparam": ({"reparam": False}, {}),
    "spline_coupling": ({"flow": "spline_coupling"}, {}),
    "spline_autoregressive": ({"flow": "spline_autoregressive"}, {}),
}

NOTES = [
    "Errors are over every coordinate of every latent site, in the model's constrained space; "
    "'mean err' = max |guide mean - reference mean| / reference sd, 'log sd' = max |log(guide "
    "sd / reference sd)|, both from --samples guide draws (Monte Carlo error about "
    "1/sqrt(samples) sd).",
    "FlowGuide runs with fit's defaults, early stopping included: 'steps' may be below the "
    "budget ('converged'). Pyro's guides run the whole budget (early_stopping=None); all use "
    "torch Adam at the same lr over all parameters and Trace_ELBO with the same particles.",
    "k-hat: pyro_nf.psis_khat (--khat-samples draws); > 0.7 flags a guide whose summaries "
    "should not be trusted. 'report': FlowGuide.report() (--report-samples draws of its own), "
    "which says DO NOT TRUST when its k-hat is above threshold, the fit did not converge, or "
    "PSIS reweighting moves a marginal by more than 0.1 sd (then it points to the reweighted "
    "summaries, whose errors are the 'rew' columns).",
    "FlowGuide's wall time includes its Laplace step (L-BFGS, Newton, Hessian), shown apart.",
    "'rew err' / 'rew log sd': FlowGuide's PSIS-reweighted moments (pyro_nf.reweighted_summary), "
    "only where k-hat < 0.7.",
    "Data in float32 (torch's default), as a user would run it.",
]


# -- evaluation ---------------------------------------------------------------------------------


@torch.no_grad()
def guide_moments(
    problem: hm.HardProblem, guide: Callable, num_samples: int, chunk: int = 5000
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and sd ``(P,)`` (float64) of the problem's coordinates under ``guide``, from
    ``num_samples`` draws (vectorized, in chunks)."""
    total = torch.zeros(len(problem.names), dtype=torch.float64)
    total_sq = torch.zeros_like(total)
    shift = None
    done = 0
    while done < num_samples:
        n = min(chunk, num_samples - done)
        _, trace, _ = vectorized_importance_weights(
            problem.model,
            guide,
            *problem.args,
            num_samples=n,
            max_plate_nesting=problem.max_plate_nesting,
        )
        coords = problem.coords({s: trace.nodes[s]["value"] for s in problem.sites}, n)
        if shift is None:
            shift = coords.mean(0)  # numerically stable running moments
        total += (coords - shift).sum(0)
        total_sq += ((coords - shift) ** 2).sum(0)
        done += n
    mean = total / num_samples
    var = (total_sq - num_samples * mean**2) / (num_samples - 1)
    return shift + mean, var.clamp_min(0).sqrt()


def errors(
    mean: torch.Tensor, sd: torch.Tensor, ref: hm.Reference | None, names: Sequence[str]
) -> dict[str, Any]:
    """``mean_err``, ``log_sd_err`` (max over coordinates) and where they occur."""
    if ref is None:
        return {"mean_err": math.nan, "log_sd_err": math.nan, "worst_mean": "", "worst_sd": ""}
    rm, rs = ref.tensors()
    e_mean = (mean - rm).abs() / rs
    e_sd = (sd.clamp_min(1e-300) / rs).log().abs()
    return {
        "mean_err": float(e_mean.max()),
        "log_sd_err": float(e_sd.max()),
        "worst_mean": names[int(e_mean.argmax())],
        "worst_sd": names[int(e_sd.argmax())],
    }


def reweighted_errors(
    problem: hm.HardProblem, guide: Callable, ref: hm.Reference | None, num_samples: int
) -> dict[str, Any]:
    """Errors of FlowGuide's PSIS-reweighted moments (:func:`pyro_nf.reweighted_summary`)."""
    summary = pyro_nf.reweighted_summary(
        problem.model, guide, *problem.args, num_samples=num_samples
    )
    mean = torch.cat([summary[s]["mean"].reshape(-1) for s in problem.sites]).double()
    sd = torch.cat([summary[s]["sd"].reshape(-1) for s in problem.sites]).double()
    out = errors(mean, sd, ref, problem.names)
    out["khat"] = float(summary[problem.sites[0]]["khat"])
    return out


def _number(x: Any) -> float:
    """A result read back from JSON, where a non-finite number was saved as ``null``."""
    return math.inf if x is None else float(x)


def score(row: dict[str, Any]) -> float:
    """One number per run: ``max(mean err, log sd)`` (lower is better; NaN if no reference)."""
    return max(_number(row["mean_err"]), _number(row["log_sd_err"]))


# -- one run -------------------------------------------------------------------------------------


def _cast(args: tuple, dtype: torch.dtype) -> tuple:
    return tuple(a.to(dtype) if torch.is_tensor(a) and a.is_floating_point() else a for a in args)


def run_one(
    problem: hm.HardProblem,
    ref: hm.Reference | None,
    guide_name: str,
    opts: argparse.Namespace,
    *,
    variant: str | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Fit one guide to one problem and evaluate it (see the module docstring)."""
    is_flow = guide_name == FLOWGUIDE
    guide_kwargs, fit_kwargs = VARIANTS[variant] if variant else ({}, {})
    if callable(fit_kwargs):
        fit_kwargs = fit_kwargs()
    if variant and variant.startswith("float64"):
        problem = hm.get_problem(problem.name, dtype=torch.float64)
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    caught: list[str] = []
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        if is_flow:
            guide_kwargs = dict(guide_kwargs)
            guide = pyro_nf.FlowGuide(problem.model, **guide_kwargs)
            guide(*problem.args)  # the Laplace step happens on the first call
        else:
            guide = PYRO_GUIDES[guide_name](problem.model)
            guide(*problem.args)
        t_init = time.perf_counter() - t0
        particles = opts.num_particles or PYRO_PARTICLES.get(guide_name)
        kwargs: dict[str, Any] = {"steps": opts.steps, "lr": opts.lr, "progress": False}
        if particles is not None:  # else fit's default: FlowGuide's own, 1 for Pyro's guides
            kwargs["num_particles"] = particles
        if not is_flow:
            kwargs["early_stopping"] = None
        kwargs.update(fit_kwargs)
        kwargs.setdefault("num_particles", default_num_particles(guide))
        if kwargs["num_particles"] > 1:
            kwargs["max_plate_nesting"] = problem.max_plate_nesting
        try:
            history = pyro_nf.fit(problem.model, guide, *problem.args, **kwargs)
        except TrainingDivergedError as err:  # a guide that diverges is a result, not a crash
            history = err.history
            caught.append(f"TrainingDivergedError: {str(err).splitlines()[0][:240]}")
    wall = time.perf_counter() - t0
    for w in record:
        text = f"{w.category.__name__}: {str(w.message).splitlines()[0][:240]}"
        if text not in caught and not issubclass(w.category, DeprecationWarning):
            caught.append(text)
    pyro.set_rng_seed(10_000 + seed)
    try:  # a diverged guide is evaluated at its last good parameters, if it can be
        mean, sd = guide_moments(problem, guide, opts.samples)
        khat = pyro_nf.psis_khat(
            problem.model,
            guide,
            *problem.args,
            num_samples=opts.khat_samples,
            max_plate_nesting=problem.max_plate_nesting,
        )
    except (ValueError, RuntimeError) as err:
        caught.append(f"evaluation failed: {type(err).__name__}: {str(err).splitlines()[0][:200]}")
        mean = sd = torch.full((len(problem.names),), math.inf, dtype=torch.float64)
        khat = math.inf
    row: dict[str, Any] = {
        "model": problem.name,
        "guide": guide_name if not variant else f"{FLOWGUIDE}[{variant}]",
        "variant": variant,
        "seed": seed,
        "steps": history.num_steps,
        "num_particles": kwargs["num_particles"],
        "stop_reason": history.stop_reason,
        "converged": history.converged,
        **errors(mean, sd, ref, problem.names),
        "khat": khat,
        "wall_s": wall,
        "init_s": t_init,
        "fit_s": history.elapsed,
        "ms_per_step": 1e3 * history.elapsed / max(1, history.num_steps),
        "final_loss": history.smoothed[-1] if history.smoothed else math.nan,
        "warnings": caught,
    }
    if is_flow:
        info = getattr(guide, "_init_info", {})
        row["init"] = info.get("init")
        report = guide.report(*problem.args, num_samples=opts.report_samples)
        row["report_verdict"] = report.verdict
        row["trustworthy"] = report.trustworthy
        row["report"] = str(report)
        if row["khat"] < KHAT_FLAG:
            rew = reweighted_errors(problem, guide, ref, opts.reweight_samples)
            row["rew_mean_err"], row["rew_log_sd_err"] = rew["mean_err"], rew["log_sd_err"]
            row["rew_khat"] = rew["khat"]
    return row


# -- tables and verdicts ---------------------------------------------------------------------------

HEADERS = [
    "model",
    "guide",
    "steps",
    "mean err",
    "log sd",
    "k-hat",
    "wall s",
    "ms/step",
    "FlowGuide: stop / report",
    "rew err / log sd",
]


def _f(x: Any, spec: str = ".3f") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return format(x, spec)


def table_rows(rows: Sequence[dict[str, Any]]) -> list[list[str]]:
    out = []
    for r in rows:
        flow = r["guide"].startswith(FLOWGUIDE)
        status = ""
        if flow:
            stop = "converged" if r["converged"] else r["stop_reason"]
            status = f"{stop} / {r['report_verdict']}" + (
                "" if r["trustworthy"] else " (DO NOT TRUST)"
            )
        rew = ""
        if flow and "rew_mean_err" in r:
            rew = f"{_f(r['rew_mean_err'])} / {_f(r['rew_log_sd_err'])}"
        out.append(
            [
                r["model"],
                r["guide"],
                str(r["steps"]),
                _f(r["mean_err"]),
                _f(r["log_sd_err"]),
                _f(r["khat"], ".2f"),
                _f(r["wall_s"], ".1f"),
                _f(r["ms_per_step"], ".2f"),
                status,
                rew,
            ]
        )
    return out


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub-flavoured Markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def model_verdict(rows: Sequence[dict[str, Any]], floor: dict[str, float] | None = None):
    """The verdict for one model from its rows (FlowGuide default vs Pyro's guides).

    ``target_met``: FlowGuide is accurate (``mean err <= 0.1`` and ``log sd <= 0.1``) or
    flagged: by ``k-hat > 0.7`` (:func:`pyro_nf.psis_khat`), or by :meth:`FlowGuide.report`
    saying "DO NOT TRUST" (its own draws; it also counts non-convergence and PSIS reweighting
    shifts above 0.1 sd); the status says which. ``beats_pyro``: its ``max(mean err, log sd)``
    is below every Pyro guide's; ``pass``: both. ``mc_floor``: the errors Monte Carlo noise
    alone reaches (95%), for context.
    """
    flow = next(r for r in rows if r["guide"] == FLOWGUIDE)
    pyro_rows = [r for r in rows if r["guide"] in PYRO_GUIDES]
    accurate = flow["mean_err"] <= TOL_MEAN and flow["log_sd_err"] <= TOL_LOG_SD
    flagged = flow["khat"] > KHAT_FLAG
    if math.isnan(score(flow)):
        status, target = "no reference", None
    elif accurate:
        status, target = "accurate", True
    elif flagged:
        status, target = "inaccurate, flagged by k-hat", True
    elif not flow["trustworthy"]:
        status, target = "inaccurate, flagged by the report (k-hat <= 0.7)", True
    else:
        status, target = "MISSED: inaccurate and k-hat <= 0.7", False
    best_pyro = min(pyro_rows, key=score) if pyro_rows else None
    beats = None
    if best_pyro is not None and not math.isnan(score(flow)):
        beats = score(flow) < score(best_pyro)
    text = (
        f"{flow['model']}: FlowGuide {status} (mean err {_f(flow['mean_err'])}, log sd "
        f"{_f(flow['log_sd_err'])}, k-hat {_f(flow['khat'], '.2f')}, report: "
        f"{'trustworthy' if flow['trustworthy'] else 'DO NOT TRUST'})"
    )
    if best_pyro is not None:
        text += (
            f"; best Pyro guide {best_pyro['guide']} (mean err {_f(best_pyro['mean_err'])}, "
            f"log sd {_f(best_pyro['log_sd_err'])}, k-hat {_f(best_pyro['khat'], '.2f')}) -> "
            + ("FlowGuide better" if beats else "FlowGuide NOT better" if beats is False else "n/a")
        )
    if floor:
        text += f" [MC floor {floor['mean_err_95']:.3f} / {floor['log_sd_err_95']:.3f}]"
    return {
        "status": status,
        "target_met": target,
        "beats_pyro": beats,
        "pass": bool(target and beats) if target is not None and beats is not None else None,
        "flagged_by_khat": flagged,
        "flagged_by_report": not flow["trustworthy"],
        "mc_floor": floor,
        "text": text,
    }


AGG_HEADERS = [
    "model",
    "guide",
    "seeds",
    "mean err (median / max)",
    "log sd (median / max)",
    "k-hat (median / max)",
    "score (median / max)",
    "steps (median)",
    "ms/step",
]


def aggregate_rows(rows: Sequence[dict[str, Any]]) -> list[list[str]]:
    """One line per (model, guide) over seeds: medians and maxima."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["model"], r["guide"]), []).append(r)
    out = []
    for (model, guide), rs in groups.items():

        def med_max(key: str, spec: str = ".3f", rs=rs) -> str:
            vals = [_number(r[key]) for r in rs]
            return f"{_f(statistics.median(vals), spec)} / {_f(max(vals), spec)}"

        out.append(
            [
                model,
                guide,
                str(len(rs)),
                med_max("mean_err"),
                med_max("log_sd_err"),
                med_max("khat", ".2f"),
                f"{_f(statistics.median(map(score, rs)))} / {_f(max(map(score, rs)))}",
                f"{statistics.median(r['steps'] for r in rs):.0f}",
                f"{statistics.median(r['ms_per_step'] for r in rs):.2f}",
            ]
        )
    return out


def seed_verdicts(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per model, over seeds: is FlowGuide's median score (``max(mean err, log sd)``) below
    every Pyro guide's median score, and is its worst seed within the target 0.15?"""
    out = {}
    for model in dict.fromkeys(r["model"] for r in rows):
        by_guide: dict[str, list[float]] = {}
        for r in rows:
            if r["model"] == model and not r.get("variant"):
                by_guide.setdefault(r["guide"], []).append(score(r))
        ours = by_guide.pop(FLOWGUIDE, None)
        if not ours or not by_guide:
            continue
        med = statistics.median(ours)
        best_name, best = min(
            ((g, statistics.median(v)) for g, v in by_guide.items()), key=lambda t: t[1]
        )
        out[model] = {
            "flowguide_median": med,
            "flowguide_worst": max(ours),
            "seeds": len(ours),
            "best_pyro": best_name,
            "best_pyro_median": best,
            "beats_every_pyro_guide": med < best,
            "text": (
                f"{model}: FlowGuide median {med:.3f} (worst {max(ours):.3f}, {len(ours)} seeds) "
                f"vs best Pyro guide {best_name} median {best:.3f}: "
                + ("better" if med < best else "NOT better")
            ),
        }
    return out


def merge_payloads(paths: Sequence[Path]) -> tuple[list, list, dict, dict]:
    """Rows, investigation rows, references and skipped models of several result files; a
    later file's row replaces an earlier one of the same (model, guide, seed)."""
    payloads = load_results(paths)
    key = ("model", "guide", "seed")
    references: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    for payload in payloads:
        references.update(payload.get("references", {}))
        skipped.update(payload.get("skipped", {}))
    rows, inv = merged_rows(payloads, "results", key), merged_rows(payloads, "investigation", key)
    return rows, inv, references, skipped


# -- main ----------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="FlowGuide's defaults vs Pyro's autoguides on five hard posteriors.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--models", nargs="+", choices=hm.MODELS, default=list(hm.MODELS))
    p.add_argument("--guides", nargs="+", choices=GUIDE_NAMES, default=list(GUIDE_NAMES))
    p.add_argument("--quick", action="store_true", help="smoke run: few steps and draws")
    p.add_argument("--steps", type=int, default=5000, help="step budget (all guides)")
    p.add_argument("--lr", type=float, default=1e-2, help="Adam learning rate (all guides)")
    p.add_argument(
        "--num-particles",
        type=int,
        default=None,
        help="ELBO particles, all guides (default: each guide's default in pyro_nf.fit, "
        "FlowGuide.default_num_particles for FlowGuide, 1 for Pyro's; 4 for the [P=4] guides)",
    )
    p.add_argument("--samples", type=int, default=20000, help="guide draws for the moments")
    p.add_argument("--khat-samples", type=int, default=10000, help="draws for psis_khat")
    p.add_argument("--reweight-samples", type=int, default=20000, help="reweighted_summary draws")
    p.add_argument("--report-samples", type=int, default=2000, help="guide.report draws")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds (one run per seed)")
    p.add_argument(
        "--variants",
        nargs="*",
        choices=sorted(VARIANTS),
        default=[],
        help="extra FlowGuide runs with non-default arguments (investigation)",
    )
    p.add_argument(
        "--recompute-reference", action="store_true", help="rerun NUTS and overwrite the cache"
    )
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    p.add_argument("--out", type=Path, default=None, help="JSON output path")
    p.add_argument(
        "--merge",
        type=Path,
        nargs="+",
        default=None,
        help="combine these result files (later rows replace earlier ones of the same model, "
        "guide and seed) into --out, with the tables and verdicts recomputed; nothing is run",
    )
    args = p.parse_args(argv)
    if args.quick:
        args.steps = min(args.steps, 150)
        args.samples = min(args.samples, 1000)
        args.khat_samples = min(args.khat_samples, 1000)
        args.reweight_samples = min(args.reweight_samples, 1000)
        args.report_samples = min(args.report_samples, 500)
    if args.out is None:
        args.out = QUICK_OUT if args.quick else DEFAULT_OUT
    particles = 1 if args.num_particles is None else args.num_particles
    if min(args.steps, args.samples, args.khat_samples, particles) < 1 or args.lr <= 0:
        p.error("--steps, --samples, --khat-samples, --num-particles must be >= 1, --lr > 0")
    if FLOWGUIDE not in args.guides and args.variants:
        args.guides = [FLOWGUIDE, *args.guides]
    return args


def get_reference(name: str, opts: argparse.Namespace) -> hm.Reference | None:
    """The cached reference; computed (NUTS, slow) and cached if absent or asked to, except in
    ``--quick`` mode, which never runs NUTS."""
    ref = hm.load_reference(name)
    if (ref is None and not opts.quick) or opts.recompute_reference:
        print(
            f"[{name}] computing the reference (one-off, cached) ...", file=sys.stderr, flush=True
        )
        ref = hm.compute_reference(name)
        hm.save_reference(ref)
    return ref


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    opts = parse_args(argv)
    command = " ".join(
        ["python benchmarks/hard_posteriors.py", *(argv if argv is not None else sys.argv[1:])]
    )
    if opts.merge:
        rows, investigation, references, skipped = merge_payloads(opts.merge)
        opts.seeds = sorted({r["seed"] for r in rows})
        opts.guides = list(dict.fromkeys(r["guide"] for r in rows))
        return report_and_save(opts, rows, investigation, references, skipped, command, 0.0)
    set_threads(opts.threads)
    t_start = time.perf_counter()
    rows: list[dict[str, Any]] = []
    investigation: list[dict[str, Any]] = []
    references: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    for name in opts.models:
        try:
            problem = hm.get_problem(name)
        except FileNotFoundError as err:
            skipped[name] = f"data absent: {err}"
            print(f"[{name}] skipped: {err}", file=sys.stderr, flush=True)
            continue
        ref = get_reference(name, opts)
        references[name] = _reference_summary(ref, opts.samples)
        if name == "linreg" and ref is not None:
            corr = ref.checks.get("min_correlation")
            print(f"[linreg] achieved posterior correlation (most negative): {corr:.4f}")
        for seed in opts.seeds:
            for guide_name in opts.guides:
                row = run_one(problem, ref, guide_name, opts, seed=seed)
                rows.append(row)
                _progress(row)
            for variant in variants_for(problem, opts.variants):
                row = run_one(problem, ref, FLOWGUIDE, opts, variant=variant, seed=seed)
                investigation.append(row)
                _progress(row)
    total = time.perf_counter() - t_start
    return report_and_save(opts, rows, investigation, references, skipped, command, total)


def variants_for(problem: hm.HardProblem, variants: Sequence[str]) -> list[str]:
    """The ``variants`` that differ from the default on ``problem``: ``no_reparam`` only where
    the model has location–scale sites to decenter (elsewhere it *is* the default)."""
    if "no_reparam" not in variants:
        return list(variants)
    with torch.random.fork_rng(devices=[]):
        sites = loc_scale_sites(problem.model, *problem.args)
    return [v for v in variants if v != "no_reparam" or sites]


def report_and_save(
    opts: argparse.Namespace,
    rows: list[dict[str, Any]],
    investigation: list[dict[str, Any]],
    references: dict[str, Any],
    skipped: dict[str, str],
    command: str,
    total: float,
) -> dict[str, Any]:
    """Print the tables and verdicts of a run (or of merged runs) and save its JSON."""
    verdicts = {}
    if FLOWGUIDE in opts.guides:
        for name in dict.fromkeys(r["model"] for r in rows):
            for seed in opts.seeds:
                sel = [r for r in rows if r["model"] == name and r["seed"] == seed]
                key = name if len(opts.seeds) == 1 else f"{name}[seed {seed}]"
                floor = (references.get(name) or {}).get("mc_floor")
                verdicts[key] = model_verdict(sel, floor)
    table = format_table(HEADERS, table_rows(rows))
    markdown = markdown_table(HEADERS, table_rows(rows))
    inv_table = format_table(HEADERS, table_rows(investigation)) if investigation else ""
    inv_markdown = markdown_table(HEADERS, table_rows(investigation)) if investigation else ""
    agg_table = agg_markdown = ""
    if len(opts.seeds) > 1:
        agg = aggregate_rows([*rows, *investigation])
        agg_table, agg_markdown = format_table(AGG_HEADERS, agg), markdown_table(AGG_HEADERS, agg)
    over_seeds = seed_verdicts(rows) if len(opts.seeds) > 1 else {}

    print()
    print(table)
    if verdicts:
        print("\nVerdicts (target: mean err <= 0.1 and log sd <= 0.1, or flagged by k-hat > 0.7 or")
        print("by the report; and better than every Pyro guide on max(mean err, log sd)):")
        for v in verdicts.values():
            mark = "n/a" if v["pass"] is None else "PASS" if v["pass"] else "FAIL"
            print(f"  [{mark}] {v['text']}")
    if investigation:
        print("\nInvestigation (FlowGuide with non-default arguments):")
        print(inv_table)
    if agg_table:
        print(f"\nOver seeds {opts.seeds}:")
        print(agg_table)
    for v in over_seeds.values():
        print(f"  {v['text']}")
    for name, why in skipped.items():
        print(f"skipped {name}: {why}")
    print(f"\ntotal {total:.0f}s")
    payload = {
        "benchmark": "hard_posteriors",
        "command": command,
        "settings": {k: _plain(v) for k, v in vars(opts).items()},
        "notes": NOTES,
        "library": library_state(),
        "references": references,
        "results": rows,
        "investigation": investigation,
        "verdicts": verdicts,
        "seed_verdicts": over_seeds,
        "skipped": skipped,
        "table": table,
        "markdown": markdown,
        "investigation_table": inv_table,
        "investigation_markdown": inv_markdown,
        "seeds_table": agg_table,
        "seeds_markdown": agg_markdown,
        "total_wall_s": total,
    }
    path = save_json(opts.out, payload)
    print(f"wrote {path}", file=sys.stderr)
    return payload


def _plain(value: Any) -> Any:
    """A setting as JSON: paths (also in lists) as strings."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def library_state() -> dict[str, Any]:
    """pyro-nf's version, git commit and a hash of the modules that define FlowGuide's defaults
    (so that a result can be matched to the code it measured, uncommitted edits included)."""
    import hashlib
    import subprocess

    root = Path(pyro_nf.__file__).resolve().parent
    digest = hashlib.sha256()
    files = (
        "infer/guides.py",
        "infer/prototype.py",
        "infer/laplace.py",
        "infer/reparam.py",
        "infer/svi.py",
        "training/loop.py",
        "flows/layers.py",
        "flows/registry.py",
        "diagnostics/report.py",
    )
    for name in files:
        digest.update((root / name).read_bytes())
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):  # pragma: no cover
        commit = ""
    return {
        "pyro_nf": pyro_nf.__version__,
        "git_head": commit,
        "defaults_sha256": digest.hexdigest()[:16],
        "hashed_files": [f"pyro_nf/{f}" for f in files],
    }


def mc_floor(ref: hm.Reference, samples: int, reps: int = 4000, seed: int = 0) -> dict[str, float]:
    """95% quantiles of the max-over-coordinates errors that Monte Carlo noise alone produces
    (reference ESS per coordinate, ``samples`` guide draws; Gaussian approximations
    ``se(mean)/sd = sqrt(1/ESS + 1/S)``, ``se(log sd) = sqrt(1/(2 ESS) + 1/(2 S))``): errors
    below these are indistinguishable from zero."""
    ess = torch.tensor(ref.ess, dtype=torch.float64) if ref.ess else None
    inv = (1.0 / ess) if ess is not None else torch.zeros(len(ref.names), dtype=torch.float64)
    se_mean = (inv + 1.0 / samples).sqrt()
    se_log_sd = (0.5 * inv + 0.5 / samples).sqrt()
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(reps, len(ref.names), generator=g, dtype=torch.float64).abs()
    return {
        "mean_err_95": float(torch.quantile((z * se_mean).max(-1).values, 0.95)),
        "log_sd_err_95": float(torch.quantile((z * se_log_sd).max(-1).values, 0.95)),
    }


def _reference_summary(ref: hm.Reference | None, samples: int) -> dict[str, Any] | None:
    if ref is None:
        return None
    out: dict[str, Any] = {"source": ref.source, "coordinates": len(ref.names)}
    out["mc_floor"] = mc_floor(ref, samples)
    if ref.rhat:
        out.update(max_rhat=max(ref.rhat), min_ess=min(ref.ess))
    nuts = ref.checks.get("nuts")
    if nuts:
        out["nuts_check"] = {
            k: nuts[k] for k in ("max_abs_mean_diff_over_sd", "max_abs_log_sd_ratio")
        }
        out["nuts_check"]["max_rhat"] = max(nuts["rhat"])
    if "min_correlation" in ref.checks:
        out["min_correlation"] = ref.checks["min_correlation"]
    for key in ("num_chains", "warmup", "num_samples_per_chain", "seed", "divergences"):
        if key in ref.settings:
            out[key] = ref.settings[key]
    return out


def _progress(row: dict[str, Any]) -> None:
    print(
        f"[{row['model']}] {row['guide']:<28} steps {row['steps']:>5} mean err "
        f"{_f(row['mean_err'])} log sd {_f(row['log_sd_err'])} k-hat {_f(row['khat'], '.2f')} "
        f"({row['wall_s']:.1f}s)",
        file=sys.stderr,
        flush=True,
    )


if __name__ == "__main__":
    main()
