"""Small file helpers: atomic file writes, and JSON configs stamped with the library version.

Every saver in the library writes files through these, so a crash mid-write leaves the previous file,
never half of a new one; whole folders are replaced with :mod:`serac.durable_folder`.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypeVar

from serac._version import __version__

__all__ = [
    "JsonConfigMixin",
    "VERSION_KEY",
    "write_bytes_atomic",
    "write_json_atomic",
    "write_text_atomic",
]

#: The key under which saved configs record the version of the library that wrote them.
VERSION_KEY = "serac_version"

ConfigT = TypeVar("ConfigT", bound="JsonConfigMixin")


def write_bytes_atomic(path: str | os.PathLike, payload: bytes) -> Path:
    """Write ``payload`` to a temporary file next to ``path``, flush it to disk and rename it into place.

    Readers see the old file or the new one, never a half-written one; the rename itself is made durable
    by syncing the folder.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        # mkstemp creates 0600 files; a saved file should read like any other.
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)
    return path


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """:func:`write_bytes_atomic` for UTF-8 text."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike, data: Any) -> Path:
    """:func:`write_bytes_atomic` for indented JSON (NaN is refused: missing values are ``null``)."""
    return write_text_atomic(path, json.dumps(data, indent=2, ensure_ascii=False, allow_nan=False) + "\n")


class JsonConfigMixin:
    """``to_json``/``from_json`` for a config dataclass: sorted keys, the library version stamped in.

    Subclasses that hold nested configs or read older files override :meth:`from_dict`.

    Example:
        >>> from dataclasses import dataclass
        >>> @dataclass
        ... class MyConfig(JsonConfigMixin):
        ...     size: int = 1
        >>> MyConfig.from_json(MyConfig(size=2).to_json())
        MyConfig(size=2)
    """

    def to_dict(self) -> dict[str, Any]:
        """The fields as plain data (nested dataclasses become dicts)."""
        return asdict(self)  # type: ignore[call-overload]

    def to_json(self) -> str:
        """Indented JSON with sorted keys and ``serac_version``."""
        return json.dumps({**self.to_dict(), VERSION_KEY: __version__}, indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls: type[ConfigT], data: dict[str, Any]) -> ConfigT:
        """Build the config from :meth:`to_dict` output; the version key is already removed."""
        return cls(**data)

    @classmethod
    def from_json(cls: type[ConfigT], text: str) -> ConfigT:
        """Read :meth:`to_json` output (the recorded version is informative and dropped)."""
        data = json.loads(text)
        data.pop(VERSION_KEY, None)
        return cls.from_dict(data)

    def save_json(self, path: str | os.PathLike) -> Path:
        """Write :meth:`to_json` to ``path`` atomically."""
        return write_text_atomic(path, self.to_json())

    @classmethod
    def load_json(cls: type[ConfigT], path: str | os.PathLike) -> ConfigT:
        """Read a file written by :meth:`save_json`; a file that is not such a config raises ``ValueError``
        naming it."""
        path = Path(path)
        try:
            return cls.from_json(path.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(
                f"{path} is not a readable {cls.__name__} (truncated or corrupt JSON: {error}); restore the file, "
                "or save the part again"
            ) from None
        except (TypeError, AttributeError) as error:
            # A JSON value of the wrong shape: a list instead of an object, an unknown or missing field.
            raise ValueError(f"{path} is not a valid {cls.__name__}: {error}") from None
