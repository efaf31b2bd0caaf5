"""Run Alembic programmatically (used by `python main.py` and the tests)."""

from alembic import command
from alembic.config import Config
from sqlalchemy.engine import make_url

from core.config import PROJECT_ROOT


def app_role_of(app_url: str | None, owner_url: str) -> str | None:
    """The API's role, when it is not the owner's (migration 0010 then grants it its rights)."""
    app = make_url(app_url).username if app_url else None
    return app if app and app != make_url(owner_url).username else None


def alembic_config(database_url: str, app_role: str | None = None) -> Config:
    config = Config(str(PROJECT_ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(PROJECT_ROOT / "alembic"))
    # ConfigParser interpolates '%': escape it so passwords with '%' survive.
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    config.attributes["app_role"] = app_role
    return config


def upgrade_to_head(database_url: str, app_role: str | None = None) -> None:
    """Migrate as the owner role behind `database_url`, granting `app_role` the API's rights."""
    command.upgrade(alembic_config(database_url, app_role), "head")
