"""Two-factor login (TOTP): setup, enable, disable, the second factor at login (replay, drift,
recovery codes, lockout), REQUIRE_2FA_FOR_ADMINS, an admin's reset, and the secrets encrypted
at rest. The server's clock is set by each test (`clock`): codes come from pyotp's `at()`."""

import asyncio
import base64
import logging
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

import pyotp
import pytest
from httpx import AsyncClient, Response
from pydantic import ValidationError

import core.config
import services.two_factor
from core.config import Settings, settings
from core.encryption import DecryptionError, Keyring, keyring
from services.two_factor import RECOVERY_CODE_COUNT, totp_context
from tests.conftest import ADMIN_EMAIL, ADMIN_PASSWORD, error_of
from tests.factories import (
    USER_PASSWORD,
    bearer,
    create_user,
    execute,
    fetch,
    first_admin_id,
    scalar,
)
from tests.test_auth import ME, assert_throttled, assert_token, bearer_header

LOGIN = "/api/v1/auth/login"
SETUP = "/api/v1/auth/2fa/setup"
ENABLE = "/api/v1/auth/2fa/enable"
DISABLE = "/api/v1/auth/2fa/disable"
USERS = "/api/v1/users"
EMAIL = "user@crm.test"
# The start of a time step: 1_800_000_000 / 30 is a whole number.
START = 1_800_000_000.0
STEP = 30
RECOVERY_CODE = re.compile(r"[a-z2-7]{4}(?:-[a-z2-7]{4}){3}")


@dataclass
class Clock:
    now: float = START

    def step(self, steps: int = 1) -> None:
        self.now += steps * STEP


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    """The time the server reads to check codes, moved by the test rather than waited for."""
    clock = Clock()
    monkeypatch.setattr(services.two_factor, "time", SimpleNamespace(time=lambda: clock.now))
    return clock


@dataclass
class Enabled:
    user_id: int
    headers: dict[str, str]
    totp: pyotp.TOTP
    secret: str
    recovery_codes: list[str]


