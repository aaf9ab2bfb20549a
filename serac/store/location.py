"""Where an edit store lives: this process's memory, a database URL, a SQLite file path or a snapshot file.

A location is checked as text before anything is created there: an empty string, or a string that looks
like a URL without being one, is refused with the forms that work, instead of becoming a relative path (a
folder named ``sqlite:`` in the working directory) or a throwaway in-memory database.
"""

from __future__ import annotations

import os
import re
import sqlite3
from pathlib import Path

import sqlalchemy as sa

from serac.store.config import EditStoreError

__all__ = ["URL_EXAMPLES", "check_location", "database_url", "snapshot_location", "sqlite_schema"]

URL_EXAMPLES = "sqlite:///edits.db (a file), sqlite:////abs/path/edits.db, postgresql://user@host/db"
# "scheme:" at the start of a string: a URL with its "//" missing. One letter is a Windows drive ("C:").
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):")


def check_location(text: str) -> None:
    """Refuse a store location string that is empty or looks like a URL without being one.

    ``"sqlite:/x.db"`` or ``"sqlite:x.db"`` would otherwise be taken for a relative path and create a folder
    named ``sqlite:``; ``"sqlite://x.db"`` would be a SQLite URL with a host, which SQLAlchemy opens as a
    throwaway in-memory database.
    """
    if not text.strip():
        raise ValueError(
            "an empty string is not a store location: pass None for a store in this process's memory, or "
            f"a file path or a database URL ({URL_EXAMPLES})"
        )
    if "://" in text:
        try:
            parsed = sa.engine.make_url(text)
        except sa.exc.ArgumentError as error:
            raise ValueError(
                f"{text!r} is not a valid database URL ({error}); examples: {URL_EXAMPLES}"
            ) from None
        if parsed.get_backend_name() == "sqlite" and parsed.host:
            raise ValueError(
                f"{text!r} is a SQLite URL with a host ({parsed.host!r}): a SQLite file is named after three "
                f"slashes (sqlite:///relative/edits.db) or four (sqlite:////abs/path/edits.db)"
            )
        return
    if _SCHEME.match(text):
        raise ValueError(
            f"{text!r} looks like a URL but is not one: a URL has '://' after its scheme ({URL_EXAMPLES}); a "
            "file path has no 'scheme:' prefix (write ./name for a file whose name has a colon)"
        )


def database_url(url_or_path: str | os.PathLike) -> str:
    """A SQLAlchemy URL; a plain path means a SQLite file there. Strings are checked by :func:`check_location`."""
    text = os.fspath(url_or_path)
    if isinstance(url_or_path, str):
        check_location(text)
    if "://" in text:
        return text
    return f"sqlite:///{Path(text).expanduser().resolve()}"


def snapshot_location(location: str | os.PathLike | None) -> Path | None:
    """The snapshot file a location names (``file://...`` or a ``*.safetensors`` path), else ``None``."""
    if location is None:
        return None
    text = os.fspath(location)
    if text.startswith("file://"):
        return Path(text[len("file://") :]).expanduser()
    if "://" not in text and text.endswith(".safetensors"):
        return Path(text).expanduser()
    return None


def sqlite_schema(path: Path) -> dict[str, list[str]] | None:
    """The column names of every table of the SQLite file at ``path``, ``None`` when there is no file yet;
    a folder, a file that cannot be created, or one that is not a database is refused, nothing created."""
    if path.is_dir():
        raise IsADirectoryError(
            f"the edit store path {path} is a folder; name a file in it, e.g. {path / 'edits.db'}"
        )
    if not path.exists():
        folder = next((parent for parent in path.parents if parent.exists()), None)
        if folder is None or not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
            raise EditStoreError(
                f"cannot create the edit store {path}: {folder} is not a folder this process can write to; "
                "pass a path in a writable folder"
            )
        return None
    # Read through a plain connection that writes nothing: the store's engine would switch the file to WAL
    # mode on connecting, before a foreign schema is noticed. "rw" opens, never creates.
    try:
        connection = sqlite3.connect(f"{path.absolute().as_uri()}?mode=rw", uri=True)
    except sqlite3.Error as error:
        raise EditStoreError(
            f"cannot open the edit store {path}: {error}; check that it is writable"
        ) from None
    try:
        return {
            name: [row[1] for row in connection.execute(f'PRAGMA table_info("{name}")')]
            for (name,) in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        }
    except sqlite3.DatabaseError as error:
        raise EditStoreError(f"{path} is not an edit store: {error}") from None
    finally:
        connection.close()
