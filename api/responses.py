"""OpenAPI declarations of the error responses an operation can return."""

from typing import Any

from schemas.common import ErrorBody

_DESCRIPTIONS = {
    400: "Bad request",
    401: "Missing, invalid or expired token",
    403: "Not allowed for this user",
    404: "Not found",
    409: "Conflict with existing data",
    413: "Request body too large",
    415: "Unsupported file type",
    429: "Too many attempts",
    503: "Database unavailable or request timed out",
}


# FastAPI declares 422 itself when it validates parameters or a body; a route that parses its
# own body (login) declares it explicitly with FastAPI's validation error schema.
_VALIDATION_ERROR: dict[str, Any] = {
    "description": "Validation Error",
    "content": {
        "application/json": {"schema": {"$ref": "#/components/schemas/HTTPValidationError"}}
    },
}


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` entries for the given statuses, all using the error body schema (422 aside)."""
    return {
        status: (
            _VALIDATION_ERROR
            if status == 422
            else {"model": ErrorBody, "description": _DESCRIPTIONS[status]}
        )
        for status in statuses
    }


def json_errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """errors() for an operation whose success is no JSON (a stream): FastAPI would document
    each error in the operation's own media type, so their JSON content is written out."""
    declared = errors(*statuses)
    for status, response in declared.items():
        if "model" in response:
            schema = {"$ref": f"#/components/schemas/{ErrorBody.__name__}"}
            declared[status] = {
                "description": response["description"],
                "content": {"application/json": {"schema": schema}},
            }
    return declared


# What every authenticated operation may answer on top of its own errors.
AUTHENTICATED = (401, 503)


def publish_validation_error_fields(openapi: dict[str, Any]) -> dict[str, Any]:
    """Add `code` and `request_id` to FastAPI's 422 schema, which every operation refers to."""
    schema = openapi.get("components", {}).get("schemas", {}).get("HTTPValidationError")
    if schema is not None:
        schema["properties"] |= {
            "code": {
                "type": "string",
                "title": "Code",
                "description": "`validation_error`, or the name of the rule the value broke",
            },
            "request_id": {"type": "string", "title": "Request Id"},
        }
        schema["required"] = ["detail", "code", "request_id"]
    return openapi
