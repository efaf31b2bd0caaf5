"""Query parameters of the spreadsheet exports (the filters are each list route's own)."""

import enum
from typing import Literal

from pydantic import BaseModel, Field

from schemas.common import PG_INT_MAX


class ExportFormat(enum.StrEnum):
    csv = "csv"
    xlsx = "xlsx"


class ExportOptions(BaseModel):
    """How the file is written, whatever the records."""

    lang: Literal["fr", "en"] = Field(default="fr", description="Language of the headers")
    sep: Literal["semicolon", "comma"] = Field(
        default="semicolon",
        description="CSV separator: `;` (what French Excel opens) or `,`; ignored for xlsx",
    )


class ContactExportFilters(BaseModel):
    """Contacts are listed per investor: the export takes one investor's, or everyone's."""

    investor_id: int | None = Field(default=None, ge=1, le=PG_INT_MAX)
