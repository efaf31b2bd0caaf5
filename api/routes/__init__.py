"""Route modules. Registers the `id` path convertor they use before any route is built."""

from typing import ClassVar

from starlette.convertors import Convertor, register_url_convertor

# Literal segments that sit beside an `{id}` segment (`/investors/stats`): the id pattern must not
# swallow them, so that a wrong method there is 405 and not a 422 about a non-integer id.
RESERVED_SEGMENTS = ("stats", "search", "summary")


class IdConvertor(Convertor[str]):
    """Matches any segment but the reserved ones; FastAPI then validates it as an integer (422)."""

    regex: ClassVar[str] = "(?!(?:" + "|".join(RESERVED_SEGMENTS) + ")(?:/|$))[^/]+"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return str(value)


register_url_convertor("id", IdConvertor())
