"""Every router of the API, gathered under /api/v1."""

from fastapi import APIRouter

from api.routes import auth, users

api_router = APIRouter(prefix="/api/v1")
api_router.include_router(auth.router)
api_router.include_router(users.router)
