"""Can the fitted posterior be trusted? PSIS, importance weights, the trust report, NUTS
references and the ArviZ export.
"""

from . import psis
from .importance import (
    diagnose_importance,
    log_evidence,
    log_importance_weights,
    psis_khat,
    to_inference_data,
)
from .inference_data import flat_convergence, flat_draws, inference_data_from_samples
from .reference import ReferenceWarning, run_nuts
from .report import SiteReliability, TrustReport, diagnose, reweighted_summary

__all__ = [
    "ReferenceWarning",
    "SiteReliability",
    "TrustReport",
    "diagnose",
    "diagnose_importance",
    "flat_convergence",
    "flat_draws",
    "inference_data_from_samples",
    "log_evidence",
    "log_importance_weights",
    "psis",
    "psis_khat",
    "reweighted_summary",
    "run_nuts",
    "to_inference_data",
]
