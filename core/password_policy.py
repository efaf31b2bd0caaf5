"""The strength rule every new password meets (user creation, admin change, own change, reset).

A password is refused when it holds the account's email local part or a word of its name, or
when zxcvbn scores it below MIN_SCORE (docs/adr/0012-robustesse-des-mots-de-passe.md). Only
passwords being chosen are checked: existing ones keep working.
"""

import re
import unicodedata

from zxcvbn_rs_py import zxcvbn

from core.exceptions import InvalidFieldError
from core.security import passwords

# zxcvbn's own limit: its cost grows with the length, and beyond this a password is strong for
# any attacker it models. Longer passwords are scored on their first 72 characters.
MAX_SCORED_LENGTH = 72
# zxcvbn scores 0 to 4; 3 is "safely unguessable" against an offline attack on a slow hash.
MIN_SCORE = 3
# Shorter name words ("de", "Li") would refuse too many passwords for what they protect.
MIN_WORD_LENGTH = 3

_LETTERS = re.compile(r"[^\W\d_]+")


class WeakPassword(InvalidFieldError):
    code = "weak_password"
    message = "The password is too easy to guess"


def _folded(text: str) -> str:
    """Case and accents set aside: "Hélène" and "HELENE" are the same word here."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(char for char in decomposed if not unicodedata.combining(char)).casefold()


def weakness(password: str, email: str, full_name: str) -> str | None:
    """Why `password` is too weak for this account, in plain words, or None. Blocking (zxcvbn
    takes milliseconds): the app calls `check_password_strength`."""
    folded = _folded(password)
    local_part = _folded(email.rpartition("@")[0])
    if len(local_part) >= MIN_WORD_LENGTH and local_part in folded:
        return "The password contains the part of the email address before the @; leave it out."
    name_words = [
        word for word in _LETTERS.findall(_folded(full_name)) if len(word) >= MIN_WORD_LENGTH
    ]
    if any(word in folded for word in name_words):
        return "The password contains a word of the account holder's name; leave it out."
    result = zxcvbn(password[:MAX_SCORED_LENGTH], [local_part, *name_words])
    if int(result.score) >= MIN_SCORE:
        return None
    reasons = ["The password is too easy to guess."]
    feedback = result.feedback
    if feedback is not None:
        if feedback.warning is not None:
            reasons.append(str(feedback.warning))
        reasons.extend(str(suggestion) for suggestion in feedback.suggestions)
    return " ".join(reasons)


async def check_password_strength(password: str, *, email: str, full_name: str, field: str) -> None:
    """422 weak_password on the body field `field` unless `password` meets the rule; scored in
    the password-hashing threads, within the caller's hashing slot if it holds one."""
    reason = await passwords.run(weakness, password, email, full_name)
    if reason is not None:
        raise WeakPassword("body", field, message=reason)
