"""The columns of the spreadsheets the CRM reads and writes: exports, import templates and the
import's header matching all use this one map, so a file the CRM wrote is a file it can read.

Per entity, the ordered columns: the record's field, its French and English headers, its kind
(and enum class), whether it is required on import, its maximum length and its width. Columns
marked `read_only` (ids, timestamps) are exported; an import recognises their header and ignores
their value (never an `unknown_column`), and the import template leaves them out."""

import enum
import unicodedata
from dataclasses import dataclass
from types import MappingProxyType

from models.interaction import InteractionType
from models.investor import ClientType, PipelineStage


class SpreadsheetEntity(enum.StrEnum):
    """The records a spreadsheet can hold, as the API names them (singular)."""

    investor = "investor"
    contact = "contact"
    interaction = "interaction"
    kpi = "kpi"


class ColumnType(enum.StrEnum):
    text = "text"
    email = "email"
    phone = "phone"
    integer = "integer"
    # Numeric with 2 decimals: written as a number formatted `#,##0.00`.
    money = "money"
    # 0-100 with 2 decimals (commission rate), as a number, not an Excel percentage.
    percent = "percent"
    boolean = "boolean"
    date = "date"
    datetime = "datetime"
    enum = "enum"


@dataclass(frozen=True, slots=True)
class SpreadsheetColumn:
    field: str
    header_fr: str
    header_en: str
    kind: ColumnType
    # The enum class of an `enum` column; its cells hold the code or the French label.
    enum_class: type[enum.StrEnum] | None = None
    required: bool = False
    max_length: int | None = None
    read_only: bool = False
    # Character widths of the column in an xlsx file.
    width: int = 16
    # More headers an import accepts for this column (matched like the two main ones).
    aliases: tuple[str, ...] = ()

    def header(self, lang: str) -> str:
        return self.header_en if lang == "en" else self.header_fr


# French labels of every enum value, in the enum's own order (the order of validation lists).
ENUM_LABELS: MappingProxyType[type[enum.StrEnum], MappingProxyType[str, str]] = MappingProxyType(
    {
        PipelineStage: MappingProxyType(
            {
                PipelineStage.prospect_froid: "Prospect froid",
                PipelineStage.prospect_tiede: "Prospect tiède",
                PipelineStage.prospect_chaud: "Prospect chaud",
                PipelineStage.en_negociation: "En négociation",
                PipelineStage.client: "Client",
                PipelineStage.perdu: "Perdu",
            }
        ),
        ClientType: MappingProxyType(
            {
                ClientType.cgpi: "CGPI",
                ClientType.wholesale: "Wholesale",
                ClientType.institutionnel: "Institutionnel",
                ClientType.autre: "Autre",
            }
        ),
        InteractionType: MappingProxyType(
            {
                InteractionType.appel: "Appel",
                InteractionType.email: "E-mail",
                InteractionType.reunion: "Réunion",
                InteractionType.webinaire: "Webinaire",
                InteractionType.autre: "Autre",
            }
        ),
    }
)
# How a boolean cell is written; an import also accepts true/false, yes/no and 1/0.
BOOLEAN_LABELS = MappingProxyType({True: "Oui", False: "Non"})

_C = SpreadsheetColumn
_T = ColumnType

_ID = _C("id", "ID", "id", _T.integer, read_only=True, width=10)
_CREATED_AT = _C("created_at", "Créé le", "created_at", _T.datetime, read_only=True, width=20)
_UPDATED_AT = _C("updated_at", "Modifié le", "updated_at", _T.datetime, read_only=True, width=20)
# An interaction's, contact's or KPI's investor: by id or by email (either one is enough).
_INVESTOR_ID = _C("investor_id", "ID investisseur", "investor_id", _T.integer, width=14)
_INVESTOR_EMAIL = _C(
    "investor_email",
    "E-mail investisseur",
    "investor_email",
    _T.email,
    max_length=254,
    width=30,
    aliases=("Email investisseur",),
)
_EMAIL_ALIASES = ("Email", "Courriel", "Adresse e-mail")

