"""Typed dependencies of the routes: the app's services and the caller's tenant."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.platform.auth import CreatorDep, TenantDep, current_tenant
from app.serving.services import Services

__all__ = ["CreatorDep", "ServicesDep", "TenantDep", "current_tenant"]


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]
