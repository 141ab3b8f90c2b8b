"""The state database's tables, and the columns added since the first release."""

from __future__ import annotations

SCHEMA = """
CREATE TABLE IF NOT EXISTS layers (
    layer       TEXT PRIMARY KEY,
    build_key   TEXT NOT NULL,
    digest      TEXT NOT NULL,
    ref         TEXT NOT NULL,
    inputs      TEXT NOT NULL,
    built_at    REAL NOT NULL,
    updated_at  REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS builds (
    id          TEXT PRIMARY KEY,
    layer       TEXT NOT NULL,
    build_key   TEXT,
    reason      TEXT NOT NULL,
    outcome     TEXT NOT NULL,
    digest      TEXT,
    started_at  REAL NOT NULL,
    finished_at REAL,
    log_path    TEXT,
    error       TEXT
);
CREATE INDEX IF NOT EXISTS builds_by_layer ON builds (layer, started_at);
CREATE INDEX IF NOT EXISTS builds_running ON builds (outcome) WHERE outcome = 'running';
CREATE TABLE IF NOT EXISTS queue (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    layer       TEXT NOT NULL,
    force       INTEGER NOT NULL,
    cause       TEXT NOT NULL,
    request_id  TEXT NOT NULL,
    enqueued_at REAL NOT NULL,
    taken       INTEGER NOT NULL DEFAULT 0   -- 1 while a run is serving it
);
CREATE TABLE IF NOT EXISTS upstreams (
    name        TEXT PRIMARY KEY,
    tag         TEXT,
    digest      TEXT NOT NULL,
    ref         TEXT NOT NULL,
    checked_at  REAL NOT NULL,
    changed_at  REAL NOT NULL
);
-- Every trigger (POST /v1/builds, a file change, an upstream change) is a request
-- that stays answerable until it is done and after: what it asked, what happened.
CREATE TABLE IF NOT EXISTS requests (
    id          TEXT PRIMARY KEY,
    created_at  REAL NOT NULL,
    cause       TEXT NOT NULL,
    force       INTEGER NOT NULL,
    layers      TEXT NOT NULL,               -- JSON list of layer ids
    state       TEXT NOT NULL,               -- queued | running | done
    results     TEXT NOT NULL DEFAULT '{}',  -- JSON {layer: outcome}
    finished_at REAL
);
CREATE INDEX IF NOT EXISTS requests_by_time ON requests (created_at);
-- Webhook deliveries, kept until delivered: at least once, across restarts.
CREATE TABLE IF NOT EXISTS notifications (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    url          TEXT NOT NULL,
    event        TEXT NOT NULL,
    body         TEXT NOT NULL,
    attempts     INTEGER NOT NULL DEFAULT 0,
    next_at      REAL NOT NULL,
    created_at   REAL NOT NULL,
    delivered_at REAL,
    last_error   TEXT
);
CREATE INDEX IF NOT EXISTS notifications_due ON notifications (delivered_at, next_at);
-- When each build key was first built: its images carry that time, so a
-- rebuild of the same inputs can give the same bytes (and digest).
CREATE TABLE IF NOT EXISTS keys (
    build_key   TEXT PRIMARY KEY,
    layer       TEXT NOT NULL,
    first_built REAL NOT NULL
);
-- Small facts about the database itself (the last write probe after a full disk).
CREATE TABLE IF NOT EXISTS meta (
    name        TEXT PRIMARY KEY,
    value       TEXT NOT NULL
);
"""
# Columns added after the first release: (table, column, declaration).
MIGRATIONS = [
    ("builds", "cause", "TEXT"),
    ("builds", "request_id", "TEXT"),
    ("builds", "builder", "TEXT"),
    ("builds", "base_ref", "TEXT"),  # what the builder stood on: cleanup after a crash
    ("builds", "platform", "TEXT"),
    ("queue", "requests", "TEXT NOT NULL DEFAULT '[]'"),  # every request merged into it
    ("layers", "platform_digests", "TEXT NOT NULL DEFAULT '{}'"),  # platform -> manifest
    ("builds", "platform_digests", "TEXT"),
    ("builds", "steps", "TEXT"),  # JSON {step: seconds}: where a build's time went
    # A delivery belongs to a [[notify]] target by identity (its name, else its URL;
    # never its secret). Rows from before have none: their url stands for it.
    ("notifications", "target", "TEXT"),
    ("notifications", "given_up_at", "REAL"),  # no longer tried; last_error says why
]