async def setup(client: AsyncClient, headers: dict[str, str]) -> dict[str, Any]:
    response = await client.post(SETUP, headers=headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def enable(
    client: AsyncClient, clock: Clock, user_id: int, headers: dict[str, str] | None = None
) -> Enabled:
    """Turn 2FA on for the user, with the code of the current step (then one step later, so
    that the next code is a new one)."""
    headers = headers or await bearer(user_id)
    secret = (await setup(client, headers))["secret"]
    totp = pyotp.TOTP(secret)
    response = await client.post(ENABLE, json={"code": totp.at(clock.now)}, headers=headers)
    assert response.status_code == 200, response.text
    clock.step()
    return Enabled(user_id, headers, totp, secret, response.json()["recovery_codes"])


@pytest.fixture
async def enabled(client: AsyncClient, clock: Clock, user_id: int) -> Enabled:
    return await enable(client, clock, user_id)


async def login(
    client: AsyncClient, otp: str | None = None, password: str = USER_PASSWORD, email: str = EMAIL
) -> Response:
    body = {"email": email, "password": password}
    if otp is not None:
        body["otp"] = otp
    return await client.post(LOGIN, json=body)


def assert_error(response: Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert error_of(response)["code"] == code


async def user_row(user_id: int) -> Any:
    rows = await fetch(
        "SELECT totp_secret, totp_pending_secret, totp_last_step FROM users WHERE id = :id",
        id=user_id,
    )
    return rows[0]


async def recovery_code_count(user_id: int) -> int:
    return int(await scalar("SELECT count(*) FROM recovery_codes WHERE user_id = :id", id=user_id))


# --- setup ----------------------------------------------------------------------------------


async def test_setup_returns_the_secret_its_uri_and_a_qr_code_and_keeps_it_pending(
    client: AsyncClient, user_id: int, user_headers: dict[str, str]
) -> None:
    body = await setup(client, user_headers)

    assert set(body) == {"secret", "otpauth_uri", "qr_png_base64"}
    assert re.fullmatch(r"[A-Z2-7]{32}", body["secret"])
    uri = urlparse(body["otpauth_uri"])
    assert (uri.scheme, uri.netloc, unquote(uri.path)) == (
        "otpauth",
        "totp",
        "/TPM Finance CRM:" + EMAIL,
    )
    query = parse_qs(uri.query)
    assert query["secret"] == [body["secret"]]
    assert query["issuer"] == ["TPM Finance CRM"]
    assert base64.b64decode(body["qr_png_base64"]).startswith(b"\x89PNG\r\n\x1a\n")
    secret, pending, last_step = await user_row(user_id)
    assert (secret, last_step) == (None, None)
    assert pending.startswith(f"k1:{keyring().current_key_id}:")
    assert body["secret"] not in pending
    # Pending is not on: logins and the body say so.
    assert (await client.get(ME, headers=user_headers)).json()["two_factor_enabled"] is False
    assert_token(await login(client))


async def test_a_second_setup_replaces_the_pending_secret(
    client: AsyncClient, clock: Clock, user_headers: dict[str, str]
) -> None:
    first = pyotp.TOTP((await setup(client, user_headers))["secret"])
    second = pyotp.TOTP((await setup(client, user_headers))["secret"])

    refused = await client.post(ENABLE, json={"code": first.at(clock.now)}, headers=user_headers)
    assert_error(refused, 400, "invalid_otp")
    accepted = await client.post(ENABLE, json={"code": second.at(clock.now)}, headers=user_headers)
    assert accepted.status_code == 200, accepted.text


async def test_setup_while_two_factor_is_on_is_409(client: AsyncClient, enabled: Enabled) -> None:
    secret_before = (await user_row(enabled.user_id))[0]

    assert_error(await client.post(SETUP, headers=enabled.headers), 409, "2fa_already_enabled")
    assert (await user_row(enabled.user_id))[0] == secret_before


# --- enable ---------------------------------------------------------------------------------


async def test_enable_turns_two_factor_on_and_returns_ten_recovery_codes(
    client: AsyncClient, clock: Clock, user_id: int, user_headers: dict[str, str]
) -> None:
    # Cached before: the flag must not wait for the cache entry to expire.
    assert (await client.get(ME, headers=user_headers)).json()["two_factor_enabled"] is False
    secret = (await setup(client, user_headers))["secret"]
    code = pyotp.TOTP(secret).at(clock.now)

    response = await client.post(ENABLE, json={"code": code}, headers=user_headers)

    assert response.status_code == 200, response.text
    codes = response.json()["recovery_codes"]
    assert set(response.json()) == {"recovery_codes"}
    assert len(codes) == len(set(codes)) == RECOVERY_CODE_COUNT == 10
    assert all(RECOVERY_CODE.fullmatch(code) for code in codes)
    stored = {row[0] for row in await fetch("SELECT code_hash FROM recovery_codes")}
    assert len(stored) == 10 and not stored & set(codes)
    secret_column, pending, last_step = await user_row(user_id)
    assert pending is None and secret_column.startswith("k1:")
    assert last_step == int(clock.now) // STEP
    assert (await client.get(ME, headers=user_headers)).json()["two_factor_enabled"] is True
    admin = await bearer(await first_admin_id())
    listed = (await client.get(f"{USERS}/{user_id}", headers=admin)).json()
    assert listed["two_factor_enabled"] is True
    # The code that enabled it opens no login afterwards.
    assert_error(await login(client, code), 401, "invalid_otp")


async def test_enable_with_a_wrong_code_is_400_and_changes_nothing(
    client: AsyncClient, clock: Clock, user_id: int, user_headers: dict[str, str]
) -> None:
    totp = pyotp.TOTP((await setup(client, user_headers))["secret"])
    wrong = f"{(int(totp.at(clock.now)) + 1) % 1_000_000:06d}"

    response = await client.post(ENABLE, json={"code": wrong}, headers=user_headers)

    assert_error(response, 400, "invalid_otp")
    assert (await user_row(user_id))[0] is None
    assert await recovery_code_count(user_id) == 0


async def test_enable_without_a_pending_setup_is_409(
    client: AsyncClient, user_headers: dict[str, str]
) -> None:
    response = await client.post(ENABLE, json={"code": "123456"}, headers=user_headers)
    assert_error(response, 409, "2fa_setup_required")


async def test_enable_while_on_is_409(client: AsyncClient, enabled: Enabled, clock: Clock) -> None:
    code = enabled.totp.at(clock.now)
    response = await client.post(ENABLE, json={"code": code}, headers=enabled.headers)
    assert_error(response, 409, "2fa_already_enabled")


@pytest.mark.parametrize("code", ["12345", "1234567", " 123456", "123456 ", "12345a", "١٢٣٤٥٦"])
async def test_enable_refuses_what_is_no_six_digit_code(
    client: AsyncClient, user_headers: dict[str, str], code: str
) -> None:
    response = await client.post(ENABLE, json={"code": code}, headers=user_headers)
    assert response.status_code == 422, response.text
    assert [error["loc"] for error in response.json()["detail"]] == [["body", "code"]]


# --- login ----------------------------------------------------------------------------------


async def test_login_without_otp_is_401_otp_required(client: AsyncClient, enabled: Enabled) -> None:
    response = await login(client)
    assert_error(response, 401, "otp_required")
    assert response.headers["www-authenticate"] == "Bearer"


async def test_a_wrong_password_never_tells_that_two_factor_is_on(
    client: AsyncClient, enabled: Enabled, clock: Clock
) -> None:
    for otp in (None, enabled.totp.at(clock.now), "000000"):
        response = await login(client, otp, password="wrong-password")
        assert_error(response, 401, "invalid_credentials")


async def test_login_with_a_valid_code_gives_a_token(
    client: AsyncClient, enabled: Enabled, clock: Clock
) -> None:
    token = assert_token(await login(client, enabled.totp.at(clock.now)))
    me = await client.get(ME, headers=bearer_header(token))
    assert (me.json()["email"], me.json()["two_factor_enabled"]) == (EMAIL, True)


async def test_login_with_a_wrong_code_is_401_invalid_otp(
    client: AsyncClient, enabled: Enabled, clock: Clock
) -> None:
    wrong = f"{(int(enabled.totp.at(clock.now)) + 1) % 1_000_000:06d}"
    assert_error(await login(client, wrong), 401, "invalid_otp")
    assert_error(await login(client, "aaaa-bbbb-cccc-dddd"), 401, "invalid_otp")


async def test_a_code_is_accepted_once(client: AsyncClient, enabled: Enabled, clock: Clock) -> None:
    code = enabled.totp.at(clock.now)
    assert_token(await login(client, code))

    assert_error(await login(client, code), 401, "invalid_otp")
    # Still refused in the next step, while the drift would otherwise accept it.
    clock.step()
    assert_error(await login(client, code), 401, "invalid_otp")
    assert_token(await login(client, enabled.totp.at(clock.now)))


async def test_codes_one_step_away_are_accepted_two_steps_away_refused(
    client: AsyncClient, enabled: Enabled, clock: Clock
) -> None:
    clock.step(10)
    now = clock.now
    assert_error(await login(client, enabled.totp.at(now, counter_offset=-2)), 401, "invalid_otp")
    assert_error(await login(client, enabled.totp.at(now, counter_offset=2)), 401, "invalid_otp")
    assert_token(await login(client, enabled.totp.at(now, counter_offset=-1)))
    assert_token(await login(client, enabled.totp.at(now, counter_offset=1)))
    # Older than the last accepted step, though within the drift: refused.
    assert_error(await login(client, enabled.totp.at(now)), 401, "invalid_otp")


@pytest.mark.committing  # two requests at once need connections of their own
@pytest.mark.parametrize("kind", ["totp", "recovery"])
async def test_two_logins_at_once_with_one_code_one_passes(
    client: AsyncClient, enabled: Enabled, clock: Clock, kind: str
) -> None:
    code = enabled.totp.at(clock.now) if kind == "totp" else enabled.recovery_codes[0]

    responses = await asyncio.gather(login(client, code), login(client, code))

    assert sorted(response.status_code for response in responses) == [200, 401]
    refused = next(response for response in responses if response.status_code == 401)
    assert error_of(refused)["code"] == "invalid_otp"


async def test_a_secret_sealed_with_another_key_is_a_logged_server_error(
    client: AsyncClient, enabled: Enabled, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    foreign = Keyring("a-key-that-is-not-this-servers-0123456789abcdef")
    sealed = foreign.encrypt(enabled.secret, context=totp_context(enabled.user_id))
    await execute("UPDATE users SET totp_secret = :s WHERE id = :id", s=sealed, id=enabled.user_id)

    response = await login(client, enabled.totp.at(clock.now))

    assert response.status_code == 500
    assert error_of(response) == {"detail": "Internal server error", "code": "internal_error"}
    assert "ENCRYPTION_KEY" in caplog.text
    assert enabled.secret not in caplog.text and enabled.secret not in response.text


async def test_a_recovery_code_opens_one_login(
    client: AsyncClient, enabled: Enabled, clock: Clock
) -> None:
    first, second = enabled.recovery_codes[:2]
    assert_token(await login(client, first))
    assert_error(await login(client, first), 401, "invalid_otp")
    # As typed: in capitals, without its hyphens.
    assert_token(await login(client, second.upper().replace("-", "")))
    assert await recovery_code_count(enabled.user_id) == RECOVERY_CODE_COUNT - 2


async def test_another_users_recovery_code_is_refused(
    client: AsyncClient, enabled: Enabled, clock: Clock
) -> None:
    other = await enable(client, clock, await create_user("other@crm.test"))
    response = await login(client, other.recovery_codes[0])
    assert_error(response, 401, "invalid_otp")
    assert await recovery_code_count(other.user_id) == RECOVERY_CODE_COUNT


async def test_invalid_codes_count_towards_the_lockout(
    client: AsyncClient, enabled: Enabled, clock: Clock
) -> None:
    for _ in range(settings.login_max_failures):
        assert_error(await login(client, "000000"), 401, "invalid_otp")
    # Locked now, the right code included.
    assert_throttled(await login(client, enabled.totp.at(clock.now)))
    assert await scalar("SELECT count(*) FROM login_failures WHERE email = :e", e=EMAIL) == 5


async def test_login_form_takes_the_otp_field(
    client: AsyncClient, enabled: Enabled, clock: Clock
) -> None:
    form = {"grant_type": "password", "username": EMAIL, "password": USER_PASSWORD}
    assert_error(await client.post(LOGIN, data=form), 401, "otp_required")
    response = await client.post(LOGIN, data=form | {"otp": enabled.totp.at(clock.now)})
    assert_token(response)
    assert_error(await client.post(LOGIN, data=form | {"otp": "00000x"}), 422, "validation_error")


async def test_an_otp_is_ignored_while_two_factor_is_off(client: AsyncClient, user_id: int) -> None:
    assert_token(await login(client, "123456"))


async def test_no_secret_reaches_the_logs(
    client: AsyncClient, clock: Clock, user_id: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    done = await enable(client, clock, user_id)
    assert_token(await login(client, done.totp.at(clock.now)))
    assert_error(await login(client, "000000"), 401, "invalid_otp")
    logged = caplog.text
    assert done.secret not in logged
    assert not any(code in logged for code in done.recovery_codes)


# --- disable --------------------------------------------------------------------------------


async def test_disable_with_password_and_code(
    client: AsyncClient, enabled: Enabled, clock: Clock
) -> None:
    body = {"password": USER_PASSWORD, "code": enabled.totp.at(clock.now)}
    response = await client.post(DISABLE, json=body, headers=enabled.headers)

    assert response.status_code == 204, response.text
    assert tuple(await user_row(enabled.user_id)) == (None, None, None)
    assert await recovery_code_count(enabled.user_id) == 0
    assert (await client.get(ME, headers=enabled.headers)).json()["two_factor_enabled"] is False
    assert_token(await login(client))


async def test_disable_with_a_recovery_code(client: AsyncClient, enabled: Enabled) -> None:
    body = {"password": USER_PASSWORD, "code": enabled.recovery_codes[0]}
    response = await client.post(DISABLE, json=body, headers=enabled.headers)
    assert response.status_code == 204, response.text
    assert_token(await login(client))


async def test_disable_with_a_wrong_password_or_code_is_400(
    client: AsyncClient, enabled: Enabled, clock: Clock
) -> None:
    code = enabled.totp.at(clock.now)
    wrong_password = {"password": "wrong-password", "code": code}
    response = await client.post(DISABLE, json=wrong_password, headers=enabled.headers)
    assert_error(response, 400, "invalid_password")
    wrong_code = {"password": USER_PASSWORD, "code": "000000"}
    response = await client.post(DISABLE, json=wrong_code, headers=enabled.headers)
    assert_error(response, 400, "invalid_otp")

    assert (await user_row(enabled.user_id))[0] is not None
    assert await recovery_code_count(enabled.user_id) == RECOVERY_CODE_COUNT
    assert_error(await login(client), 401, "otp_required")


async def test_disable_while_off_is_409(client: AsyncClient, user_headers: dict[str, str]) -> None:
    body = {"password": USER_PASSWORD, "code": "123456"}
    response = await client.post(DISABLE, json=body, headers=user_headers)
    assert_error(response, 409, "2fa_not_enabled")


# --- REQUIRE_2FA_FOR_ADMINS -----------------------------------------------------------------


@pytest.fixture
def require_2fa_for_admins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(settings, "require_2fa_for_admins", True)


@pytest.mark.usefixtures("require_2fa_for_admins")
async def test_an_admin_without_two_factor_reaches_only_the_routes_to_turn_it_on(
    client: AsyncClient, clock: Clock
) -> None:
    token = assert_token(await login(client, email=ADMIN_EMAIL, password=ADMIN_PASSWORD))
    headers = bearer_header(token)
    for method, path in [("GET", USERS), ("GET", "/api/v1/investors"), ("GET", "/api/v1/jobs")]:
        assert_error(await client.request(method, path, headers=headers), 403, "2fa_required")
    response = await client.put(
        "/api/v1/auth/me/password",
        json={"current_password": ADMIN_PASSWORD, "new_password": "another-password"},
        headers=headers,
    )
    assert_error(response, 403, "2fa_required")
    assert (await client.get(ME, headers=headers)).status_code == 200

    await enable(client, clock, await first_admin_id(), headers)

    assert (await client.get(USERS, headers=headers)).status_code == 200


@pytest.mark.usefixtures("require_2fa_for_admins")
async def test_the_requirement_leaves_other_roles_alone(
    client: AsyncClient, user_headers: dict[str, str]
) -> None:
    assert (await client.get("/api/v1/investors", headers=user_headers)).status_code == 200


async def test_without_the_requirement_an_admin_needs_no_two_factor(
    client: AsyncClient, admin_headers: dict[str, str]
) -> None:
    assert settings.require_2fa_for_admins is False
    assert (await client.get(USERS, headers=admin_headers)).status_code == 200


# --- an admin's reset -----------------------------------------------------------------------


async def test_an_admin_resets_a_users_two_factor(
    client: AsyncClient, enabled: Enabled, admin_headers: dict[str, str]
) -> None:
    response = await client.delete(f"{USERS}/{enabled.user_id}/2fa", headers=admin_headers)

    assert response.status_code == 204, response.text
    assert tuple(await user_row(enabled.user_id)) == (None, None, None)
    assert await recovery_code_count(enabled.user_id) == 0
    assert_token(await login(client))
    user = (await client.get(f"{USERS}/{enabled.user_id}", headers=admin_headers)).json()
    assert user["two_factor_enabled"] is False


async def test_the_reset_is_404_for_an_unknown_user(
    client: AsyncClient, admin_headers: dict[str, str]
) -> None:
    response = await client.delete(f"{USERS}/999999/2fa", headers=admin_headers)
    assert_error(response, 404, "not_found")


async def test_only_an_admin_resets_two_factor(client: AsyncClient, enabled: Enabled) -> None:
    response = await client.delete(f"{USERS}/{enabled.user_id}/2fa", headers=enabled.headers)
    assert_error(response, 403, "forbidden")
    assert (await user_row(enabled.user_id))[0] is not None


# --- encryption at rest ---------------------------------------------------------------------


async def test_the_secret_is_stored_encrypted(enabled: Enabled) -> None:
    stored = (await user_row(enabled.user_id))[0]

    assert enabled.secret not in stored
    assert enabled.secret.lower() not in stored.lower()
    context = totp_context(enabled.user_id)
    assert keyring().decrypt(stored, context=context) == enabled.secret
    with pytest.raises(DecryptionError):
        Keyring("another-key-that-is-long-enough-for-this-0123").decrypt(stored, context=context)
    # Bound to its account: copied into another user's row, it does not open.
    with pytest.raises(DecryptionError):
        keyring().decrypt(stored, context=totp_context(enabled.user_id + 1))


OLD_KEY = "the-old-key-long-enough-for-aes-gcm-0123456789"
NEW_KEY = "the-new-key-long-enough-for-aes-gcm-0123456789"


def test_a_ciphertext_names_its_key_and_opens_after_a_rotation() -> None:
    old = Keyring(OLD_KEY)
    sealed = old.encrypt("JBSWY3DPEHPK3PXP", context="c")
    version, key_id, _ = sealed.split(":")
    assert (version, key_id) == ("k1", old.current_key_id)

    rotated = Keyring(NEW_KEY, OLD_KEY)
    assert rotated.current_key_id != old.current_key_id
    assert rotated.decrypt(sealed, context="c") == "JBSWY3DPEHPK3PXP"
    assert rotated.encrypt("x", context="c").split(":")[1] == rotated.current_key_id
    with pytest.raises(DecryptionError):
        Keyring(NEW_KEY).decrypt(sealed, context="c")


def test_each_encryption_uses_a_new_nonce() -> None:
    ring = Keyring(OLD_KEY)
    assert ring.encrypt("same", context="c") != ring.encrypt("same", context="c")


@pytest.mark.parametrize(
    "tamper",
    [
        lambda s: s.replace("k1:", "k2:", 1),
        lambda s: s[:-2] + ("A" if s[-2] != "A" else "B") + s[-1],
        lambda s: s[: len(s) // 2],
        lambda s: s + "!!",
        lambda s: "garbage",
    ],
)
def test_an_altered_ciphertext_does_not_open(tamper: Any) -> None:
    ring = Keyring(OLD_KEY)
    sealed = ring.encrypt("JBSWY3DPEHPK3PXP", context="c")
    with pytest.raises(DecryptionError) as raised:
        ring.decrypt(tamper(sealed), context="c")
    assert OLD_KEY not in str(raised.value)


def test_a_non_canonical_encoding_of_the_stored_value_does_not_open() -> None:
    ring = Keyring(OLD_KEY)
    sealed = ring.encrypt("JBSWY3DPEHPK3PXP", context="c")
    # 44 sealed bytes: one padding character, and a last data character with two unused bits,
    # which base64 decoding ignores.
    body, last, padding = sealed[:-2], sealed[-2], sealed[-1]
    assert padding == "="
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    sibling = alphabet[alphabet.index(last) ^ 1]
    with pytest.raises(DecryptionError):
        ring.decrypt(body + sibling + padding, context="c")


def test_an_encryption_key_shorter_than_32_bytes_is_refused() -> None:
    with pytest.raises(ValidationError, match="ENCRYPTION_KEY is shorter than 32 bytes"):
        Settings(_env_file=None, encryption_key="k" * 31)


def test_without_encryption_key_a_key_is_generated_once_in_the_data_directory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(core.config, "DATA_DIR", tmp_path / "data")
    monkeypatch.delenv("ENCRYPTION_KEY")
    signing = "s" * 32
    first = Settings(_env_file=None, secret_key=signing).encryption_key_material()

    assert stat.S_IMODE((tmp_path / "data" / "encryption_key").stat().st_mode) == 0o600
    # A restart reads the same key; a new SECRET_KEY changes nothing.
    again = Settings(_env_file=None, secret_key="t" * 32).encryption_key_material()
    assert again == first != signing
