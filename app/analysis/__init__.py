"""On-demand analyses over cached records; importing this package registers every family's methods.

Pure numpy over the statistics a record keeps (`workers.contract.records.RecordMeta` and its arrays): one module per
family, one registry (`base`), the runner (`run`), calibration thresholds. Imports nothing else from `app`."""

from app.analysis import comparison, consistency, detection, membership, uncertainty
from app.analysis.base import REGISTRY, Context, Method, Positions

__all__ = [
    "REGISTRY",
    "Context",
    "Method",
    "Positions",
    "comparison",
    "consistency",
    "detection",
    "membership",
    "uncertainty",
]
