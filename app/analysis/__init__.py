"""On-demand analyses over cached records; importing this package registers every family's methods."""

from app.analysis import comparison, detection, membership, uncertainty
from app.analysis.base import REGISTRY, Context, Method, Positions

__all__ = ["REGISTRY", "Context", "Method", "Positions", "comparison", "detection", "membership", "uncertainty"]
