"""On-demand analyses over cached records; importing this package registers every family's methods."""

from app.analysis import detection, membership, uncertainty
from app.analysis.base import REGISTRY, Context, Method, Positions

__all__ = ["REGISTRY", "Context", "Method", "Positions", "detection", "membership", "uncertainty"]
