"""The edit store's source of truth: a database reached through SQLAlchemy Core.

SQLite is the embedded default (a file, or memory for a throwaway store); PostgreSQL (``psycopg`` 3) lets
many processes or machines share one store. Five tables:

* ``serac_store_meta``: name/value pairs fixed when the store is created (format version, embedding size,
  the embedder's fingerprint);
* ``serac_counters``: one row holding the next edit id and the last change number. Every writing
  transaction updates it first, so writers take its row lock in turn: change numbers are handed out in
  commit order, and a reader that has applied every change up to ``n`` never misses one below ``n``;
* ``serac_edits``: the live edits, each with its embedding (float32 bytes), so a process that opens a large
  store never re-embeds;
* ``serac_changes``: the change log (``seq``, edit id, add or remove). Each process keeps its FAISS index in
  memory and brings it up to date by reading the changes past the last one it applied;
* ``serac_retired``: the history of superseded edits, with their embeddings and the id of the edit that
  retired each, so that superseding never deletes an edit and can be undone. Databases written before it
  existed (format 1 has the same four other tables) get it when opened; serac versions that predate it
  ignore it.

Every write is one transaction, durable when it returns (SQLite: WAL journal, ``synchronous=FULL``). A
database is checked before anything is written to it: one whose ``serac_*`` tables are not an edit store's
is refused unchanged.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from serac.edits import Edit
from serac.store.config import EditStoreError
from serac.store.location import database_url, sqlite_schema

logger = logging.getLogger(__name__)

DATABASE_FORMAT_VERSION = 1
OP_ADD = "a"
OP_REMOVE = "r"

__all__ = [
    "DATABASE_FORMAT_VERSION",
    "EditDatabase",
    "RetiredRow",
    "StoreChanges",
    "check_schema",
    "database_url",
    "key_digest",
]

_metadata = sa.MetaData()
META = sa.Table(
    "serac_store_meta",
    _metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)
COUNTERS = sa.Table(
    "serac_counters",
    _metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("next_id", sa.BigInteger, nullable=False),
    sa.Column("last_seq", sa.BigInteger, nullable=False),
)
EDITS = sa.Table(
    "serac_edits",
    _metadata,
    sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=False),
    # A digest, not the key itself: PostgreSQL refuses index entries past ~2.7 kB, and prompts can be longer.
    sa.Column("key_sha256", sa.String(64), nullable=False, unique=True),
    sa.Column("edit", sa.Text, nullable=False),
    sa.Column("embedding", sa.LargeBinary, nullable=False),
    sa.Column("seq", sa.BigInteger, nullable=False),
)
CHANGES = sa.Table(
    "serac_changes",
    _metadata,
    sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("edit_id", sa.BigInteger, nullable=False),
    sa.Column("op", sa.String(1), nullable=False),
)
RETIRED = sa.Table(
    "serac_retired",
    _metadata,
    sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("edit", sa.Text, nullable=False),
    sa.Column("embedding", sa.LargeBinary, nullable=False),
    # The edit that superseded it (NULL: none recorded); it may itself have been retired or removed since.
    sa.Column("retired_by", sa.BigInteger, nullable=True),
    sa.Column("seq", sa.BigInteger, nullable=False),
)
#: The tables of a database of format 1, which every edit store has; serac_retired came later.
CORE_TABLES = (META, COUNTERS, EDITS, CHANGES)


def check_schema(columns: dict[str, list[str]], where: str) -> None:
    """Refuse a database whose ``serac_*`` tables (``columns``: every table's column names) are not an edit
    store's: another application's table of the same name, or a store with some of its tables gone."""
    ours = {table.name: [column.name for column in table.columns] for table in _metadata.sorted_tables}
    present = {name: names for name, names in columns.items() if name in ours}
    for name, names in sorted(present.items()):
        if sorted(names) != sorted(ours[name]):
            raise EditStoreError(
                f"{where} has a table {name} that is not an edit store's (columns {sorted(names)}; an edit "
                f"store's has {sorted(ours[name])}); nothing was changed: open the edit store in another "
                "database or file"
            )
    missing = [table.name for table in CORE_TABLES if table.name not in present]
    if present and missing:
        raise EditStoreError(
            f"{where} has the edit store tables {sorted(present)} but not {missing}: it is not a complete edit "
            "store; nothing was changed: open the edit store in another database or file"
        )


def key_digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


@dataclass
class StoreChanges:
    """What one transaction or one catch-up read changed, in change-number order."""

    last_seq: int
    removed: list[int]
    added: list[tuple[int, str, bytes]]  # (id, edit JSON, embedding bytes)
    retired: list[int] = dataclasses.field(default_factory=list)  # of ``removed``, those kept in history


@dataclass
class RetiredRow:
    """One retired edit, as the history holds it."""

    id: int
    edit: str  # the edit's JSON
    embedding: bytes
    retired_by: int | None


class EditDatabase:
    """The tables of one edit store in one database.

    Args:
        url: a SQLAlchemy URL (``sqlite:///edits.db``, ``postgresql+psycopg://user@host/db``) or a path to a
            SQLite file; ``None`` is a private in-memory SQLite database (nothing survives the process).
        busy_timeout_s: how long a SQLite writer waits for another process's write before giving up.
    """

    def __init__(self, url: str | os.PathLike | None = None, *, busy_timeout_s: float = 30.0) -> None:
        self.url = "sqlite://" if url is None else database_url(url)
        parsed = sa.engine.make_url(self.url)
        self.dialect = parsed.get_backend_name()
        self.in_memory = self.dialect == "sqlite" and parsed.database in (None, "", ":memory:")
        self._writer_lock_path: str | None = None
        if self.dialect == "sqlite":
            if not self.in_memory:
                columns = sqlite_schema(Path(parsed.database))
                if columns is not None:
                    check_schema(columns, str(parsed.database))
            self.engine = self._sqlite_engine(parsed, busy_timeout_s)
            if not self.in_memory:
                self._writer_lock_path = f"{parsed.database}-writer.lock"
        elif self.dialect == "postgresql":
            if parsed.get_driver_name() != "psycopg":
                parsed = parsed.set(drivername="postgresql+psycopg")
            try:
                self.engine = sa.create_engine(parsed, pool_pre_ping=True)
            except ModuleNotFoundError as error:
                raise ImportError(
                    "a PostgreSQL edit store needs psycopg 3: pip install 'serac-memory[postgres]'"
                ) from error
        else:
            raise ValueError(f"edit stores live in SQLite or PostgreSQL, not {self.dialect!r} ({self.url})")
        self._create_tables()

    @property
    def where(self) -> str:
        """The database, for messages: the SQLite file, or the URL without its password."""
        parsed = sa.engine.make_url(self.url)
        if self.dialect == "sqlite":
            return "memory" if self.in_memory else str(parsed.database)
        return parsed.render_as_string(hide_password=True)

    # ------------------------------------------------------------------ engines
    @staticmethod
    def _sqlite_engine(parsed: sa.engine.URL, busy_timeout_s: float) -> Engine:
        if parsed.database not in (None, "", ":memory:"):
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            engine = sa.create_engine(parsed, connect_args={"timeout": busy_timeout_s})
        else:
            # One shared connection: every connection to ":memory:" would be a different, empty database.
            engine = sa.create_engine(
                parsed, connect_args={"check_same_thread": False}, poolclass=sa.pool.StaticPool
            )

        @sa.event.listens_for(engine, "connect")
        def _configure(dbapi_connection: Any, _record: Any) -> None:
            # Let SQLAlchemy's "begin" event open transactions, so writers can ask for BEGIN IMMEDIATE.
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")  # readers never wait for the writer
            cursor.execute("PRAGMA synchronous=FULL")  # a commit is on disk when it returns
            cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
            cursor.close()

        @sa.event.listens_for(engine, "begin")
        def _begin(connection: Connection) -> None:
            # IMMEDIATE takes the write lock up front: two writers that both read first and then write
            # would otherwise deadlock on the upgrade and one would fail with "database is locked".
            connection.exec_driver_sql("BEGIN IMMEDIATE" if connection.info.get("write") else "BEGIN")

        return engine

    def _create_tables(self) -> None:
        for attempt in range(5):
            try:
                if self.dialect != "sqlite":
                    # A server's database may hold other applications' tables: check ours before creating any.
                    inspector = sa.inspect(self.engine)
                    check_schema(
                        {
                            name: [column["name"] for column in inspector.get_columns(name)]
                            for name in inspector.get_table_names()
                        },
                        self.where,
                    )
                _metadata.create_all(self.engine)
                with self._write() as connection:
                    exists = connection.execute(sa.select(COUNTERS.c.id)).first()
                    if exists is None:
                        connection.execute(sa.insert(COUNTERS).values(id=1, next_id=0, last_seq=0))
                return
            except (sa.exc.IntegrityError, sa.exc.ProgrammingError):
                # Two processes creating the same store at once: the loser retries and finds it made.
                if attempt == 4:
                    raise
                time.sleep(0.1 * (attempt + 1))
            except sa.exc.OperationalError as error:
                if self.dialect != "sqlite":
                    raise
                raise EditStoreError(
                    f"cannot open the edit store {self.where}: {error.orig}; check that the file and its folder "
                    "are writable by this process"
                ) from None

    # ------------------------------------------------------------------ transactions
    def _write(self):
        connection = self.engine.connect()
        connection.info["write"] = True
        return _Transaction(connection, self._writer_lock_path)

    def _read(self):
        connection = self.engine.connect()
        connection.info["write"] = False
        return _Transaction(connection)

    @staticmethod
    def _lock_counters(connection: Connection) -> tuple[int, int]:
        # A no-op UPDATE takes the row lock (PostgreSQL) that orders all writers; SQLite's BEGIN IMMEDIATE
        # already holds the database-wide write lock.
        row = connection.execute(
            sa.update(COUNTERS)
            .where(COUNTERS.c.id == 1)
            .values(next_id=COUNTERS.c.next_id)
            .returning(COUNTERS.c.next_id, COUNTERS.c.last_seq)
        ).one()
        return int(row.next_id), int(row.last_seq)

    # ------------------------------------------------------------------ metadata
    def read_meta(self) -> dict[str, str]:
        with self._read() as connection:
            return {row.name: row.value for row in connection.execute(sa.select(META))}

    def init_meta(self, values: dict[str, str]) -> dict[str, str]:
        """Record ``values`` if the store has no metadata yet; returns the metadata the store holds."""
        with self._write() as connection:
            self._lock_counters(connection)
            existing = {row.name: row.value for row in connection.execute(sa.select(META))}
            if not existing:
                connection.execute(sa.insert(META), [{"name": k, "value": v} for k, v in values.items()])
                return dict(values)
            return existing

    def id_of_key(self, key: str) -> int | None:
        """The id of the live edit with this supersede key, if any."""
        with self._read() as connection:
            row = connection.execute(
                sa.select(EDITS.c.id).where(EDITS.c.key_sha256 == key_digest(key))
            ).first()
        return None if row is None else int(row.id)

    def state(self) -> tuple[int, int, int]:
        """``(next_id, last_seq, live edits)``."""
        with self._read() as connection:
            row = connection.execute(sa.select(COUNTERS.c.next_id, COUNTERS.c.last_seq)).one()
            count = connection.execute(sa.select(sa.func.count()).select_from(EDITS)).scalar_one()
        return int(row.next_id), int(row.last_seq), int(count)

    def ever_written(self) -> bool:
        """Whether any edit was ever written to this database (a removed one counts)."""
        next_id, last_seq, _ = self.state()
        return bool(next_id or last_seq)

    def last_seq(self) -> int:
        with self._read() as connection:
            return int(connection.execute(sa.select(COUNTERS.c.last_seq)).scalar_one())

    # ------------------------------------------------------------------ writes
    def add(
        self,
        keys: Sequence[str],
        edits_json: Sequence[str],
        embeddings: np.ndarray,
        superseded_by: Sequence[int | None] | None = None,
    ) -> tuple[list[int], int, StoreChanges]:
        """Insert edits, each with an id of its own; stored edits with the same keys are retired by them
        (moved to the history, with the id of the edit that supersedes each).

        ``superseded_by[i]``, where not ``None``, is the position of the edit of this call that supersedes
        edit ``i`` (the same prompt, later in the call): edit ``i`` goes straight to the history. The keys of
        the other edits are unique. Returns the new ids, the change number the transaction started from, and
        its changes.
        """
        if superseded_by is None:
            superseded_by = [None] * len(keys)
        digests = [key_digest(key) for key in keys]
        vectors = np.ascontiguousarray(embeddings, dtype=np.float32)
        with self._write() as connection:
            next_id, last_seq = self._lock_counters(connection)
            ids = list(range(next_id, next_id + len(keys)))
            live = [i for i, by in enumerate(superseded_by) if by is None]
            id_for_digest = {digests[i]: ids[i] for i in live}
            superseded: dict[int, int] = {}
            for start in range(0, len(live), 500):
                chunk = [digests[i] for i in live[start : start + 500]]
                for row in connection.execute(
                    sa.select(EDITS.c.id, EDITS.c.key_sha256).where(EDITS.c.key_sha256.in_(chunk))
                ):
                    superseded[int(row.id)] = id_for_digest[row.key_sha256]
            seq = self._move_to_history(connection, superseded, last_seq)
            changes, rows, history = [], [], []
            for i, (edit_id, digest, text, vector) in enumerate(
                zip(ids, digests, edits_json, vectors, strict=True)
            ):
                if superseded_by[i] is not None:
                    by = ids[superseded_by[i]]
                    history.append(
                        {
                            "id": edit_id,
                            "edit": text,
                            "embedding": vector.tobytes(),
                            "retired_by": by,
                            "seq": seq,
                        }
                    )
                    continue
                seq += 1
                changes.append({"seq": seq, "edit_id": edit_id, "op": OP_ADD})
                rows.append(
                    {
                        "id": edit_id,
                        "key_sha256": digest,
                        "edit": text,
                        "embedding": vector.tobytes(),
                        "seq": seq,
                    }
                )
            if rows:
                connection.execute(sa.insert(EDITS), rows)
                connection.execute(sa.insert(CHANGES), changes)
            if history:
                connection.execute(sa.insert(RETIRED), history)
            connection.execute(
                sa.update(COUNTERS)
                .where(COUNTERS.c.id == 1)
                .values(next_id=next_id + len(keys), last_seq=seq)
            )
        added = [(row["id"], row["edit"], row["embedding"]) for row in rows]
        removed = sorted(superseded)
        retired = sorted([*removed, *(row["id"] for row in history)])
        return ids, last_seq, StoreChanges(seq, removed, added, retired)

    def retire(self, retired_by: dict[int, int | None]) -> tuple[int, StoreChanges]:
        """Move live edits to the history, each with the id of the edit that retired it, in one transaction.
        Ids that are no longer live (removed meanwhile) are skipped."""
        with self._write() as connection:
            _, last_seq = self._lock_counters(connection)
            live = self._present(connection, EDITS, list(retired_by))
            moving = {edit_id: retired_by[edit_id] for edit_id in sorted(live)}
            seq = self._move_to_history(connection, moving, last_seq)
            if seq != last_seq:
                connection.execute(sa.update(COUNTERS).where(COUNTERS.c.id == 1).values(last_seq=seq))
        return last_seq, StoreChanges(seq, list(moving), [], list(moving))

    def restore(self, digests: dict[int, str]) -> tuple[int, StoreChanges]:
        """Bring retired edits (id -> key digest) back under their ids, in one transaction. A live edit of
        the same prompt is retired in each one's place (an undo of a re-edit). ``KeyError`` (listing them),
        and nothing changed, if some ids are not in the history; ``ValueError`` if two share a prompt."""
        if not digests:
            seq = self.last_seq()
            return seq, StoreChanges(seq, [], [])
        if len(set(digests.values())) != len(digests):
            raise ValueError("two of these retired edits have the same prompt; restore one of them")
        with self._write() as connection:
            _, last_seq = self._lock_counters(connection)
            ids = sorted(digests)
            present = self._present(connection, RETIRED, ids)
            missing = [edit_id for edit_id in ids if edit_id not in present]
            if missing:
                raise KeyError(missing)
            id_for_digest = {digest: edit_id for edit_id, digest in digests.items()}
            holders: dict[int, int | None] = {}
            for start in range(0, len(ids), 500):
                chunk = [digests[edit_id] for edit_id in ids[start : start + 500]]
                for row in connection.execute(
                    sa.select(EDITS.c.id, EDITS.c.key_sha256).where(EDITS.c.key_sha256.in_(chunk))
                ):
                    holders[int(row.id)] = id_for_digest[row.key_sha256]
            seq = self._move_to_history(connection, holders, last_seq)
            rows = []
            for start in range(0, len(ids), 500):
                rows += connection.execute(
                    sa.select(RETIRED.c.id, RETIRED.c.edit, RETIRED.c.embedding)
                    .where(RETIRED.c.id.in_(ids[start : start + 500]))
                    .order_by(RETIRED.c.id)
                ).all()
            restored, changes = [], []
            for row in rows:
                seq += 1
                edit_id = int(row.id)
                changes.append({"seq": seq, "edit_id": edit_id, "op": OP_ADD})
                restored.append(
                    {
                        "id": edit_id,
                        "key_sha256": digests[edit_id],
                        "edit": row.edit,
                        "embedding": bytes(row.embedding),
                        "seq": seq,
                    }
                )
            for start in range(0, len(ids), 500):
                connection.execute(sa.delete(RETIRED).where(RETIRED.c.id.in_(ids[start : start + 500])))
            connection.execute(sa.insert(EDITS), restored)
            connection.execute(sa.insert(CHANGES), changes)
            connection.execute(sa.update(COUNTERS).where(COUNTERS.c.id == 1).values(last_seq=seq))
        added = [(row["id"], row["edit"], row["embedding"]) for row in restored]
        return last_seq, StoreChanges(seq, sorted(holders), added, sorted(holders))

    def retired(
        self, edit_ids: Sequence[int] | None = None, *, with_embeddings: bool = False
    ) -> list[RetiredRow]:
        """The history of retired edits (those of ``edit_ids`` only, if given), in id order; embeddings are
        left empty unless asked for."""
        columns = [RETIRED.c.id, RETIRED.c.edit, RETIRED.c.retired_by]
        if with_embeddings:
            columns.append(RETIRED.c.embedding)
        query = sa.select(*columns).order_by(RETIRED.c.id)
        with self._read() as connection:
            if edit_ids is None:
                rows = connection.execute(query).all()
            else:
                rows = []
                for start in range(0, len(edit_ids), 500):
                    chunk = list(edit_ids[start : start + 500])
                    rows += connection.execute(query.where(RETIRED.c.id.in_(chunk))).all()
        return [
            RetiredRow(
                int(row.id),
                row.edit,
                bytes(row.embedding) if with_embeddings else b"",
                None if row.retired_by is None else int(row.retired_by),
            )
            for row in rows
        ]

    def retired_ids(self, edit_ids: Sequence[int]) -> dict[int, int | None]:
        """Of ``edit_ids``, those in the history, with the id of the edit that retired each."""
        found: dict[int, int | None] = {}
        with self._read() as connection:
            for start in range(0, len(edit_ids), 500):
                for row in connection.execute(
                    sa.select(RETIRED.c.id, RETIRED.c.retired_by).where(
                        RETIRED.c.id.in_(list(edit_ids[start : start + 500]))
                    )
                ):
                    found[int(row.id)] = None if row.retired_by is None else int(row.retired_by)
        return found

    @staticmethod
    def _present(connection: Connection, table: sa.Table, edit_ids: Sequence[int]) -> set[int]:
        present: set[int] = set()
        for start in range(0, len(edit_ids), 500):
            chunk = list(edit_ids[start : start + 500])
            present.update(
                int(row.id) for row in connection.execute(sa.select(table.c.id).where(table.c.id.in_(chunk)))
            )
        return present

    @staticmethod
    def _move_to_history(connection: Connection, retired_by: dict[int, int | None], last_seq: int) -> int:
        """Within a write transaction, move live edits (known to be live) to the history, logging each as a
        removal; returns the last change number used."""
        ids = sorted(retired_by)
        seq = last_seq
        if not ids:
            return seq
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            rows = connection.execute(
                sa.select(EDITS.c.id, EDITS.c.edit, EDITS.c.embedding)
                .where(EDITS.c.id.in_(chunk))
                .order_by(EDITS.c.id)
            ).all()
            history, changes = [], []
            for row in rows:
                seq += 1
                edit_id = int(row.id)
                history.append(
                    {
                        "id": edit_id,
                        "edit": row.edit,
                        "embedding": bytes(row.embedding),
                        "retired_by": retired_by[edit_id],
                        "seq": seq,
                    }
                )
                changes.append({"seq": seq, "edit_id": edit_id, "op": OP_REMOVE})
            connection.execute(sa.delete(EDITS).where(EDITS.c.id.in_(chunk)))
            # An id restored and retired again replaces its older history row.
            connection.execute(sa.delete(RETIRED).where(RETIRED.c.id.in_(chunk)))
            if history:
                connection.execute(sa.insert(RETIRED), history)
                connection.execute(sa.insert(CHANGES), changes)
        return seq

    def remove(self, edit_ids: Sequence[int]) -> tuple[int, StoreChanges]:
        """Delete edits by id in one transaction; ``KeyError`` (listing them) and nothing deleted if some are
        missing."""
        with self._write() as connection:
            _, last_seq = self._lock_counters(connection)
            present = set()
            for start in range(0, len(edit_ids), 500):
                chunk = list(edit_ids[start : start + 500])
                present.update(
                    int(row.id)
                    for row in connection.execute(sa.select(EDITS.c.id).where(EDITS.c.id.in_(chunk)))
                )
            missing = [edit_id for edit_id in edit_ids if edit_id not in present]
            if missing:
                raise KeyError(missing)
            seq = last_seq
            changes = []
            for edit_id in edit_ids:
                seq += 1
                changes.append({"seq": seq, "edit_id": edit_id, "op": OP_REMOVE})
            if changes:
                for start in range(0, len(edit_ids), 500):
                    chunk = list(edit_ids[start : start + 500])
                    connection.execute(sa.delete(EDITS).where(EDITS.c.id.in_(chunk)))
                connection.execute(sa.insert(CHANGES), changes)
                connection.execute(sa.update(COUNTERS).where(COUNTERS.c.id == 1).values(last_seq=seq))
        return last_seq, StoreChanges(seq, list(edit_ids), [])

    def replace(
        self, edit_id: int, key: str, edit_json: str, embedding: np.ndarray
    ) -> tuple[int, StoreChanges]:
        """Overwrite one edit under its id. Raises ``KeyError`` (unknown id) or ``ValueError`` (key taken)."""
        digest = key_digest(key)
        vector = np.ascontiguousarray(embedding, dtype=np.float32).reshape(-1)
        with self._write() as connection:
            _, last_seq = self._lock_counters(connection)
            if connection.execute(sa.select(EDITS.c.id).where(EDITS.c.id == edit_id)).first() is None:
                raise KeyError(edit_id)
            holder = connection.execute(sa.select(EDITS.c.id).where(EDITS.c.key_sha256 == digest)).first()
            if holder is not None and int(holder.id) != edit_id:
                raise ValueError(f"edit {holder.id} already holds this prompt; remove it first")
            seq = last_seq + 1
            connection.execute(
                sa.update(EDITS)
                .where(EDITS.c.id == edit_id)
                .values(key_sha256=digest, edit=edit_json, embedding=vector.tobytes(), seq=seq)
            )
            connection.execute(sa.insert(CHANGES).values(seq=seq, edit_id=edit_id, op=OP_ADD))
            connection.execute(sa.update(COUNTERS).where(COUNTERS.c.id == 1).values(last_seq=seq))
        return last_seq, StoreChanges(seq, [edit_id], [(edit_id, edit_json, vector.tobytes())])

    def clear(self) -> tuple[int, StoreChanges]:
        with self._write() as connection:
            _, last_seq = self._lock_counters(connection)
            ids = [int(row.id) for row in connection.execute(sa.select(EDITS.c.id).order_by(EDITS.c.id))]
            seq = last_seq
            changes = []
            for edit_id in ids:
                seq += 1
                changes.append({"seq": seq, "edit_id": edit_id, "op": OP_REMOVE})
            if changes:
                connection.execute(sa.delete(EDITS))
                connection.execute(sa.insert(CHANGES), changes)
                connection.execute(sa.update(COUNTERS).where(COUNTERS.c.id == 1).values(last_seq=seq))
        return last_seq, StoreChanges(seq, ids, [])

    def import_snapshot(
        self,
        ids: Sequence[int],
        keys: Sequence[str],
        edits_json: Sequence[str],
        embeddings: np.ndarray,
        next_id: int,
        retired: Sequence[RetiredRow] = (),
    ) -> bool:
        """Fill a store that has never been written with a saved snapshot (and its history); ``False`` if it
        has been."""
        vectors = np.ascontiguousarray(embeddings, dtype=np.float32)
        with self._write() as connection:
            current_next, last_seq = self._lock_counters(connection)
            if last_seq != 0 or current_next != 0:
                return False
            rows = [
                {"id": int(i), "key_sha256": key_digest(k), "edit": e, "embedding": v.tobytes(), "seq": n + 1}
                for n, (i, k, e, v) in enumerate(zip(ids, keys, edits_json, vectors, strict=True))
            ]
            for start in range(0, len(rows), 5000):
                connection.execute(sa.insert(EDITS), rows[start : start + 5000])
                connection.execute(
                    sa.insert(CHANGES),
                    [{"seq": r["seq"], "edit_id": r["id"], "op": OP_ADD} for r in rows[start : start + 5000]],
                )
            history = [
                {
                    "id": row.id,
                    "edit": row.edit,
                    "embedding": row.embedding,
                    "retired_by": row.retired_by,
                    "seq": 0,
                }
                for row in retired
            ]
            for start in range(0, len(history), 5000):
                connection.execute(sa.insert(RETIRED), history[start : start + 5000])
            connection.execute(
                sa.update(COUNTERS).where(COUNTERS.c.id == 1).values(next_id=next_id, last_seq=len(rows))
            )
        return True

    # ------------------------------------------------------------------ reads
    def load_all(self, chunk_size: int = 50_000) -> tuple[int, int, Iterator[list[tuple[int, str, bytes]]]]:
        """``(next_id, last_seq, chunks of live rows)``; ``last_seq`` is read before the rows.

        Rows may include changes past ``last_seq``; replaying those changes later is harmless because
        applying a change sets an edit's state rather than toggling it.
        """
        with self._read() as connection:
            row = connection.execute(sa.select(COUNTERS.c.next_id, COUNTERS.c.last_seq)).one()

        def chunks() -> Iterator[list[tuple[int, str, bytes]]]:
            with self.engine.connect() as connection:
                result = connection.execution_options(yield_per=chunk_size).execute(
                    sa.select(EDITS.c.id, EDITS.c.edit, EDITS.c.embedding).order_by(EDITS.c.id)
                )
                for partition in result.partitions():
                    yield [(int(r[0]), r[1], bytes(r[2])) for r in partition]

        return int(row.next_id), int(row.last_seq), chunks()

    def changes_since(self, seq: int) -> StoreChanges | None:
        """The net effect of every change past ``seq``, or ``None`` when there is none."""
        with self._read() as connection:
            last = int(connection.execute(sa.select(COUNTERS.c.last_seq)).scalar_one())
            if last <= seq:
                return None
            rows = connection.execute(
                sa.select(CHANGES.c.seq, CHANGES.c.edit_id, CHANGES.c.op)
                .where(CHANGES.c.seq > seq, CHANGES.c.seq <= last)
                .order_by(CHANGES.c.seq)
            ).all()
            final: dict[int, str] = {}
            for row in rows:
                final[int(row.edit_id)] = row.op
            wanted = [edit_id for edit_id, op in final.items() if op == OP_ADD]
            added = []
            for start in range(0, len(wanted), 500):
                chunk = wanted[start : start + 500]
                added += [
                    (int(r.id), r.edit, bytes(r.embedding))
                    for r in connection.execute(
                        sa.select(EDITS.c.id, EDITS.c.edit, EDITS.c.embedding).where(EDITS.c.id.in_(chunk))
                    )
                ]
        found = {edit_id for edit_id, _, _ in added}
        # An edit added and removed since ``seq`` is gone from the table: treat it as removed.
        removed = [edit_id for edit_id, op in final.items() if op == OP_REMOVE or edit_id not in found]
        return StoreChanges(last, removed, added)

    def dispose(self) -> None:
        self.engine.dispose()


class _Transaction:
    """``with`` block: one transaction on its own connection, committed on success, rolled back on error."""

    def __init__(self, connection: Connection, lock_path: str | None = None) -> None:
        self.connection = connection
        self.lock_path = lock_path
        self.lock_descriptor: int | None = None

    def __enter__(self) -> Connection:
        if self.lock_path is not None:
            # SQLite makes a waiting writer poll with growing sleeps; writers of several processes queue
            # on this file lock instead, and the kernel wakes the next one the moment the lock is free.
            self.lock_descriptor = _lock_file(self.lock_path)
        try:
            self.transaction = self.connection.begin()
        except BaseException:
            self._release()
            raise
        return self.connection

    def __exit__(self, kind: Any, error: Any, traceback: Any) -> None:
        try:
            if kind is None:
                self.transaction.commit()
            else:
                self.transaction.rollback()
        finally:
            self.connection.close()
            self._release()

    def _release(self) -> None:
        if self.lock_descriptor is not None:
            os.close(self.lock_descriptor)  # closing releases the lock
            self.lock_descriptor = None


def _lock_file(path: str) -> int | None:
    try:
        import fcntl
    except ImportError:  # not POSIX: SQLite's own busy handler still serializes writers
        return None
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
    except BaseException:
        os.close(descriptor)
        raise
    return descriptor


def dumps_edit(record: dict[str, str]) -> str:
    return json.dumps(record, ensure_ascii=False, sort_keys=True)


def loads_edit(text: str) -> Edit:
    """An edit read back from the database, where only validated edits are written: skip re-validating
    (at a million edits, validation is most of the time a process takes to open the store)."""
    record = json.loads(text)
    edit = object.__new__(Edit)
    for name in ("prompt", "target", "subject", "statement"):
        object.__setattr__(edit, name, record.get(name))
    return edit
