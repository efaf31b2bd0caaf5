"""Every router of the API, included under /api/v1, each operation bound to its permission."""

from fastapi import FastAPI
from fastapi.routing import APIRoute

from api.deps import bind_policy
from api.routes import (
    audit,
    auth,
    contacts,
    exports,
    follow_up_rules,
    gdpr,
    imports,
    interactions,
    investors,
    jobs,
    kpis,
    notifications,
    tasks,
    trash,
    two_factor,
    users,
)

API_PREFIX = "/api/v1"
# In the order requests try them: investors, the most requested, first (docs/adr/0004).
ROUTERS = tuple(
    module.router
    for module in (
        investors,
        auth,
        users,
        contacts,
        interactions,
        tasks,
        kpis,
        jobs,
        two_factor,
        trash,
        audit,
        gdpr,
        follow_up_rules,
        notifications,
        exports,
        imports,
    )
)


def include_api(app: FastAPI) -> None:
    """Each router straight under the prefix: FastAPI matches a request against every level of
    nested routers in turn, a cost paid on each request, so there is no /api/v1 router."""
    for router in ROUTERS:
        app.include_router(router, prefix=API_PREFIX)
    bind_policy(
        [
            (route, method, route.path_format)
            for router in ROUTERS
            for route in router.routes
            if isinstance(route, APIRoute)
            for method in sorted(route.methods or ())
        ]
    )
