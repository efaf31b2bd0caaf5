"""Reading an uploaded spreadsheet: what it is (by content), whether it is safe to open, and
its rows. Everything here is blocking work: callers run it in a thread (anyio.to_thread).

xlsx is read by python-calamine (docs/adr/0017-lecture-des-imports.md): a zip of XML parts,
checked first here so that neither a zip bomb nor an XML entity bomb reaches the parser.
"""

import csv
import html
import io
import re
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import python_calamine

from core.exceptions import AppError, InvalidFieldError
from models.data_import import ImportFormat

MAX_DATA_ROWS = 100_000
# The sum of the uncompressed sizes of an xlsx's parts.
MAX_UNCOMPRESSED_BYTES = 200 * 1024 * 1024
_CHUNK = 1024 * 1024
# A document type declaration is where entities are declared: an xlsx has none, so one is
# refused whatever the parser would make of it (billion laughs, external entities).
_DTD = re.compile(rb"<!(DOCTYPE|ENTITY)", re.IGNORECASE)
_SNIFF_BYTES = 64 * 1024
# Bytes no text file holds (controls other than tab, line feed, carriage return, form feed).
_BINARY = re.compile(rb"[\x00-\x08\x0b\x0e-\x1f\x7f]")


class UnsupportedFileType(AppError):
    status_code = 415
    code = "unsupported_file_type"
    message = "The file is neither an xlsx workbook nor a CSV text file"


class RefusedFile(InvalidFieldError):
    """A 422 about the uploaded file, rendered like a schema failure of the form's `file`."""

    field = "file"

    def __init__(self, message: str | None = None) -> None:
        super().__init__("body", self.field, message=message)


class EmptyFile(RefusedFile):
    code = "empty_file"
    message = "The file holds no data row under its header row"


class TooManyRows(RefusedFile):
    code = "too_many_rows"
    message = f"The file holds more than {MAX_DATA_ROWS:,} data rows"


class InvalidFile(RefusedFile):
    code = "invalid_file"
    message = "The xlsx file is malformed or too large once uncompressed"


class UnsafeXml(InvalidFile):
    message = "The xlsx file declares XML entities, which are refused"


class UnknownSheet(InvalidFile):
    field = "sheet"
    message = "The workbook has no sheet of that name"


def sniff(data: bytes) -> ImportFormat:
    """The file's format by its content, whatever its name says: 415 when neither."""
    if not data.strip():
        raise EmptyFile()
    if data.startswith(b"PK\x03\x04"):
        return ImportFormat.xlsx
    head = data[:_SNIFF_BYTES]
    if _BINARY.search(head) or _decode(head, partial=True) is None:
        raise UnsupportedFileType()
    return ImportFormat.csv


