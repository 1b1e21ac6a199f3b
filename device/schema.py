"""The store's schema: the migrations that build it, in order, and the runner that applies them.

``PRAGMA user_version`` is the number of migrations applied; opening a data folder applies the rest
inside one write transaction. A migration is never edited once released: a schema change is a new one
appended to ``MIGRATIONS``. What each table is for: see device/store.py.
"""
from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable

import sqlite_utils

log = logging.getLogger("device.store")


class NewerSchemaError(Exception):
    """The database was written by a newer edgecap (more migrations than this version knows)."""

    def __init__(self, version: int, known: int) -> None:
        super().__init__(f"schema {version}, this version knows {known}")
        self.version, self.known = version, known


def _migration_1(db: sqlite_utils.Database) -> None:
    # AUTOINCREMENT: ids are never reused, so a deleted capture's URL never shows another one and
    # "rows with id > last seen" is a correct incremental read for the search cache.
    db.execute(
        """CREATE TABLE captures (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            time REAL NOT NULL,
            source TEXT NOT NULL,
            original_path TEXT,
            image TEXT NOT NULL,
            thumb TEXT NOT NULL,
            caption TEXT NOT NULL,
            alt_text TEXT NOT NULL DEFAULT '',
            score REAL,
            model_id TEXT,
            beams TEXT NOT NULL DEFAULT '[]',
            width INTEGER,
            height INTEGER,
            image_bytes INTEGER NOT NULL DEFAULT 0,
            thumb_bytes INTEGER NOT NULL DEFAULT 0,
            attention BLOB
        )"""
    )
    db["captures"].create_index(["time"], index_name="captures_time")
    # (source, time) serves both "source = ?" and "source = ? ORDER BY time".
    db["captures"].create_index(["source", "time"], index_name="captures_source_time")
    db["captures"].create_index(["original_path"], index_name="captures_original_path")
    db["captures"].enable_fts(
        ["caption", "alt_text"], create_triggers=True, tokenize="unicode61 remove_diacritics 2"
    )
    db.execute("CREATE VIRTUAL TABLE captures_fts_vocab USING fts5vocab('captures_fts', 'row')")
    db.execute(
        "CREATE TABLE capture_changes (seq INTEGER PRIMARY KEY AUTOINCREMENT, capture_id INTEGER NOT NULL)"
    )
    for table in ("embeddings", "image_vectors"):
        db.execute(f"CREATE TABLE {table} (capture_id INTEGER PRIMARY KEY, vector BLOB NOT NULL)")
    for table in ("embeddings", "image_vectors"):
        for when, ref in (("UPDATE", "new"), ("DELETE", "old")):
            db.execute(
                f"""CREATE TRIGGER {table}_log_{when.lower()} AFTER {when} ON {table} BEGIN
                    INSERT INTO capture_changes (capture_id) VALUES ({ref}.capture_id); END"""
            )
        # A vector added later to an existing capture (re-embedding) must reach the caches too; the
        # caches ignore log entries newer than the last capture they read (found by id > last).
        db.execute(
            f"""CREATE TRIGGER {table}_log_insert AFTER INSERT ON {table} BEGIN
                INSERT INTO capture_changes (capture_id) VALUES (new.capture_id); END"""
        )
    db.execute(
        """CREATE TABLE store_totals (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            captures INTEGER NOT NULL,
            file_bytes INTEGER NOT NULL
        )"""
    )
    db.execute("INSERT INTO store_totals (id, captures, file_bytes) VALUES (1, 0, 0)")
    db.execute(
        """CREATE TRIGGER captures_totals_insert AFTER INSERT ON captures BEGIN
            UPDATE store_totals SET captures = captures + 1,
                file_bytes = file_bytes + new.image_bytes + new.thumb_bytes WHERE id = 1;
        END"""
    )
    db.execute(
        """CREATE TRIGGER captures_totals_delete AFTER DELETE ON captures BEGIN
            UPDATE store_totals SET captures = captures - 1,
                file_bytes = file_bytes - old.image_bytes - old.thumb_bytes WHERE id = 1;
            DELETE FROM embeddings WHERE capture_id = old.id;
            DELETE FROM image_vectors WHERE capture_id = old.id;
            INSERT INTO capture_changes (capture_id) VALUES (old.id);
        END"""
    )
    db.execute(
        """CREATE TRIGGER captures_totals_update AFTER UPDATE OF image_bytes, thumb_bytes ON captures
        BEGIN
            UPDATE store_totals SET file_bytes = file_bytes
                - old.image_bytes - old.thumb_bytes + new.image_bytes + new.thumb_bytes WHERE id = 1;
        END"""
    )


def _migration_2(db: sqlite_utils.Database) -> None:
    # The hubness of each projected image vector (see device/image_projection.py): how close it comes
    # to every text anyway. Text -> image ranking subtracts it; 0 for vectors without a projection.
    db.execute("ALTER TABLE image_vectors ADD COLUMN hub REAL NOT NULL DEFAULT 0")


def _migration_3(db: sqlite_utils.Database) -> None:
    db.execute("ALTER TABLE captures ADD COLUMN tags TEXT NOT NULL DEFAULT '[]'")
    db.execute(
        """CREATE TABLE capture_tags (
            word TEXT NOT NULL, capture_id INTEGER NOT NULL, p REAL NOT NULL,
            PRIMARY KEY (word, capture_id)) WITHOUT ROWID"""
    )
    db.execute("CREATE INDEX capture_tags_capture ON capture_tags (capture_id)")
    # Most confident first straight from the index: a common tag ("dog" on 300k of 1M captures) stops
    # after `limit` rows instead of sorting all of them (measured 175 ms -> 0.2 ms).
    db.execute("CREATE INDEX capture_tags_word_p ON capture_tags (word, p DESC)")
    db.execute(
        """CREATE TRIGGER captures_tags_delete AFTER DELETE ON captures BEGIN
            DELETE FROM capture_tags WHERE capture_id = old.id; END"""
    )


MIGRATIONS: list[Callable[[sqlite_utils.Database], None]] = [_migration_1, _migration_2, _migration_3]


def migrate(conn: sqlite3.Connection) -> None:
    """Apply the migrations ``conn``'s database lacks, in one transaction (the caller holds the
    process's write lock). Raises NewerSchemaError, and leaves the database as it was, when it is
    ahead of this version."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > len(MIGRATIONS):
            raise NewerSchemaError(version, len(MIGRATIONS))
        db = sqlite_utils.Database(conn)
        for i in range(version, len(MIGRATIONS)):
            log.info("store: applying schema migration %d", i + 1)
            MIGRATIONS[i](db)
            conn.execute(f"PRAGMA user_version = {i + 1}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
