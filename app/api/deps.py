"""Typed dependencies of the routes: the app's services and the caller's tenant."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Query, Request

from app.platform.auth import CreatorDep, TenantDep, current_tenant
from app.serving.services import Services

__all__ = ["CreatorDep", "ListLimit", "ServicesDep", "TenantDep", "current_tenant"]


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]

# `limit` on list routes (batches, calibrations, heads): an integer in [1, 100], else 422 naming `limit`.
ListLimit = Annotated[int, Query(ge=1, le=100, description="at most this many, newest first (has_more says if more)")]
