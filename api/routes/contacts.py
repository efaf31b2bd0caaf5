"""Contacts routes (see the issue that builds them)."""

from fastapi import APIRouter

router = APIRouter(prefix="/contacts", tags=["contacts"])