COLUMNS: MappingProxyType[SpreadsheetEntity, tuple[SpreadsheetColumn, ...]] = MappingProxyType(
    {
        SpreadsheetEntity.investor: (
            _ID,
            _C("name", "Nom", "name", _T.text, required=True, max_length=255, width=30),
            _C(
                "email",
                "E-mail",
                "email",
                _T.email,
                max_length=254,
                width=30,
                aliases=_EMAIL_ALIASES,
            ),
            _C("phone", "Téléphone", "phone", _T.phone, max_length=50, width=18),
            _C("website", "Site web", "website", _T.text, max_length=255, width=26),
            _C("company", "Société", "company", _T.text, max_length=255, width=26),
            _C("industry", "Secteur", "industry", _T.text, max_length=255, width=20),
            _C(
                "pipeline_stage",
                "Étape",
                "pipeline_stage",
                _T.enum,
                enum_class=PipelineStage,
                width=18,
                aliases=("Étape du pipeline",),
            ),
            _C(
                "client_type",
                "Type de client",
                "client_type",
                _T.enum,
                enum_class=ClientType,
                width=16,
            ),
            _C("is_active", "Actif", "is_active", _T.boolean, width=8),
            _C(
                "owner_email",
                "Commercial",
                "owner_email",
                _T.email,
                max_length=254,
                width=28,
                aliases=("E-mail du commercial",),
            ),
            _C("notes", "Notes", "notes", _T.text, max_length=10_000, width=40),
            _CREATED_AT,
            _UPDATED_AT,
        ),
        SpreadsheetEntity.contact: (
            _ID,
            _INVESTOR_ID,
            _INVESTOR_EMAIL,
            _C("name", "Nom", "name", _T.text, required=True, max_length=255, width=28),
            _C(
                "email",
                "E-mail",
                "email",
                _T.email,
                max_length=254,
                width=30,
                aliases=_EMAIL_ALIASES,
            ),
            _C("phone", "Téléphone", "phone", _T.phone, max_length=50, width=18),
            _C("title", "Fonction", "title", _T.text, max_length=255, width=22),
            _C("notes", "Notes", "notes", _T.text, max_length=10_000, width=40),
            _CREATED_AT,
            _UPDATED_AT,
        ),
        SpreadsheetEntity.interaction: (
            _ID,
            _INVESTOR_ID,
            _INVESTOR_EMAIL,
            _C("contact_id", "ID contact", "contact_id", _T.integer, width=12),
            _C(
                "type",
                "Type",
                "type",
                _T.enum,
                enum_class=InteractionType,
                required=True,
                width=14,
            ),
            _C("date", "Date", "date", _T.date, required=True, width=12),
            _C(
                "duration_minutes",
                "Durée (minutes)",
                "duration_minutes",
                _T.integer,
                width=14,
            ),
            _C("subject", "Objet", "subject", _T.text, max_length=255, width=30),
            _C("notes", "Notes", "notes", _T.text, max_length=10_000, width=40),
            _CREATED_AT,
            _UPDATED_AT,
        ),
        SpreadsheetEntity.kpi: (
            _ID,
            _INVESTOR_ID,
            _INVESTOR_EMAIL,
            _C("year", "Année", "year", _T.integer, required=True, width=8),
            _C("month", "Mois", "month", _T.integer, required=True, width=8),
            _C("rdv_count", "Rendez-vous", "rdv_count", _T.integer, width=12),
            _C("pitchs", "Pitchs", "pitchs", _T.integer, width=10),
            _C("due_diligences", "Due diligences", "due_diligences", _T.integer, width=14),
            _C("closings", "Closings", "closings", _T.integer, width=10),
            _C("revenue", "Chiffre d'affaires", "revenue", _T.money, width=18),
            _C(
                "commission_rate",
                "Taux de commission (%)",
                "commission_rate",
                _T.percent,
                width=20,
            ),
            _C("notes", "Notes", "notes", _T.text, max_length=10_000, width=40),
            _CREATED_AT,
            _UPDATED_AT,
        ),
    }
)

# The start of a downloaded file's name, in French (`investisseurs_2026-11-26.xlsx`).
FILE_STEMS = MappingProxyType(
    {
        SpreadsheetEntity.investor: "investisseurs",
        SpreadsheetEntity.contact: "contacts",
        SpreadsheetEntity.interaction: "interactions",
        SpreadsheetEntity.kpi: "kpis",
    }
)


# What a spreadsheet runs as a formula when a text starts with it.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


# The first characters of every text `needs_apostrophe` may accept: most texts are let through
# by one set lookup (an export asks for every text cell).
APOSTROPHE_CANDIDATES = frozenset((*FORMULA_STARTS, "'"))


def needs_apostrophe(text: str) -> bool:
    """Whether a CSV export writes the text after an apostrophe: it starts with a formula sign,
    or is itself an apostrophe before such a text (the import removes one apostrophe from
    exactly these, so every text comes back as it was)."""
    return text[:1] in APOSTROPHE_CANDIDATES and text.lstrip("'").startswith(FORMULA_STARTS)


def normalise_header(text: str) -> str:
    """A header as matched: case, accents, spaces, `-` and `_` ignored ("E-mail" = "email")."""
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    return "".join(c for c in decomposed if c.isalnum() and not unicodedata.combining(c))


def header_index(entity: SpreadsheetEntity) -> dict[str, SpreadsheetColumn]:
    """Every accepted header of the entity's columns, normalised, to its column."""
    index: dict[str, SpreadsheetColumn] = {}
    for column in COLUMNS[entity]:
        for header in (column.header_fr, column.header_en, column.field, *column.aliases):
            index.setdefault(normalise_header(header), column)
    return index


def import_columns(entity: SpreadsheetEntity) -> tuple[SpreadsheetColumn, ...]:
    """The columns an import writes (and a template shows), in order."""
    return tuple(column for column in COLUMNS[entity] if not column.read_only)
