from sqlalchemy import ForeignKey, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base


class RecoveryCode(Base):
    """One single-use recovery code of a user's two-factor login, kept only as its SHA-256
    digest (services/two_factor.py); deleted when used."""

    __tablename__ = "recovery_codes"
    # Also the index of a user's codes (user_id first).
    __table_args__ = (UniqueConstraint("user_id", "code_hash"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(
        Integer, ForeignKey("users.id", ondelete="CASCADE"), nullable=False
    )
    code_hash: Mapped[str] = mapped_column(String(64), nullable=False)