def _decode(data: bytes, *, partial: bool = False) -> str | None:
    """UTF-8 (a BOM is dropped) or else Windows-1252; None when it is neither."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        # A sniffed prefix may end inside a multi-byte character.
        if partial and exc.start >= len(data) - 3 and exc.reason == "unexpected end of data":
            return data[: exc.start].decode("utf-8-sig")
    try:
        return data.decode("cp1252")
    except UnicodeDecodeError:
        return None


def check_xlsx(data: bytes) -> None:
    """422 invalid_file unless the zip is sound, stays under MAX_UNCOMPRESSED_BYTES once
    inflated and its XML declares no entity; 415 when the zip is no workbook.

    The sizes the zip's directory declares are checked first (a bomb is refused before any
    byte is inflated), then every part is inflated here, bounded by what it declares (Python's
    zipfile stops there and checks the CRC): a part that lies about its size is refused too.
    """
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, ValueError) as exc:
        raise InvalidFile() from exc
    with archive:
        members = archive.infolist()
        if sum(member.file_size for member in members) > MAX_UNCOMPRESSED_BYTES:
            raise InvalidFile()
        if "xl/workbook.xml" not in {member.filename for member in members}:
            raise UnsupportedFileType()
        for member in members:
            _check_part(archive, member)


def _check_part(archive: zipfile.ZipFile, member: zipfile.ZipInfo) -> None:
    tail = b""
    try:
        with archive.open(member) as part:
            while chunk := part.read(_CHUNK):
                if _DTD.search(tail + chunk):
                    raise UnsafeXml()
                tail = chunk[-16:]
    except (zipfile.BadZipFile, NotImplementedError, OSError, EOFError) as exc:
        raise InvalidFile() from exc
    except RuntimeError as exc:  # an encrypted part
        raise InvalidFile() from exc


class UncachedFormula:
    """A formula cell saved without its computed value (written by a program, never opened in
    a spreadsheet): there is no value to import."""

    def __str__(self) -> str:
        return "(formula)"


UNCACHED_FORMULA = UncachedFormula()


@dataclass(frozen=True, slots=True)
class SheetRow:
    """One row: its number in the spreadsheet (header = 1) and its cells, left to right."""

    number: int
    cells: list[Any]


def read_rows(
    data: bytes, file_format: ImportFormat, sheet: str | None, *, formulas: bool = True
) -> Iterator[SheetRow]:
    """Every row, the header first, blank rows left out (their numbers are kept). `formulas`:
    mark the formula cells without a value (the pre-scan, which only counts, does not)."""
    if file_format is ImportFormat.xlsx:
        rows = _xlsx_rows(data, sheet, formulas=formulas)
    else:
        rows = _csv_rows(data)
    for row in rows:
        if any(_filled(cell) for cell in row.cells):
            yield row


def _filled(cell: Any) -> bool:
    return cell is not None and not (isinstance(cell, str) and not cell.strip())


def _xlsx_rows(data: bytes, sheet: str | None, *, formulas: bool) -> Iterator[SheetRow]:
    try:
        workbook = python_calamine.CalamineWorkbook.from_filelike(io.BytesIO(data))
        if sheet is None:
            worksheet = workbook.get_sheet_by_index(0)
        elif sheet in workbook.sheet_names:
            worksheet = workbook.get_sheet_by_name(sheet)
        else:
            raise UnknownSheet()
    except (python_calamine.CalamineError, ValueError) as exc:
        raise InvalidFile() from exc
    uncached: dict[int, list[int]] = {}
    for row_number, column in uncached_formulas(data, worksheet.name) if formulas else ():
        uncached.setdefault(row_number, []).append(column)
    # A sheet's range starts at its first used cell, not at A1.
    first_row, first_column = worksheet.start or (0, 0)
    padding = [None] * first_column
    for offset, cells in enumerate(worksheet.iter_rows()):
        number = first_row + offset + 1
        row: list[Any] = [*padding, *cells]
        for column in uncached.get(number, ()):
            if column < len(row):
                row[column] = UNCACHED_FORMULA
        yield SheetRow(number, row)


# One cell element that is not self-closing, its reference split, and what it holds.
_CELL = re.compile(rb'<c\b[^>]*?\br="([A-Z]{1,3})([0-9]+)"[^>]*(?<!/)>(.*?)</c>', re.DOTALL)
_SHEET = re.compile(rb"<sheet\b[^>]*>")
_ATTRIBUTE = re.compile(rb'\b([\w:]+)="([^"]*)"')
_RELATIONSHIP = re.compile(rb"<Relationship\b[^>]*>")


def uncached_formulas(data: bytes, sheet_name: str) -> set[tuple[int, int]]:
    """(row number, column index) of the sheet's formula cells that hold no value. calamine
    reads them as empty; this reads the sheet's XML as a stream of cells, without a parser."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        part = _sheet_part(archive, sheet_name)
        if part is None:
            return set()
        found: set[tuple[int, int]] = set()
        pending = b""
        with archive.open(part) as stream:
            while chunk := stream.read(_CHUNK):
                pending += chunk
                end = pending.rfind(b"</c>")
                if end == -1:
                    continue
                complete, pending = pending[: end + 4], pending[end + 4 :]
                for match in _CELL.finditer(complete):
                    inner = match.group(3)
                    if b"<f" in inner and b"<v" not in inner:
                        found.add((int(match.group(2)), _column_index(match.group(1))))
        return found


def _column_index(letters: bytes) -> int:
    index = 0
    for letter in letters:
        index = index * 26 + letter - ord("A") + 1
    return index - 1


def _attributes(element: bytes) -> dict[bytes, str]:
    return {name: html.unescape(value.decode()) for name, value in _ATTRIBUTE.findall(element)}


def _sheet_part(archive: zipfile.ZipFile, sheet_name: str) -> str | None:
    """The zip member holding the sheet of that name (workbook.xml names it, its relationships
    say where it is)."""
    try:
        workbook = archive.read("xl/workbook.xml")
        relationships = archive.read("xl/_rels/workbook.xml.rels")
    except KeyError:
        return None
    target_id = None
    for element in _SHEET.findall(workbook):
        attributes = _attributes(element)
        if attributes.get(b"name") == sheet_name:
            target_id = attributes.get(b"r:id")
    for element in _RELATIONSHIP.findall(relationships):
        attributes = _attributes(element)
        if attributes.get(b"Id") == target_id and (target := attributes.get(b"Target")):
            path = target.lstrip("/") if target.startswith("/") else f"xl/{target}"
            return path if path in archive.namelist() else None
    return None


def _csv_rows(data: bytes) -> Iterator[SheetRow]:
    text = _decode(data)
    if text is None:
        raise UnsupportedFileType()
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=_separator(text))
    try:
        # One record is one spreadsheet row, a quoted field spanning lines included.
        for number, cells in enumerate(reader, start=1):
            yield SheetRow(number, cells)
    except csv.Error as exc:
        raise InvalidFile("The CSV file is malformed") from exc


def _separator(text: str) -> str:
    """`;` (what French Excel writes) or `,`: whichever the header line holds more of, quoted
    headers aside."""
    header = text.split("\n", 1)[0]
    unquoted = re.sub(r'"[^"]*"', "", header)
    return "," if unquoted.count(",") > unquoted.count(";") else ";"


def count_data_rows(data: bytes, file_format: ImportFormat, sheet: str | None) -> int:
    """The pre-scan before an import is accepted: the file opens, has a header and at least one
    data row, and no more than MAX_DATA_ROWS (the count stops at the first row too many)."""
    if file_format is ImportFormat.xlsx:
        check_xlsx(data)
    count = -1  # the header
    for _ in read_rows(data, file_format, sheet, formulas=False):
        count += 1
        if count > MAX_DATA_ROWS:
            raise TooManyRows()
    if count < 1:
        raise EmptyFile()
    return count
