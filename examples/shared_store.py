"""One edit store shared by two processes: an edit one process stores is used by the other.

Both processes open the same SERAC folder on one SQLite file (a PostgreSQL URL works the same way, across
machines). Each keeps its own search index and applies the other's committed changes, read from the
database, within the store's sync interval (50 ms by default).

    python examples/shared_store.py                                   # offline defaults, a temporary file
    python examples/shared_store.py --base-model PATH --editor PATH --store edits.db
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import tempfile
import time

from serac import Edit, EditableModel

EDIT = Edit(prompt="{} plays the sport of", subject="LeBron James", target="football")
QUERY = "What sport does LeBron James play?"


def open_model(base_model: str | None, editor: str | None, store: str) -> EditableModel:
    if editor is None:
        from serac.training.recipe import default_parts_dir  # the default parts' folder (trained once)

        editor = str(default_parts_dir())
    return EditableModel.from_pretrained(base_model, editor, store=store)


def writer(base_model: str | None, editor: str | None, store: str) -> None:
    """The other process: it stores one edit. When edit() returns, the edit is committed to the database."""
    model = open_model(base_model, editor, store)
    (edit_id,) = model.edit([EDIT])
    print(f"[writer {os.getpid()}] stored edit {edit_id}: {EDIT.text}", flush=True)


def routing(model: EditableModel) -> str:
    batch = model.tokenizer([QUERY], return_tensors="pt")
    model.generate(**batch, max_new_tokens=8, do_sample=False)
    decision = model.last_routing[0]
    return f"edit {decision.edit_id}" if decision.in_scope else "base model"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base-model", help="Hugging Face id or path (default: the offline SmolLM2)")
    parser.add_argument("--editor", help="a SERAC folder (default: the offline default parts)")
    parser.add_argument("--store", help="SQLite file or database URL (default: a temporary file)")
    parser.add_argument("--timeout", type=float, default=300, help="seconds the writer may take")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        store = args.store or os.path.join(folder, "edits.db")
        reader = open_model(args.base_model, args.editor, store)  # opened before the other process writes
        print(f"[reader {os.getpid()}] {len(reader.edits)} edits; {QUERY!r} -> {routing(reader)}")

        # "spawn" starts a fresh interpreter, as a second server or worker would be.
        process = multiprocessing.get_context("spawn").Process(
            target=writer, args=(args.base_model, args.editor, store)
        )
        process.start()
        process.join(args.timeout)
        if process.is_alive():
            process.terminate()
            raise SystemExit("the writer process did not finish in time")
        if process.exitcode != 0:
            raise SystemExit(f"the writer process failed (exit code {process.exitcode})")

        # The reader never reopened the store: its index catches up with the database on its own.
        start, deadline = time.monotonic(), time.monotonic() + 10
        while not reader.edits:
            if time.monotonic() > deadline:
                raise SystemExit("the reader did not see the edit within 10 s")
            time.sleep(0.01)
        waited = (time.monotonic() - start) * 1000
        print(f"[reader {os.getpid()}] sees {reader.edits} after {waited:.0f} ms")
        print(f"[reader {os.getpid()}] {QUERY!r} -> {routing(reader)}")


if __name__ == "__main__":
    main()
