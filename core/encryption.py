"""Encryption at rest of the secrets the database keeps (TOTP secrets): AES-256-GCM under
ENCRYPTION_KEY, or the key generated once in data/encryption_key (docs/adr/0011).

A ciphertext reads `k1:<key id>:<nonce and sealed bytes, base64url>`: the key id names the key
that sealed it, so a keyring holding the new key and the previous ones still opens values
written before a rotation. Each value is bound to a context (say, the user it belongs to): a
ciphertext copied into another row does not open there.
"""

import base64
import functools
import secrets

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from core.config import settings

FORMAT_VERSION = "k1"
NONCE_BYTES = 12
_AES_KEY_INFO = b"tpm-crm encryption at rest: aes-256-gcm key"
_KEY_ID_INFO = b"tpm-crm encryption at rest: key id"


class DecryptionError(Exception):
    """A ciphertext no key of the keyring opens: another key, another context, or altered.

    Its message never holds the ciphertext nor any key.
    """


def _derive(material: str, info: bytes) -> bytes:
    # The configured key is text of any form (32 bytes at least, like SECRET_KEY): HKDF turns
    # it into the uniform 256-bit key AES wants.
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(
        material.encode()
    )


class Keyring:
    """Encrypts with the current key; decrypts with whichever key a ciphertext names."""

    def __init__(self, current: str, *previous: str) -> None:
        self._ciphers: dict[str, AESGCM] = {}
        for material in (current, *previous):
            key_id = _derive(material, _KEY_ID_INFO)[:4].hex()
            self._ciphers.setdefault(key_id, AESGCM(_derive(material, _AES_KEY_INFO)))
        self.current_key_id = next(iter(self._ciphers))

    def encrypt(self, plaintext: str, *, context: str) -> str:
        """`plaintext` sealed with the current key, readable only with the same `context`."""
        nonce = secrets.token_bytes(NONCE_BYTES)
        sealed = self._ciphers[self.current_key_id].encrypt(
            nonce, plaintext.encode(), context.encode()
        )
        token = base64.urlsafe_b64encode(nonce + sealed).decode()
        return f"{FORMAT_VERSION}:{self.current_key_id}:{token}"

    def decrypt(self, ciphertext: str, *, context: str) -> str:
        """The plaintext of `ciphertext`, or DecryptionError."""
        version, _, rest = ciphertext.partition(":")
        key_id, _, token = rest.partition(":")
        cipher = self._ciphers.get(key_id)
        if version != FORMAT_VERSION or cipher is None:
            raise DecryptionError("The value was sealed by an unknown key or format")
        try:
            # Validating: characters outside the alphabet are an altered value, not skipped.
            raw = base64.b64decode(token.encode(), altchars=b"-_", validate=True)
            # Canonical only: a last character whose unused low bits were changed decodes to
            # the same bytes, yet it is not the value that was stored.
            if base64.urlsafe_b64encode(raw).decode() != token:
                raise ValueError("not the canonical encoding")
            plaintext = cipher.decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], context.encode())
            return plaintext.decode()
        except (InvalidTag, ValueError):  # ValueError: bad base64 (binascii.Error) or UTF-8
            raise DecryptionError("The value does not open with its key") from None


@functools.cache
def keyring() -> Keyring:
    """The application's keyring, built on first use (which creates data/encryption_key when
    ENCRYPTION_KEY is unset)."""
    return Keyring(settings.encryption_key_material())
