"""Investors: the commercial pipeline."""

from typing import ClassVar

from models.investor import Investor
from schemas.investor import InvestorCreate, InvestorUpdate
from services.base import BaseService


class InvestorService(BaseService[Investor, InvestorCreate, InvestorUpdate]):
    model = Investor
    sort_fields: ClassVar = {
        "name": Investor.name,
        "created_at": Investor.created_at,
        "updated_at": Investor.updated_at,
        "pipeline_stage": Investor.pipeline_stage,
    }
    default_sort = "name"
    not_found_message = "Investor not found"
