"""Kpis routes (see the issue that builds them)."""

from fastapi import APIRouter

router = APIRouter(prefix="/kpis", tags=["kpis"])
