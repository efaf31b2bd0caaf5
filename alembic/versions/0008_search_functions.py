"""search functions: each form of investor match planned for its own term, all values bound

Revision ID: 0008
Revises: 0007
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# services/investor_search.py calls these functions with the raw term and the candidate cap as
# parameters; nothing from a request or from stored data is ever part of SQL text.
#
# Why functions (docs/adr/0003-recherche.md): the best plan depends on the term. A common term
# ("banque") is best found by a scan that stops at the cap, a rare one through the trigram
# indexes, and so for close words. A prepared statement (asyncpg prepares every statement)
# switches to a generic plan after five runs, which cannot tell them apart: 1 s instead of
# 10 ms for a rare word at 1M investors. plan_cache_mode = force_custom_plan, set by each
# function for its own body only, has PostgreSQL plan every run for its values. PL/pgSQL, not
# SQL: before PostgreSQL 18 the body of a SQL function is planned without its arguments' values.
# The word similarity threshold is set the same way, for the close-word lookup alone, instead
# of on a pooled connection.
#
# Each function returns (investor_id, score) rows, at most `cap`, taking the investors' own
# matches before their contacts' (whose scan is skipped once the cap is reached). A literal
# match scores 1 plus its word similarity, an approximate one its similarity alone.
#
# The matching rules live here, frozen like any migration (term normalised as the columns of
# 0002, words split as in 0007): changing one is a new migration replacing its function.
# services/investor_search.py combines the three forms, ranks and pages.

LIKE_CONTAINING = r"""
CREATE FUNCTION crm_like_containing(text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE STRICT
-- A LIKE pattern for the texts holding $1 as it is: its backslashes and wildcards escaped.
AS $$ SELECT '%' || replace(replace(replace($1, '\', '\\'), '%', '\%'), '_', '\_') || '%' $$
"""

# A term of one or two characters (once normalised) matches the start of a word of the names
# only, through the fuzzy_text index (0002) and the contact name index (0005): its trigrams
# ("  r", " ro" for "ro") are the indexes' own. The domain words of emails and websites ("fr",
# "com") would match nearly every row. Words start with a letter or digit.
WORD_START_MATCHES = r"""
CREATE FUNCTION crm_search_word_start_matches(q text, cap integer)
RETURNS TABLE (investor_id integer, score double precision)
LANGUAGE plpgsql STABLE
SET plan_cache_mode = force_custom_plan
AS $$
DECLARE
    term text := lower(crm_unaccent(q));
    word_start text;
BEGIN
    IF length(term) >= 3 OR term !~ '^[[:alnum:]]' THEN
        RETURN;
    END IF;
    -- Where a word starts: at the start of the text or after an ASCII space, punctuation
    -- mark or control (crm_unaccent turns typographic apostrophes, quotes, dashes and no-break
    -- spaces into ASCII). Spelt out: pg_trgm draws trigrams, and so uses its index, only from
    -- a bracket expression of few characters, not from [^[:alnum:]]. A backslash makes any
    -- character of the term that is neither letter nor digit literal.
    word_start := '(^|[\x01-/:-@[-`{-\x7f])' || regexp_replace(term, '([^[:alnum:]])', '\\\1', 'g');
    RETURN QUERY
        (SELECT i.id, word_similarity(term, i.fuzzy_text) + 1
         FROM investors AS i
         WHERE i.fuzzy_text ~ word_start
         LIMIT cap)
        UNION ALL
        (SELECT c.investor_id, word_similarity(term, lower(crm_unaccent(c.name::text))) + 1
         FROM contacts AS c
         WHERE lower(crm_unaccent(c.name::text)) ~ word_start
         LIMIT cap)
        LIMIT cap;
END
$$
"""

# From three characters on, the term is found anywhere in every searched field.
LITERAL_MATCHES = """
CREATE FUNCTION crm_search_literal_matches(q text, cap integer)
RETURNS TABLE (investor_id integer, score double precision)
LANGUAGE plpgsql STABLE
SET plan_cache_mode = force_custom_plan
AS $$
DECLARE
    term text := lower(crm_unaccent(q));
    pattern text := crm_like_containing(term);
BEGIN
    IF length(term) < 3 THEN
        RETURN;
    END IF;
    RETURN QUERY
        (SELECT i.id, word_similarity(term, i.fuzzy_text) + 1
         FROM investors AS i
         WHERE i.search_text LIKE pattern
         LIMIT cap)
        UNION ALL
        (SELECT c.investor_id, word_similarity(term, c.search_text) + 1
         FROM contacts AS c
         WHERE c.search_text LIKE pattern
         LIMIT cap)
        LIMIT cap;
END
$$
"""

# A misspelt term: each of its words of three letters or more is matched against the short
# list of known words (0007), and the rows holding a close word of every such word are found
# through the trigram indexes, as a literal search would. Words holding the whole term are left
# out: the literal match finds their rows already.
#
# The index serves the close words of the three longest query words in one scan, as it would
# conditions written for them: a condition on a missing word is a constant true, which the
# planner removes from the plan it makes for these values. The rows it finds are checked for
# any further word with one regular expression each (known words hold letters and digits only,
# nothing a regular expression or LIKE interprets).
CLOSE_WORD_MATCHES = r"""
CREATE FUNCTION crm_search_close_word_matches(q text, cap integer)
RETURNS TABLE (investor_id integer, score double precision)
LANGUAGE plpgsql STABLE
SET plan_cache_mode = force_custom_plan
-- pg_trgm's default (0.6) misses common misspellings such as "Rotchild" for "Rothschild".
SET pg_trgm.word_similarity_threshold = 0.5
AS $$
DECLARE
    term text := lower(crm_unaccent(q));
    pattern text := crm_like_containing(term);
    closest record;
    query_words integer := 0;
    first_word text[];
    second_word text[];
    third_word text[];
    other_words text[] := '{}';
BEGIN
    IF length(term) < 3 THEN
        RETURN;
    END IF;
    FOR closest IN
        SELECT array_agg('%' || known.word || '%') AS patterns,
               string_agg(known.word, '|') AS any_of
        FROM regexp_split_to_table(term, '[^[:alnum:]]+') WITH ORDINALITY AS query_word(word, n)
        CROSS JOIN LATERAL (
            SELECT w.word
            FROM search_words AS w
            WHERE query_word.word <% w.word AND strpos(w.word, term) = 0
            ORDER BY word_similarity(query_word.word, w.word) DESC, w.word
            LIMIT 10
        ) AS known
        WHERE query_word.word ~ '[[:alpha:]].*[[:alpha:]].*[[:alpha:]]'
        GROUP BY query_word.n, query_word.word
        ORDER BY length(query_word.word) DESC, query_word.n
    LOOP
        query_words := query_words + 1;
        IF query_words = 1 THEN
            first_word := closest.patterns;
        ELSIF query_words = 2 THEN
            second_word := closest.patterns;
        ELSIF query_words = 3 THEN
            third_word := closest.patterns;
        ELSE
            other_words := other_words || closest.any_of;
        END IF;
    END LOOP;
    IF query_words = 0 THEN
        RETURN;
    END IF;
    RETURN QUERY
        (SELECT i.id, word_similarity(term, i.fuzzy_text) + (i.search_text LIKE pattern)::integer
         FROM investors AS i
         WHERE i.fuzzy_text LIKE ANY (first_word)
           AND (second_word IS NULL OR i.fuzzy_text LIKE ANY (second_word))
           AND (third_word IS NULL OR i.fuzzy_text LIKE ANY (third_word))
           AND (cardinality(other_words) = 0 OR i.fuzzy_text ~ ALL (other_words))
         LIMIT cap)
        UNION ALL
        (SELECT c.investor_id,
                word_similarity(term, c.search_text) + (c.search_text LIKE pattern)::integer
         FROM contacts AS c
         WHERE c.search_text LIKE ANY (first_word)
           AND (second_word IS NULL OR c.search_text LIKE ANY (second_word))
           AND (third_word IS NULL OR c.search_text LIKE ANY (third_word))
           AND (cardinality(other_words) = 0 OR c.search_text ~ ALL (other_words))
         LIMIT cap)
        LIMIT cap;
END
$$
"""

FUNCTIONS = {
    "crm_search_word_start_matches(text, integer)": WORD_START_MATCHES,
    "crm_search_literal_matches(text, integer)": LITERAL_MATCHES,
    "crm_search_close_word_matches(text, integer)": CLOSE_WORD_MATCHES,
}


def upgrade() -> None:
    op.execute(LIKE_CONTAINING)
    for definition in FUNCTIONS.values():
        op.execute(definition)


def downgrade() -> None:
    for signature in FUNCTIONS:
        op.execute(f"DROP FUNCTION {signature}")
    op.execute("DROP FUNCTION crm_like_containing(text)")
