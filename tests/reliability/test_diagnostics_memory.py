"""Diagnostics run in bounded memory on loop models (issue 17, kind 8).

A GARCH(1,1)-style model written as users translate it from Stan (a Python loop over time steps
and ``torch.stack(..., -1)``) broadcasts vectorized draws against its time plate into an
``S x S x T`` tensor; evaluated in one vectorized batch, ``report(num_samples=S)`` needed
gigabytes. The draws are now evaluated in chunks of bounded size, and models that are not
vectorization-safe are detected on a small probe and evaluated one draw at a time. The peak
memory is measured in a subprocess (so that this process's own peak does not count).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.distributions.transforms import biject_to

import pyro_nf
from pyro_nf.diagnostics import draws as draws_module
from pyro_nf.diagnostics.draws import weighted_draws

MODELS = textwrap.dedent(
    '''
    import torch, pyro, pyro.distributions as dist

    def garch(r, safe=False):
        """GARCH(1,1); safe=False is the Stan translation that does not vectorize."""
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        omega = pyro.sample("omega", dist.HalfNormal(1.0))
        alpha = pyro.sample("alpha", dist.Uniform(0.0, 1.0))
        beta = pyro.sample("beta", dist.Uniform(0.0, 1.0))
        s2 = [omega + 0 * mu]
        for t in range(1, len(r)):
            s2.append(omega + alpha * (r[t - 1] - mu) ** 2 + beta * s2[t - 1])
        sigma = torch.stack(s2, -1).sqrt()
        if safe:
            pyro.sample("r", dist.Normal(mu[..., None], sigma).to_event(1), obs=r)
        else:
            with pyro.plate("time", len(r)):
                pyro.sample("r", dist.Normal(mu, sigma), obs=r)
    '''
)
_NAMESPACE: dict = {}
exec(MODELS, _NAMESPACE)  # noqa: S102
garch = _NAMESPACE["garch"]

SCRIPT = textwrap.dedent(
    """
    import json, resource, sys, tracemalloc
    import torch, pyro, pyro_nf
    {models}
    safe, num_samples, steps = sys.argv[1] == "safe", int(sys.argv[2]), int(sys.argv[3])
    torch.manual_seed(0)
    r = torch.randn(steps) * 0.5
    model = lambda r: garch(r, safe=safe)
    guide = pyro_nf.FlowGuide(model)
    guide(r)

    def peak_rss():  # VmHWM: this process image's peak (ru_maxrss survives exec on Linux, so a
        try:         # child of a large pytest process would report its parent's peak)
            for line in open("/proc/self/status"):
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    before = peak_rss()
    tracemalloc.start()
    report = guide.report(r, num_samples=num_samples)
    sites = sorted(report.sites, key=lambda s: s.name)
    if safe:  # the other two entry points, on the same draws budget
        summary = pyro_nf.reweighted_summary(model, guide, r, num_samples=num_samples)
        idata = pyro_nf.to_inference_data(model, guide, r, num_samples=num_samples)
        assert sorted(summary) == sorted(idata.posterior.data_vars) == [s.name for s in sites]
    _, peak = tracemalloc.get_traced_memory()
    rss = peak_rss()
    print(json.dumps({{"khat": report.khat, "tracemalloc": peak, "rss": rss, "before": before,
                      "sites": [s.name for s in sites]}}))
    """
)


def _run(kind: str, num_samples: int, steps: int) -> dict:
    code = SCRIPT.format(models=MODELS)
    out = subprocess.run(
        [sys.executable, "-c", code, kind, str(num_samples), str(steps)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


GB = 2**30


def test_report_of_a_vectorizable_loop_model_at_10000_draws_stays_under_1gb():
    res = _run("safe", 10_000, 50)
    assert res["sites"] == ["alpha", "beta", "mu", "omega"]
    assert res["rss"] < 1 * GB, res
    assert res["tracemalloc"] < 256 * 2**20, res


def test_report_of_a_stan_style_loop_model_that_does_not_vectorize_stays_under_1gb():
    # one vectorized batch of S draws would hold S * S * T floats (1500**2 * 50 * 4 B = 0.45 GB
    # per tensor, several of them); the probe detects the model and evaluates draw by draw
    res = _run("unsafe", 1_500, 50)
    assert res["sites"] == ["alpha", "beta", "mu", "omega"]
    assert res["rss"] < 1 * GB, res
    assert res["tracemalloc"] < 256 * 2**20, res


def _sequential_log_weight(model, guide, args, draw: dict[str, torch.Tensor]) -> torch.Tensor:
    """log p(x, z) - log q(z) of one draw, the model traced on its own and q by the flow's
    inverse (independent of the chunked evaluation)."""
    log_p = poutine.trace(poutine.condition(model, data=draw)).get_trace(*args).log_prob_sum()
    parts, log_jac = [], torch.zeros(())
    for name, site in guide.prototype_trace.iter_stochastic_nodes():
        transform = biject_to(site["fn"].support)
        u = transform.inv(draw[name])
        parts.append(u.reshape(-1))
        log_jac = log_jac + transform.log_abs_det_jacobian(u, draw[name]).sum()
    return log_p - (guide.get_posterior().log_prob(torch.cat(parts)) - log_jac)


@pytest.mark.parametrize("safe", [True, False], ids=["vectorizable", "not-vectorizable"])
def test_chunked_log_weights_equal_a_sequential_computation(monkeypatch, safe):
    pyro.clear_param_store()
    torch.manual_seed(0)
    r = torch.randn(12) * 0.5

    def model(r):
        garch(r, safe=safe)

    guide = pyro_nf.FlowGuide(model)
    guide(r)
    monkeypatch.setattr(draws_module, "CHUNK_BYTES", 20_000)  # many small chunks
    calls = []
    original = draws_module._vectorized_chunk if safe else draws_module._vectorized_guide

    def counting(*a, **k):
        calls.append(a[-2])
        return original(*a, **k)

    monkeypatch.setattr(draws_module, original.__name__, counting)
    with torch.no_grad():
        log_w, draws = weighted_draws(model, guide, (r,), {}, 60)
        assert len(calls) > 3 and max(calls) < 60  # chunked (after the probe)
        expected = torch.stack(
            [
                _sequential_log_weight(model, guide, (r,), {k: v[s] for k, v in draws.items()})
                for s in range(60)
            ]
        )
    assert log_w.shape == (60,) and sorted(draws) == ["alpha", "beta", "mu", "omega"]
    torch.testing.assert_close(log_w, expected, rtol=1e-4, atol=1e-3)


def test_a_model_of_wrong_batch_shape_is_detected_by_a_small_probe(monkeypatch):
    """The probe, not a batch of all draws, finds that the model does not vectorize."""
    pyro.clear_param_store()
    r = torch.randn(10)

    def model(r):
        garch(r)

    def guide(r):
        for name in ("mu", "omega", "alpha", "beta"):
            d = dist.Normal(0.0, 1.0) if name == "mu" else dist.Beta(2.0, 2.0)
            pyro.sample(name, d)

    sizes = []
    original = draws_module._vectorized_chunk
    monkeypatch.setattr(
        draws_module, "_vectorized_chunk", lambda *a: sizes.append(a[-2]) or original(*a)
    )
    log_w, _ = weighted_draws(model, guide, (r,), {}, 500)
    assert sizes == [draws_module.PROBE_DRAWS] and log_w.shape == (500,)
    assert bool(torch.isfinite(log_w).all())
