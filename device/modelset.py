"""A model set: a folder of TFLite files described by manifest.json (the converters' output).

The device reads models only through this: the manifest names each file by role and records its
sha256, so a truncated copy or a file from another export is caught at load with a clear message.
"""
from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"


class ModelSetError(RuntimeError):
    pass


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class ModelSet:
    dir: Path
    manifest: dict[str, Any]

    @property
    def name(self) -> str:
        return str(self.manifest.get("name", self.dir.name))

    @classmethod
    def load(cls, set_dir: str | Path, verify: bool = True) -> "ModelSet":
        set_dir = Path(set_dir)
        manifest_file = set_dir / MANIFEST
        if not manifest_file.is_file():
            raise ModelSetError(f"{set_dir}: no manifest.json (not a model set)")
        try:
            manifest = json.loads(manifest_file.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise ModelSetError(f"{manifest_file}: not valid JSON ({exc})") from exc
        if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
            raise ModelSetError(f"{manifest_file}: needs a 'files' object (role -> file name)")
        ms = cls(set_dir, manifest)
        if verify:
            ms.verify()
        return ms

    def path(self, role: str) -> Path:
        try:
            name = self.manifest["files"][role]
        except KeyError:
            raise ModelSetError(f"{self.dir}/manifest.json lists no {role!r} file") from None
        path = self.dir / name
        if path.resolve().parent != self.dir.resolve():
            raise ModelSetError(f"{self.dir}/manifest.json: file {name!r} is outside the set")
        return path

    def verify(self) -> None:
        """Every file the manifest lists exists and has the recorded sha256."""
        expected = self.manifest.get("sha256", {})
        for role in self.manifest["files"]:
            path = self.path(role)
            if not path.is_file():
                raise ModelSetError(f"{path}: missing (listed in manifest.json as {role!r})")
            want = expected.get(path.name)
            if want and sha256_of(path) != want:
                raise ModelSetError(f"{path}: sha256 does not match manifest.json (corrupt or replaced "
                                    "file; copy the model set again)")


def set_path(models_dir: str | Path | None, name: str) -> Path:
    """Where the model set `name` would be: a folder in `models_dir`, or a path of its own (absolute,
    starting with ~, or a relative path with a folder part that exists)."""
    path = Path(name).expanduser()
    if path.is_absolute() or (len(path.parts) > 1 and path.is_dir()) or models_dir is None:
        return path
    return Path(models_dir) / name


def find_set(models_dir: str | Path | None, name: str) -> Path | None:
    """The folder of the model set `name` (see set_path), or None when it holds no manifest.json.
    The one look-up behind every loader (captioner, embedder, tagger, image projection) and doctor."""
    path = set_path(models_dir, name)
    return path if (path / MANIFEST).is_file() else None


def optional_set(models_dir: str | Path | None, name: str, without: str) -> Path | None:
    """The folder of the optional model set `name` in `models_dir`, or None when it has none (logged
    with `without`: what the device does without it)."""
    if models_dir is None:
        return None
    set_dir = find_set(models_dir, name)
    if set_dir is None:
        log.info("no %s set at %s: %s", name, set_path(models_dir, name), without)
    return set_dir


def available_sets(models_dir: str | Path, kind: str | None = None) -> list[str]:
    """Names of the model sets in `models_dir` (optionally of one kind), without verifying hashes."""
    names = []
    for manifest in sorted(Path(models_dir).glob(f"*/{MANIFEST}")):
        try:
            data = json.loads(manifest.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if kind is None or data.get("kind") == kind:
            names.append(manifest.parent.name)
    return names


# ---------------------------------------------------------------------------------------------------
# Writing (the converters)


def write_manifest(set_dir: Path, manifest: dict[str, Any], indent: int = 1) -> dict[str, Any]:
    """Write ``set_dir/manifest.json``: ``manifest`` with the ``sha256`` and ``sizes`` of the files it
    lists (computed here, right after ``files``). The one writer every converter uses, so the
    device's check (``ModelSet.verify``) and the files always agree. Returns what was written."""
    names = list(manifest["files"].values())
    out: dict[str, Any] = {}
    for key, value in manifest.items():
        if key in ("sha256", "sizes"):
            continue
        out[key] = value
        if key == "files":
            out["sha256"] = {f: sha256_of(set_dir / f) for f in names}
            out["sizes"] = {f: (set_dir / f).stat().st_size for f in names}
    (set_dir / MANIFEST).write_text(json.dumps(out, indent=indent) + "\n")
    return out


def update_manifest(set_dir: Path, change: Callable[[dict[str, Any]], object]) -> dict[str, Any]:
    """Apply ``change`` to ``set_dir/manifest.json`` in place (metrics, tuned decoding), keeping the
    file's indentation. The files are not touched, so their sha256 stay as recorded."""
    path = set_dir / MANIFEST
    text = path.read_text(encoding="utf-8")
    manifest = json.loads(text)
    change(manifest)
    second = text.split("\n", 2)[1] if text.count("\n") > 1 else ""
    indent = (len(second) - len(second.lstrip(" "))) or 1
    path.write_text(json.dumps(manifest, indent=indent) + "\n")
    return manifest
