"""search_words: the distinct words of the searched names, for typo-tolerant search

Revision ID: 0007
Revises: 0006
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# A misspelt term is first matched against this short list of words (services/investors.py),
# then the investors and contacts holding the close words are found through the trigram
# indexes of 0002, as a literal search would. Matching the misspelling against every row took
# one word_similarity() per row until enough matched: 400 ms for "Rotchild" at 1M investors.
#
# Words are split as pg_trgm splits them (on anything but letters and digits), from the texts
# the approximate search compares: investors' fuzzy_text, contacts' search_text. Only words of
# three letters or more: shorter query words are not matched approximately. A word is never
# removed when its last holder changes or goes: the search finds no row through it, which costs
# one index probe. Statement-level triggers: one INSERT per statement, whatever its row count.
# Words are inserted in sorted order, so that two statements adding the same new words wait for
# each other instead of deadlocking.
WORDS = """
    SELECT DISTINCT word
    FROM ({source}) AS texts, regexp_split_to_table(texts.text, '[^[:alnum:]]+') AS word
    WHERE word ~ '[[:alpha:]].*[[:alpha:]].*[[:alpha:]]'
"""
INSERT_WORDS = "INSERT INTO search_words (word) {words} ORDER BY word ON CONFLICT DO NOTHING"
INVESTOR_TEXTS = "SELECT fuzzy_text AS text FROM {table}"
CONTACT_TEXTS = "SELECT search_text AS text FROM {table}"
FUNCTION = "crm_search_words_add"
TABLES = {"investors": INVESTOR_TEXTS, "contacts": CONTACT_TEXTS}


def _insert(source: str) -> str:
    return INSERT_WORDS.format(words=WORDS.format(source=source))


def upgrade() -> None:
    op.create_table(
        "search_words",
        sa.Column("word", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("word", name=op.f("pk_search_words")),
    )
    op.create_index(
        "ix_search_words_word_trgm",
        "search_words",
        ["word"],
        postgresql_using="gin",
        postgresql_ops={"word": "gin_trgm_ops"},
    )
    investors = _insert(INVESTOR_TEXTS.format(table="new_rows"))
    contacts = _insert(CONTACT_TEXTS.format(table="new_rows"))
    op.execute(
        f"""
CREATE FUNCTION {FUNCTION}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_TABLE_NAME = 'investors' THEN
        {investors};
    ELSE
        {contacts};
    END IF;
    RETURN NULL;
END
$$
"""
    )
    # CREATE TRIGGER locks out writers until this transaction commits, so the backfill below
    # sees every row and no write falls between the backfill and the triggers.
    for table in TABLES:
        for event in ("insert", "update"):
            op.execute(
                f"CREATE TRIGGER {table}_search_words_{event} AFTER {event.upper()} ON {table} "
                f"REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION "
                f"{FUNCTION}()"
            )
    source = " UNION ALL ".join(texts.format(table=table) for table, texts in TABLES.items())
    op.execute(_insert(source))


def downgrade() -> None:
    for table in TABLES:
        for event in ("insert", "update"):
            op.execute(f"DROP TRIGGER {table}_search_words_{event} ON {table}")
    op.execute(f"DROP FUNCTION {FUNCTION}()")
    op.drop_index("ix_search_words_word_trgm", table_name="search_words")
    op.drop_table("search_words")
