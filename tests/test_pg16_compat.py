"""Production runs PostgreSQL 16, while the tests and the bench run the embedded 18: SQL that only
17 or later accepts would pass every test here and fail in production.

These tests read the SQL the migrations emit (Alembic's offline `--sql` output for the whole
chain) and the SQL text of the application (string literals and `func.<name>` calls in its
Python modules, and its shell scripts), and fail on any construct of the list below. The list
is kept by hand from the PostgreSQL 17 and 18 release notes: add to it when a release adds
syntax or functions this code base might reach for."""

import io
import re
import tokenize
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from alembic import command

from core.config import PROJECT_ROOT
from core.migrations import alembic_config

# Where the application's own SQL lives (the tests and the bench only ever run on 18).
APPLICATION_DIRS = ("api", "core", "models", "services", "scripts", "alembic")
FLAGS = re.IGNORECASE | re.DOTALL


@dataclass(frozen=True)
class Feature:
    """SQL that PostgreSQL 16 refuses, with an example the scanner must flag."""

    name: str
    pattern: str
    example: str

    def finds(self, sql: str) -> bool:
        return re.search(self.pattern, sql, FLAGS) is not None


class GeneratedColumnFeature(Feature):
    """A generated column is VIRTUAL by default on 18, and must say STORED on 16."""

    def finds(self, sql: str) -> bool:
        for match in re.finditer(self.pattern, sql, FLAGS):
            depth, end = 0, match.end() - 1
            for end in range(match.end() - 1, len(sql)):  # to the `)` closing the expression
                depth += {"(": 1, ")": -1}.get(sql[end], 0)
                if depth == 0:
                    break
            if not re.match(r"\s*STORED\b", sql[end + 1 :], FLAGS):
                return True
        return False


def function(name: str, since: int, example: str) -> Feature:
    return Feature(f"{name}() (PostgreSQL {since})", rf"\b{name}\s*\(", example)


