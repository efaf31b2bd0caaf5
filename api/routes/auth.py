"""Login, current user and password change."""

from typing import Any

from fastapi import APIRouter, Request, status
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from api.deps import AuthWriter, CurrentUser, WriteSession, client_address
from api.responses import AUTHENTICATED, errors
from core.config import settings
from schemas.user import LoginJSON, Me, PasswordChange, Token
from services.auth import InvalidCredentials

router = APIRouter(prefix="/auth", tags=["auth"])

_LOGIN_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": LoginJSON.model_json_schema()},
            "application/x-www-form-urlencoded": {
                "schema": {
                    "type": "object",
                    "required": ["username", "password"],
                    "properties": {
                        "username": {
                            "type": "string",
                            "format": "email",
                            "maxLength": 254,
                        },
                        "password": LoginJSON.model_json_schema()["properties"]["password"],
                        "grant_type": {"type": "string", "enum": ["password"]},
                        "scope": {"type": "string"},
                        "client_id": {"type": "string"},
                        "client_secret": {"type": "string"},
                    },
                }
            },
        },
    }
}


async def _read_credentials(request: Request) -> LoginJSON:
    """Accept the OAuth2 password form (Swagger's Authorize) or a JSON body."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    try:
        if content_type == "application/json":
            try:
                payload = await request.json()
            except (ValueError, RecursionError):  # nested deeper than the parser recurses
                raise RequestValidationError(
                    [
                        {
                            "type": "json_invalid",
                            "loc": ("body",),
                            "msg": "Invalid JSON body",
                        }
                    ]
                ) from None
            return LoginJSON.model_validate(payload)
        if content_type == "application/x-www-form-urlencoded":
            form = await request.form()
            username, password = form.get("username"), form.get("password")
            return LoginJSON.model_validate(
                {"email": username, "password": password}
                if isinstance(username, str) and isinstance(password, str)
                else {}
            )
    except ValidationError as exc:
        raise RequestValidationError(
            [{**err, "loc": ("body", *err["loc"])} for err in exc.errors(include_url=False)]
        ) from None
    raise RequestValidationError(
        [
            {
                "type": "content_type",
                "loc": ("header", "content-type"),
                "msg": "Send application/json or application/x-www-form-urlencoded",
            }
        ]
    )


@router.post(
    "/login",
    response_model=Token,
    openapi_extra=_LOGIN_BODY,
    responses=errors(401, 413, 422, 429, 503),
)
async def login(request: Request, session: WriteSession, auth: AuthWriter) -> Token:
    """Exchange email and password for a Bearer access token."""
    credentials = await _read_credentials(request)
    user = await auth.authenticate(
        credentials.email, credentials.password, client_address(request), settings
    )
    if user is None:
        # Keep the recorded failure: it is what the throttle counts.
        await session.commit()
        raise InvalidCredentials()
    token, expires_in = auth.issue_token(user, settings)
    return Token(access_token=token, expires_in=expires_in)


@router.get("/me", response_model=Me, responses=errors(*AUTHENTICATED))
async def read_me(user: CurrentUser) -> Me:
    """The authenticated user."""
    return Me.model_validate(user)


@router.put(
    "/me/password",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=errors(400, *AUTHENTICATED),
)
async def change_my_password(body: PasswordChange, user: CurrentUser, auth: AuthWriter) -> None:
    """Change the authenticated user's password; every token issued before (this one too) stops
    working."""
    await auth.change_password(user.id, body.current_password, body.new_password)
