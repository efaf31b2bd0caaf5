"""The cryptographic and parsing steps of scripts/backup.sh and scripts/restore.sh.

    backup_tool.py seal FILE            encrypt FILE when BACKUP_ENCRYPTION=age (FILE.age
                                        replaces it), sign the result (.sig beside it), print
                                        the path of the file to keep
    backup_tool.py sign FILE            sign FILE as it is (.sig beside it): the GDPR ledger,
                                        which holds no personal data
    backup_tool.py verify FILE SIG      exit 0 when SIG is FILE's tag, 3 when SIG is missing
    backup_tool.py decrypt FILE OUT IDENTITY_FILE
    backup_tool.py restore-sql          stdin: the dump; stdout: what psql may replay

Keys never appear on a command line: the signing key is BACKUP_SIGNING_KEY (environment or
.env, read like the API's settings) or the key generated once in data/backup_signing_key.
"""

import hashlib
import hmac
import os
import re
import secrets
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

import pyrage  # type: ignore[import-untyped]

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_ROOT))
# The settings read `.env` from the working directory: read the project's (see dbenv.py).
_caller_dir = Path.cwd()
os.chdir(PROJECT_ROOT)
from core.config import DATA_DIR, load_or_create_secret_key, settings  # noqa: E402

os.chdir(_caller_dir)

SIGNATURE_SCHEME = "hmac-sha256"
SIGNATURE_MISSING = 3
KEY_FILE = DATA_DIR / "backup_signing_key"
CHUNK = 1024 * 1024

# The only meta-commands pg_dump writes (17.6+, 16.10+): psql's restricted mode around the dump.
PG_DUMP_META = re.compile(rb"\\(restrict|unrestrict) ([A-Za-z0-9]{1,64})\r?\n?")
COPY_FROM_STDIN = re.compile(rb"COPY .* FROM stdin;\r?\n?")
COPY_END = re.compile(rb"\\\.\r?\n?")


class BackupRefused(Exception):
    """The file must not be restored; the message says why, without quoting the file."""


def signing_key(*, create: bool) -> bytes:
    if settings.backup_signing_key is not None:
        return settings.backup_signing_key.get_secret_value().encode()
    if not create and not KEY_FILE.exists():
        raise BackupRefused(
            f"no signing key: set BACKUP_SIGNING_KEY, or put back {KEY_FILE} "
            "from the copy kept apart from the backups"
        )
    return load_or_create_secret_key(KEY_FILE).encode()


def tag_of(path: Path, key: bytes) -> str:
    mac = hmac.new(key, digestmod=hashlib.sha256)
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            mac.update(chunk)
    return mac.hexdigest()


def seal(path: Path) -> Path:
    """Encrypt-then-MAC: the tag covers the bytes stored, so it is checked before decrypting."""
    if settings.backup_encryption == "age":
        assert settings.backup_age_recipient is not None  # the settings validator ensures it
        try:
            recipient = pyrage.x25519.Recipient.from_str(settings.backup_age_recipient.strip())
        except pyrage.RecipientError as exc:
            raise BackupRefused(f"BACKUP_AGE_RECIPIENT is not an age public key: {exc}") from None
        encrypted = path.with_name(path.name + ".age")
        pyrage.encrypt_file(str(path), str(encrypted), [recipient])
        path.unlink()
        path = encrypted
    sign(path)
    return path


def sign(path: Path) -> None:
    signature = path.with_name(path.name + ".sig")
    signature.write_text(f"{SIGNATURE_SCHEME} {tag_of(path, signing_key(create=True))}\n")


def verify(path: Path, signature: Path) -> int:
    if not signature.exists():
        return SIGNATURE_MISSING
    scheme, _, expected = signature.read_text().strip().partition(" ")
    if scheme != SIGNATURE_SCHEME:
        raise BackupRefused("the signature file is not an hmac-sha256 tag")
    if not hmac.compare_digest(tag_of(path, signing_key(create=False)), expected.strip()):
        raise BackupRefused(
            "the signature does not verify: the file was changed, or signed with another key"
        )
    return 0


def decrypt(path: Path, out: Path, identity_file: Path) -> None:
    # age-keygen's format: comment lines, then one AGE-SECRET-KEY-1... line per identity.
    lines = identity_file.read_text().splitlines()
    keys = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    try:
        identities = [pyrage.x25519.Identity.from_str(key) for key in keys]
    except pyrage.IdentityError:
        raise BackupRefused(f"{identity_file} holds no age identity") from None
    if not identities:
        raise BackupRefused(f"{identity_file} holds no age identity")
    try:
        pyrage.decrypt_file(str(path), str(out), identities)
    except pyrage.DecryptError as exc:
        raise BackupRefused(f"cannot decrypt with {identity_file}: {exc}") from None


def restore_sql(dump: Iterable[bytes]) -> Iterator[bytes]:
    """The dump as psql may replay it: no meta-command of the file's own can run.

    Any line outside COPY data that starts with a backslash is refused, except pg_dump's own
    `\\restrict KEY` / `\\unrestrict KEY`, dropped; the whole stream then runs under a
    `\\restrict` with a fresh random key, so psql itself refuses every meta-command this
    line-based reading could miss (one in the middle of a line, after a fake COPY).
    """
    yield f"\\restrict {secrets.token_hex(32)}\n".encode()
    in_copy = False
    for number, line in enumerate(dump, start=1):
        if in_copy:
            in_copy = not COPY_END.fullmatch(line)
        elif line.startswith(b"\\"):
            if not PG_DUMP_META.fullmatch(line):
                raise BackupRefused(f"line {number} is a psql meta-command pg_dump never writes")
            continue
        else:
            in_copy = bool(COPY_FROM_STDIN.fullmatch(line))
        yield line


def main(argv: list[str]) -> int:
    command, *args = argv or ["help"]
    try:
        if command == "seal" and len(args) == 1:
            print(seal(Path(args[0])))
        elif command == "sign" and len(args) == 1:
            sign(Path(args[0]))
        elif command == "verify" and len(args) == 2:
            return verify(Path(args[0]), Path(args[1]))
        elif command == "decrypt" and len(args) == 3:
            decrypt(Path(args[0]), Path(args[1]), Path(args[2]))
        elif command == "restore-sql" and not args:
            sys.stdout.buffer.writelines(restore_sql(sys.stdin.buffer))
        else:
            print(__doc__, file=sys.stderr)
            return 2
    except BackupRefused as exc:
        print(f"backup_tool: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
