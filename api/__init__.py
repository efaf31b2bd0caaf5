"""Every router of the API, gathered under /api/v1."""

from fastapi import APIRouter

from api.routes import auth, contacts, interactions, investors, kpis, users

api_router = APIRouter(prefix="/api/v1")
for module in (auth, users, investors, contacts, interactions, kpis):
    api_router.include_router(module.router)
