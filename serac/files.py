"""Small file helpers: atomic file and folder writes, and JSON configs stamped with the library version.

Every saver in the library writes through these, so a crash mid-write leaves the previous file or folder,
never half of a new one.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypeVar

from serac._version import __version__

__all__ = [
    "JsonConfigMixin",
    "VERSION_KEY",
    "replace_folder",
    "staged_folder",
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


def replace_folder(staging: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Move the finished folder ``staging`` to ``target``, replacing what is there.

    A new ``target`` appears by one rename. An existing one is first renamed aside and removed only once
    the new one is in place, so a crash leaves either folder whole.
    """
    staging, target = Path(staging), Path(target)
    if not target.exists():
        os.replace(staging, target)
        return target
    if not target.is_dir():
        raise NotADirectoryError(f"{target} exists and is not a directory")
    retired = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
    os.replace(target, retired / target.name)
    os.replace(staging, target)
    shutil.rmtree(retired, ignore_errors=True)
    return target


@contextmanager
def staged_folder(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh folder next to ``target``; on success it replaces ``target``, on error it is removed.

    Example:
        >>> with staged_folder("out/model") as staging:  # doctest: +SKIP
        ...     (staging / "config.json").write_text("{}")
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield staging
        # mkdtemp creates 0700 folders; a saved folder should read like any other.
        staging.chmod(0o755)
        replace_folder(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


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
        """Read a file written by :meth:`save_json`."""
        return cls.from_json(Path(path).read_text())
