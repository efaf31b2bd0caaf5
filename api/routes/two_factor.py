"""Two-factor login of the authenticated user: setup, enable, disable."""

from fastapi import APIRouter, status

from api.deps import CurrentUser, TwoFactorWriter
from api.responses import AUTHENTICATED, errors
from schemas.two_factor import RecoveryCodes, TwoFactorDisable, TwoFactorEnable, TwoFactorSetup

router = APIRouter(prefix="/auth/2fa", tags=["auth"])


@router.post("/setup", response_model=TwoFactorSetup, responses=errors(409, *AUTHENTICATED))
async def setup_two_factor(user: CurrentUser, two_factor: TwoFactorWriter) -> TwoFactorSetup:
    """Start two-factor login: a new TOTP secret (as text, otpauth URI and QR code, shown this
    once), pending until a code enables it."""
    return await two_factor.start_setup(user.id)


@router.post("/enable", response_model=RecoveryCodes, responses=errors(400, 409, *AUTHENTICATED))
async def enable_two_factor(
    body: TwoFactorEnable, user: CurrentUser, two_factor: TwoFactorWriter
) -> RecoveryCodes:
    """Turn two-factor login on with a code of the pending secret; returns 10 single-use
    recovery codes, shown this once."""
    return await two_factor.enable(user.id, body.code)


@router.post(
    "/disable",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=errors(400, 409, *AUTHENTICATED),
)
async def disable_two_factor(
    body: TwoFactorDisable, user: CurrentUser, two_factor: TwoFactorWriter
) -> None:
    """Turn two-factor login off, with the password and a TOTP or recovery code."""
    await two_factor.disable(user.id, body.password, body.code)