# Within one statement: no `;` between the two parts.
FEATURES = (
    Feature(
        "RETURNING OLD/NEW (PostgreSQL 18)",
        r"\bRETURNING\b[^;]*?(?:\b(?:OLD|NEW)\s*\.|\bWITH\s*\(\s*(?:OLD|NEW)\b)",
        "UPDATE kpis SET closings = 1 RETURNING old.closings, new.closings",
    ),
    GeneratedColumnFeature(
        "virtual generated column (PostgreSQL 18)",
        r"\bGENERATED\s+ALWAYS\s+AS\s*\(",
        "ALTER TABLE t ADD COLUMN n text GENERATED ALWAYS AS (lower(coalesce(a, upper(b))))",
    ),
    Feature(
        "WITHOUT OVERLAPS (PostgreSQL 18)",
        r"\bWITHOUT\s+OVERLAPS\b",
        "ALTER TABLE t ADD PRIMARY KEY (id, valid_at WITHOUT OVERLAPS)",
    ),
    Feature(
        "PERIOD foreign key (PostgreSQL 18)",
        r"\bREFERENCES\b[^;]*?\(\s*[^;()]*\bPERIOD\s+\w+",
        "ALTER TABLE t ADD FOREIGN KEY (id, PERIOD at) REFERENCES u (id, PERIOD valid_at)",
    ),
    Feature(
        "NOT ENFORCED constraint (PostgreSQL 18)",
        r"\bNOT\s+ENFORCED\b",
        "ALTER TABLE kpis ADD CONSTRAINT c CHECK (closings >= 0) NOT ENFORCED",
    ),
    Feature(
        "NOT NULL ... NOT VALID (PostgreSQL 18)",
        r"\bNOT\s+NULL\s+\w+\s+NOT\s+VALID\b",
        "ALTER TABLE kpis ADD CONSTRAINT c NOT NULL notes NOT VALID",
    ),
    Feature(
        "COPY ... REJECT_LIMIT / ON_ERROR / LOG_VERBOSITY (PostgreSQL 17-18)",
        r"\bCOPY\b[^;]*?\b(?:ON_ERROR|LOG_VERBOSITY|REJECT_LIMIT)\b",
        "COPY investors FROM STDIN (FORMAT csv, ON_ERROR ignore)",
    ),
    Feature(
        "MERGE ... RETURNING (PostgreSQL 17)",
        r"\bMERGE\s+INTO\b[^;]*?\bRETURNING\b",
        "MERGE INTO kpis k USING src s ON k.id = s.id WHEN MATCHED THEN DELETE RETURNING k.id",
    ),
    Feature(
        "WHEN NOT MATCHED BY SOURCE (PostgreSQL 17)",
        r"\bNOT\s+MATCHED\s+BY\s+SOURCE\b",
        "MERGE INTO t USING s ON t.id = s.id WHEN NOT MATCHED BY SOURCE THEN DELETE",
    ),
    Feature(
        "AT LOCAL (PostgreSQL 17)",
        r"\bAT\s+LOCAL\b",
        "SELECT created_at AT LOCAL FROM investors",
    ),
    Feature(
        "infinite interval (PostgreSQL 17)",
        r"'[+-]?infinity'\s*::\s*interval\b|\binterval\s+'[+-]?infinity'",
        "SELECT now() + interval 'infinity'",
    ),
    Feature(
        "SET EXPRESSION on a generated column (PostgreSQL 17)",
        r"\bSET\s+EXPRESSION\b",
        "ALTER TABLE investors ALTER COLUMN n SET EXPRESSION AS (upper(name))",
    ),
    Feature(
        "EXPLAIN (SERIALIZE | MEMORY) (PostgreSQL 17)",
        r"\bEXPLAIN\s*\([^)]*\b(?:SERIALIZE|MEMORY)\b",
        "EXPLAIN (ANALYZE, SERIALIZE) SELECT 1",
    ),
    Feature(
        "MAINTAIN privilege (PostgreSQL 17)",
        r"\bGRANT\s+(?:[\w\s,]*,\s*)?MAINTAIN\b|\bpg_maintain\b",
        "GRANT MAINTAIN ON investors TO crm",
    ),
    Feature(
        "transaction_timeout (PostgreSQL 17)",
        # Not after `^`: the restore script's sed address that removes pg_dump's line.
        r"(?<!\^)\bSET\s+(?:LOCAL\s+|SESSION\s+)?transaction_timeout\b",
        "SET LOCAL transaction_timeout = '5s'",
    ),
    function("uuidv7", 18, "SELECT uuidv7()"),
    function("uuidv4", 18, "SELECT uuidv4()"),
    function("casefold", 18, "SELECT casefold(name) FROM investors"),
    function("array_sort", 18, "SELECT array_sort(ARRAY[3, 1, 2])"),
    function("array_reverse", 18, "SELECT array_reverse(ARRAY[1, 2])"),
    function("crc32", 18, "SELECT crc32('abc'::bytea)"),
    function("crc32c", 18, "SELECT crc32c('abc'::bytea)"),
    function("gamma", 18, "SELECT gamma(5)"),
    function("lgamma", 18, "SELECT lgamma(5)"),
    function("uuid_extract_timestamp", 17, "SELECT uuid_extract_timestamp(id) FROM t"),
    function("uuid_extract_version", 17, "SELECT uuid_extract_version(id) FROM t"),
    function("json_table", 17, "SELECT * FROM JSON_TABLE(doc, '$[*]' COLUMNS (a int PATH '$.a'))"),
    function("json_query", 17, "SELECT JSON_QUERY(doc, '$.a')"),
    function("json_value", 17, "SELECT JSON_VALUE(doc, '$.a' RETURNING int)"),
    function("json_exists", 17, "SELECT JSON_EXISTS(doc, '$.a')"),
    function("json_scalar", 17, "SELECT JSON_SCALAR(1)"),
    function("json_serialize", 17, "SELECT JSON_SERIALIZE('{}' RETURNING bytea)"),
    function(
        "merge_action",
        17,
        "MERGE INTO t USING s ON true WHEN MATCHED THEN DELETE RETURNING merge_action()",
    ),
    function("to_bin", 17, "SELECT to_bin(5)"),
    function("to_oct", 17, "SELECT to_oct(8)"),
    function("pg_basetype", 17, "SELECT pg_basetype('int4'::regtype)"),
    function("unicode_assigned", 17, "SELECT unicode_assigned(name) FROM investors"),
)
# SQL that PostgreSQL 16 accepts and that looks close to the features above.
POSTGRESQL_16_SQL = (
    "UPDATE kpis SET closings = 1 WHERE id = 1 RETURNING id, closings",
    "ALTER TABLE investors ADD COLUMN n text GENERATED ALWAYS AS (lower(name)) STORED",
    "ALTER TABLE t ADD COLUMN n text GENERATED ALWAYS AS (lower(f(coalesce(a, upper(b))))) "
    "STORED NOT NULL",
    "ALTER TABLE investors ADD COLUMN id2 int GENERATED ALWAYS AS IDENTITY",
    "CREATE FUNCTION f() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
    "UPDATE counts SET n = n + 1 WHERE id = NEW.investor_id; RETURN NEW; END $$",
    "MERGE INTO kpis k USING src s ON k.id = s.id WHEN NOT MATCHED THEN INSERT VALUES (s.id)",
    "COPY investors TO STDOUT (FORMAT csv, HEADER true)",
    "SELECT created_at AT TIME ZONE 'UTC', interval '1 day', gen_random_uuid(), lower(name)",
    "SELECT JSON_OBJECT('a': 1), JSON_ARRAY(1, 2), doc IS JSON, any_value(name)",
    "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) SELECT 1",
    "SET LOCAL statement_timeout = '5s'",
    "sed '/^SET transaction_timeout = 0;$/d'",
)


