"""Login, refresh and logout, current user, profile and password change, password reset."""

from typing import Any

from fastapi import APIRouter, Request, status
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from api.deps import (
    AuthWriter,
    CurrentSessionId,
    CurrentUser,
    PasswordResetWriter,
    SessionWriter,
    UserReader,
    UserWriter,
    WriteSession,
    client_address,
)
from api.responses import AUTHENTICATED, errors
from core.config import settings
from schemas.notification import Preferences, PreferencesUpdate
from schemas.user import (
    LoginJSON,
    Me,
    MeUpdate,
    PasswordChange,
    PasswordResetAccepted,
    PasswordResetConfirm,
    PasswordResetRequestBody,
    RefreshRequest,
    Token,
)
from services.auth import InvalidCredentials
from services.password_reset import REQUEST_FLOOR_S, lasting_at_least
from services.sessions import RefreshTokenReused
from services.two_factor import InvalidLoginOtp

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
                        # The JSON body's otp, without its null: a form field is sent or not.
                        "otp": LoginJSON.model_json_schema()["properties"]["otp"]["anyOf"][0],
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
            username, password, otp = form.get("username"), form.get("password"), form.get("otp")
            fields: dict[str, Any] = {} if otp is None else {"otp": otp}
            if isinstance(username, str) and isinstance(password, str):
                fields |= {"email": username, "password": password}
            return LoginJSON.model_validate(fields)
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
    """Exchange email and password (and `otp`, with two-factor login on) for a Bearer access
    token and a refresh token."""
    credentials = await _read_credentials(request)
    try:
        user = await auth.authenticate(
            credentials.email,
            credentials.password,
            client_address(request),
            settings,
            otp=credentials.otp,
        )
    except InvalidLoginOtp:
        # Keep the recorded failure, as below.
        await session.commit()
        raise
    if user is None:
        # Keep the recorded failure: it is what the throttle counts.
        await session.commit()
        raise InvalidCredentials()
    return Token.model_validate(await auth.issue_tokens(user, settings))


@router.post("/refresh", response_model=Token, responses=errors(401, 503))
async def refresh(body: RefreshRequest, session: WriteSession, sessions: SessionWriter) -> Token:
    """Exchange a refresh token, used up, for a new access token and a new refresh token."""
    try:
        return Token.model_validate(await sessions.refresh(body.refresh_token, settings))
    except RefreshTokenReused:
        # The session's revocation stands, though the request fails.
        await session.commit()
        raise


@router.post("/logout", status_code=status.HTTP_204_NO_CONTENT, responses=errors(*AUTHENTICATED))
async def logout(user: CurrentUser, session_id: CurrentSessionId, sessions: SessionWriter) -> None:
    """End this token's session: its access tokens and refresh token stop working."""
    await sessions.end(user.id, session_id)


@router.post(
    "/logout-all", status_code=status.HTTP_204_NO_CONTENT, responses=errors(*AUTHENTICATED)
)
async def logout_all(user: CurrentUser, users: UserWriter) -> None:
    """End every session of the authenticated user, on every device, this one included."""
    await users.log_out_everywhere(user.id)


@router.get("/me", response_model=Me, responses=errors(*AUTHENTICATED))
async def read_me(user: CurrentUser) -> Me:
    """The authenticated user."""
    return Me.model_validate(user)


@router.get("/me/preferences", response_model=Preferences, responses=errors(*AUTHENTICATED))
async def read_my_preferences(user: CurrentUser, users: UserReader) -> Preferences:
    """The authenticated user's preferences (`daily_digest`: the morning email of tasks due)."""
    return await users.preferences(user.id)


@router.put("/me/preferences", response_model=Preferences, responses=errors(*AUTHENTICATED))
async def update_my_preferences(
    body: PreferencesUpdate, user: CurrentUser, users: UserWriter
) -> Preferences:
    """Replace the authenticated user's preferences."""
    return await users.set_preferences(user.id, body)


@router.put(
    "/me/password",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=errors(400, *AUTHENTICATED),
)
async def change_my_password(body: PasswordChange, user: CurrentUser, auth: AuthWriter) -> None:
    """Change the authenticated user's password; every token issued before (this one too) stops
    working."""
    await auth.change_password(user.id, body.current_password, body.new_password)


@router.put("/me", response_model=Me, responses=errors(400, *AUTHENTICATED, 409))
async def update_me(body: MeUpdate, user: CurrentUser, auth: AuthWriter) -> Me:
    """Change the authenticated user's name or email (a new email needs current_password)."""
    return Me.model_validate(await auth.update_profile(user.id, body))


@router.post(
    "/password-reset/request",
    response_model=PasswordResetAccepted,
    status_code=status.HTTP_202_ACCEPTED,
    responses=errors(503),
)
async def request_password_reset(
    body: PasswordResetRequestBody, session: WriteSession, resets: PasswordResetWriter
) -> PasswordResetAccepted:
    """Email a reset link to the active account using this address; the same answer, in the
    same time, whether one does or not."""
    async with lasting_at_least(REQUEST_FLOOR_S):
        await resets.request_reset(body.email, settings)
        # Inside the timed block: the job's rows make the commit of a known address dearer.
        await session.commit()
    return PasswordResetAccepted()


@router.post(
    "/password-reset/confirm",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=errors(400, 503),
)
async def confirm_password_reset(body: PasswordResetConfirm, resets: PasswordResetWriter) -> None:
    """Set a new password with the emailed token; every session of the account ends."""
    await resets.confirm(body.token, body.new_password)
