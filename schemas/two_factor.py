"""Bodies of the two-factor login routes (/auth/2fa/*)."""

from typing import Annotated

from pydantic import StringConstraints

from schemas.common import InputModel, ReadModel, SubmittedPassword

# Codes are typed by hand: a six-digit TOTP code, or a recovery code as shown (four groups of
# four base32 letters, in either case, hyphens optional). Not trimmed, so that the published
# pattern is exactly what is accepted.
TotpCode = Annotated[str, StringConstraints(strip_whitespace=False, pattern=r"^[0-9]{6}$")]
SecondFactor = Annotated[
    str,
    StringConstraints(
        strip_whitespace=False,
        pattern=r"^(?:[0-9]{6}|[A-Za-z2-7]{4}(?:-?[A-Za-z2-7]{4}){3})$",
    ),
]


class TwoFactorSetup(ReadModel):
    """Shown once: the secret is never returned again."""

    secret: str
    otpauth_uri: str
    qr_png_base64: str


class TwoFactorEnable(InputModel):
    code: TotpCode


class RecoveryCodes(ReadModel):
    """Shown once: only their digests are kept."""

    recovery_codes: list[str]


class TwoFactorDisable(InputModel):
    password: SubmittedPassword
    code: SecondFactor
