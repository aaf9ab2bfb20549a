"""A SERAC folder: the config, the two trained parts and the edit store snapshot, and the one reader of it.

A folder is what :meth:`~serac.memory.EditMemory.save_pretrained` and ``serac train`` write::

    serac_config.json          SeracConfig: base model reference, part paths, store settings
    scope_classifier/          the scope classifier (its own config and weights)
    counterfactual_model/      the counterfactual model (its own config and weights)
    edit_store.safetensors     the edits (absent in a folder written by training)

:func:`read_folder` is the only code that resolves one (a local path or a Hub repository id) and checks it:
part paths stay inside the folder unless the caller allows otherwise, the snapshot is a file name inside
it, and a config written by a newer serac is refused. The Python API, the server and training all go
through it, so a folder that is safe to load in one is safe to load in the others.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from serac._version import __version__
from serac.files import JsonConfigMixin
from serac.store import STORE_FILE_NAME, EditStoreConfig

logger = logging.getLogger(__name__)

CONFIG_NAME = "serac_config.json"
SCOPE_FOLDER = "scope_classifier"
COUNTERFACTUAL_FOLDER = "counterfactual_model"
CONFIG_FORMAT_VERSION = 1
#: The config fields that name a part, with the part's name in messages.
PART_PATH_FIELDS = {
    "scope_classifier": "scope_classifier_path",
    "counterfactual_model": "counterfactual_model_path",
}

__all__ = [
    "CONFIG_NAME",
    "COUNTERFACTUAL_FOLDER",
    "SCOPE_FOLDER",
    "SeracConfig",
    "SeracConfigError",
    "SeracFolder",
    "read_folder",
]


class SeracConfigError(ValueError):
    """A SERAC folder whose config cannot be used: newer, malformed, or pointing outside the folder."""


@dataclass
class SeracConfig(JsonConfigMixin):
    """What a SERAC folder records besides its parts.

    Args:
        base_model_name_or_path: the base model the edits were made for (a reference; its weights are never
            saved).
        scope_classifier_path: where the scope classifier is, relative to the folder or absolute.
        counterfactual_model_path: where the counterfactual model is, relative to the folder or absolute.
        store: the edit store's settings.
        store_file: the edit store snapshot saved with the folder (``None``: none was saved, as in a folder
            written by training), so a deleted snapshot is an error rather than an empty store.
    """

    base_model_name_or_path: str | None = None
    scope_classifier_path: str = SCOPE_FOLDER
    counterfactual_model_path: str = COUNTERFACTUAL_FOLDER
    store: EditStoreConfig = field(default_factory=EditStoreConfig)
    store_file: str | None = None

    def to_json(self) -> str:
        data = {
            **dataclasses.asdict(self),
            "serac_version": __version__,
            "format_version": CONFIG_FORMAT_VERSION,
        }
        return json.dumps(data, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> SeracConfig:
        """Parse a saved config; :class:`SeracConfigError` for a newer or malformed one."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise SeracConfigError(f"the SERAC config is not JSON: {error}") from None
        if not isinstance(data, dict):
            raise SeracConfigError("the SERAC config is not a JSON object")
        written_by = data.pop("serac_version", None)
        version = data.pop("format_version", 1)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if (
            isinstance(version, bool)
            or not isinstance(version, int)
            or version > CONFIG_FORMAT_VERSION
            or unknown
        ):
            raise SeracConfigError(
                f"this SERAC config (format {version!r}, fields {unknown}) was written by a newer serac "
                f"({written_by}); this is serac {__version__}: upgrade serac to load it"
            )
        for name in ("base_model_name_or_path", "store_file"):
            if data.get(name) is not None and not isinstance(data[name], str):
                raise SeracConfigError(f"{name} must be a string, got {data[name]!r}")
        for name in PART_PATH_FIELDS.values():
            if name in data and not isinstance(data[name], str):
                raise SeracConfigError(f"{name} must be a string, got {data[name]!r}")
        try:
            store = EditStoreConfig.from_dict(data.pop("store", {}))
        except ValueError as error:
            raise SeracConfigError(f"bad edit store settings: {error}") from None
        return cls(**data, store=store)

    @classmethod
    def read(cls, path: Path) -> SeracConfig:
        """The config in the file ``path``; errors name the file."""
        try:
            return cls.from_json(path.read_text())
        except SeracConfigError as error:
            raise SeracConfigError(f"{path}: {error}") from None


