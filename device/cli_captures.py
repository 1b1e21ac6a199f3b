"""`edgecap search`, `export` and `delete`: the sub-commands that read or change stored captures."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from device import records
from device.cli_common import EXIT_FAIL, EXIT_OK, UserError, percent
from device.config import Config


def capture_line(store: Any, row: dict[str, Any]) -> dict[str, Any]:
    """A capture as the API shows it, plus where its photo is on this machine."""
    path = store.file_path(row["id"], "image")
    return {**records.capture_json(row), "image_path": str(path) if path else None}


def _check_k(args: argparse.Namespace) -> None:
    if args.k is not None and not 1 <= args.k <= args.max_k:
        raise UserError(f"-k must be between 1 and {args.max_k}, got {args.k}")


def _filters(args: argparse.Namespace) -> dict[str, Any]:
    from werkzeug.exceptions import BadRequest

    from device.web.params import range_args  # the same date rules as the page and the API

    try:
        since, until = range_args({"since": args.since or "", "until": args.until or ""})
    except BadRequest as e:
        raise UserError(str(e.description).replace("since", "--since").replace("until", "--until")) from None
    return {"source": args.source, "since": since, "until": until}


def cmd_search(config: Config, args: argparse.Namespace) -> int:
    from device.pipeline import open_device
    from device.search import search

    _check_k(args)
    filters = _filters(args)
    with open_device(config, captioner=False) as device:
        store = device.store
        res = search(store, " ".join(args.query), k=args.k, embedder=device.embedder, **filters)
        if res.notice:
            print(f"edgecap: {res.notice}", file=sys.stderr)
        if not res.items:
            print(f"edgecap: nothing matches; {store.count()} captures in {config.data_dir}", file=sys.stderr)
        for item in res.items:
            if args.json:
                print(json.dumps(capture_line(store, item)))
            else:
                conf = records.confidence(item.get("score"), len(str(item.get("caption", "")).split()))
                print(f"#{item['id']:<6} {records.iso_time(item['time'])}  {item.get('caption', '')}  "
                      f"({percent(conf)})")
    return EXIT_OK


def cmd_export(config: Config, args: argparse.Namespace) -> int:
    from device import export
    from device.pipeline import open_device

    _check_k(args)
    fmt = args.format or (Path(args.output).suffix.lstrip(".").lower() if args.output else "") or "csv"
    if fmt not in export.FORMATS:
        raise UserError(f"cannot tell the format from {args.output}: add --format {'|'.join(export.FORMATS)}")
    if fmt == "zip" and not args.output:
        raise UserError("a zip needs a file: add -o FILE.zip")
    filters = _filters(args)
    query = " ".join(args.query)
    with open_device(config, captioner=False, embedder=bool(query)) as device:
        store = device.store
        rows = export.select(store, query, embedder=device.embedder, limit=args.k or export.MAX_ITEMS,
                             filters=filters)
        items = [records.capture_json(r) for r in rows]

        def photo(cid: int) -> Path | None:
            return store.file_path(cid, "image")

        if not args.output:
            export.write(items, fmt, sys.stdout.buffer, photo)
            return EXIT_OK
        out = Path(args.output)
        tmp = out.with_name(f".{out.name}.tmp")
        try:
            with open(tmp, "wb") as fh:
                export.write(items, fmt, fh, photo)
            tmp.replace(out)  # a half-written file never has the name asked for
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise UserError(f"cannot write {out}: {e.strerror or e}") from None
    print(f"edgecap: wrote {len(items)} captures to {out}", file=sys.stderr)
    return EXIT_OK


def cmd_delete(config: Config, args: argparse.Namespace) -> int:
    from device.pipeline import open_device

    wanted = sorted(set(args.ids))
    with open_device(config, captioner=False, embedder=False) as device:
        deleted = device.store.delete(wanted)
    print(f"edgecap: deleted {deleted} of {len(wanted)} captures from {config.data_dir}", file=sys.stderr)
    return EXIT_OK if deleted == len(wanted) else EXIT_FAIL