def findings(sql: str) -> list[str]:
    return [feature.name for feature in FEATURES if feature.finds(sql)]


def python_sql(path: Path) -> Iterator[str]:
    """The string literals of a module, and its `func.<name>(` calls spelled as SQL."""
    with path.open("rb") as source:
        tokens = list(tokenize.tokenize(source.readline))
    for index, token in enumerate(tokens):
        if token.type == tokenize.STRING:
            yield token.string
        elif token.string == "func" and index + 3 < len(tokens):
            dot, name, paren = tokens[index + 1 : index + 4]
            if dot.string == "." and paren.string == "(":
                yield f"SELECT {name.string}()"


def application_sql() -> Iterator[tuple[Path, str]]:
    for directory in APPLICATION_DIRS:
        for path in sorted((PROJECT_ROOT / directory).rglob("*")):
            if path.suffix == ".py":
                for sql in python_sql(path):
                    yield path, sql
            elif path.suffix == ".sh":
                lines = path.read_text().splitlines()
                yield path, "\n".join(line for line in lines if not line.lstrip().startswith("#"))


def migration_sql() -> str:
    """What `alembic upgrade head --sql` prints: every migration, as PostgreSQL will run it."""
    output = io.StringIO()
    config = alembic_config("postgresql+asyncpg://offline@localhost/offline")
    config.output_buffer = output
    config.attributes["configure_logger"] = False
    command.upgrade(config, "head", sql=True)
    return output.getvalue()


def test_the_migrations_emit_postgresql_16_sql_only() -> None:
    sql = migration_sql()
    # The chain really was rendered: the first and the last migration are in it.
    assert "CREATE TABLE investors" in sql
    assert "Running upgrade 0006 -> 0007" in sql
    flagged = [
        (names, statement) for statement in sql.split(";\n") if (names := findings(statement))
    ]
    assert flagged == []


def test_the_application_sql_is_postgresql_16_sql() -> None:
    scanned = list(application_sql())
    # Every SQL-bearing module was read.
    assert {path.name for path, _ in scanned} >= {"investors.py", "db.py", "restore.sh"}
    flagged = [
        (names, str(path.relative_to(PROJECT_ROOT)))
        for path, sql in scanned
        if (names := findings(sql))
    ]
    assert flagged == []


@pytest.mark.parametrize("feature", FEATURES, ids=lambda feature: feature.name)
def test_the_scanner_flags_each_feature(feature: Feature) -> None:
    assert feature.name in findings(feature.example)
    # Whatever the case and layout the statement is written in.
    assert feature.name in findings(feature.example.lower().replace(" ", "\n  "))


def test_the_scanner_flags_a_feature_inside_python_code(tmp_path: Path) -> None:
    module = tmp_path / "service.py"
    module.write_text(
        "from sqlalchemy import func, text\n"
        "STATEMENT = text('SELECT id FROM t WHERE n = casefold(:n)')\n"
        "def new_id():\n"
        "    return func.uuidv7()\n"
        "def fold(value: str) -> str:\n"
        "    return value.casefold()\n"
    )
    found = [findings(sql) for sql in python_sql(module)]
    assert [names for names in found if names] == [
        ["casefold() (PostgreSQL 18)"],
        ["uuidv7() (PostgreSQL 18)"],
    ]


@pytest.mark.parametrize("sql", POSTGRESQL_16_SQL)
def test_the_scanner_passes_postgresql_16_sql(sql: str) -> None:
    assert findings(sql) == []