@dataclass(frozen=True)
class SeracFolder:
    """A SERAC folder that passed every check of :func:`read_folder`: where each of its pieces is.

    Args:
        directory: the folder (a Hub repository is downloaded first).
        config: its config.
        scope_classifier_path: the scope classifier's folder.
        counterfactual_model_path: the counterfactual model's folder.
        store_file: the edit store snapshot, ``None`` when the folder holds none.
    """

    directory: Path
    config: SeracConfig
    scope_classifier_path: Path
    counterfactual_model_path: Path
    store_file: Path | None


def read_folder(
    name_or_path: str | os.PathLike,
    *,
    allow_external_parts: bool = False,
    revision: str | None = None,
    token: str | None = None,
) -> SeracFolder:
    """Resolve and check a SERAC folder: a local folder, or a Hub repository id fetched with
    ``huggingface_hub.snapshot_download`` (``revision`` and ``token`` go there).

    Parts are found only inside the folder unless ``allow_external_parts=True``: a config may name any
    path, and following one silently is how a folder from elsewhere would make this process load weights it
    was never meant to. Raises ``FileNotFoundError`` for a missing folder, config, part or snapshot and
    :class:`SeracConfigError` for a config that cannot be used; each message names the path.
    """
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise TypeError(f"a SERAC folder is a path or a Hub repository id, got {type(name_or_path).__name__}")
    directory = _resolve_directory(name_or_path, revision=revision, token=token)
    config_path = directory / CONFIG_NAME
    if not config_path.is_file():
        raise FileNotFoundError(f"no SERAC folder in {directory} (missing {CONFIG_NAME})")
    config = SeracConfig.read(config_path)
    parts = {
        part: _part_path(directory, getattr(config, name), part, allow_external_parts)
        for part, name in PART_PATH_FIELDS.items()
    }
    for part, path in parts.items():
        if not path.is_dir():
            raise FileNotFoundError(
                f"the {part.replace('_', ' ')} {path} named in {config_path} is missing; restore it, or save "
                "the folder again"
            )
    return SeracFolder(
        directory=directory,
        config=config,
        scope_classifier_path=parts["scope_classifier"],
        counterfactual_model_path=parts["counterfactual_model"],
        store_file=_store_file_path(directory, config),
    )


def _part_path(directory: Path, recorded: str, part: str, allow_external: bool) -> Path:
    """Where a part recorded in the config lives; outside ``directory`` only when allowed."""
    path = Path(recorded)
    inside = not path.is_absolute() and ".." not in path.parts
    if not inside and not allow_external:
        raise SeracConfigError(
            f"the {part} path {recorded!r} in {directory / CONFIG_NAME} points outside the folder; pass "
            "allow_external_parts=True if you trust where it points"
        )
    return path if path.is_absolute() else directory / path


def _store_file_path(directory: Path, config: SeracConfig) -> Path | None:
    """The saved edit store snapshot, ``None`` if the folder never had one (written by training)."""
    if config.store_file is None:
        # Folders of serac 0.1.0 do not record it: a snapshot there is used, its absence means none.
        legacy = directory / STORE_FILE_NAME
        return legacy if legacy.exists() else None
    name = Path(config.store_file)
    if name.is_absolute() or len(name.parts) != 1 or name.name in ("..", "."):
        raise SeracConfigError(f"store_file must be a file name inside the folder, got {config.store_file!r}")
    path = directory / name
    if not path.is_file():
        raise FileNotFoundError(f"the edit store {path} recorded in {directory / CONFIG_NAME} is missing")
    return path


def _resolve_directory(name_or_path: str | os.PathLike, *, revision: str | None, token: str | None) -> Path:
    """A local folder as is; otherwise a Hub repository id, downloaded with ``snapshot_download``."""
    path = Path(name_or_path)
    if path.is_dir():
        return path
    text = str(name_or_path)
    looks_like_repo_id = (
        isinstance(name_or_path, str)
        and 0 < text.count("/") <= 1
        and not text.startswith(("/", ".", "~"))
        and not path.exists()
    )
    if not looks_like_repo_id:
        raise FileNotFoundError(f"no SERAC folder in {path} (not a folder)")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id=text, revision=revision, token=token))
    except Exception as error:
        raise FileNotFoundError(
            f"no SERAC folder at {text!r}: it is not a local folder, and the Hugging Face Hub repository could "
            f"not be fetched ({type(error).__name__}: {error})"
        ) from error
