"""The package record cache: kept by image digest, pruned by use, replaced when damaged."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from orchestrator.build.packagestore import PackageStore
from orchestrator.core.packages import PackageRecord, PathFacts


def record(digest: str, owner: str = "os") -> PackageRecord:
    return PackageRecord(digest, owner, ("sha256:" + "a" * 64,),
                         {"etc/os-release": PathFacts("file", text="ID=debian\n")})


def test_records_by_digest_and_index_states(tmp_path: Path) -> None:
    store = PackageStore(tmp_path / "packages.db")
    assert store.record("sha256:1") is None
    store.save([record("sha256:1"), record("sha256:2", "upstream:debian")])
    assert store.record("sha256:2") == record("sha256:2", "upstream:debian")
    store.save([record("sha256:2", "upstream:other")])  # the same image, newer facts
    found = store.record("sha256:2")
    assert found is not None and found.owner == "upstream:other"
    assert store.index_state("apt x y") is None
    store.save_index_state("apt x y", '{"source": "apt x y"}')
    assert store.index_state("apt x y") == '{"source": "apt x y"}'
    assert (tmp_path / "packages.db").stat().st_mode & 0o777 == 0o640


def test_prune_keeps_what_is_in_use(tmp_path: Path) -> None:
    store = PackageStore(tmp_path / "packages.db")
    store.save([record("sha256:old"), record("sha256:kept"), record("sha256:read")])
    cutoff = time.time() + 1
    store.record("sha256:read")  # reading refreshes its use, but not past the cutoff
    assert store.prune(cutoff, keep={"sha256:kept"}) == 2
    assert store.record("sha256:kept") is not None and store.record("sha256:old") is None
    store.forget(["sha256:kept"])
    assert store.record("sha256:kept") is None


def test_an_unreadable_record_is_read_again_and_a_damaged_file_replaced(
        tmp_path: Path) -> None:
    path = tmp_path / "packages.db"
    store = PackageStore(path)
    store.save([record("sha256:1")])
    db = sqlite3.connect(path)
    db.execute("UPDATE package_records SET record = x'00'")
    db.commit()
    db.close()
    assert store.record("sha256:1") is None
    for suffix in ("-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    path.write_bytes(b"not a database" * 100)
    fresh = PackageStore(path)
    assert fresh.record("sha256:1") is None
    assert list(tmp_path.glob("packages.db.corrupt-*"))
