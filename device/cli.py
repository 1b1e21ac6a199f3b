"""`edgecap`: the command line. One sub-command per library call; errors a user can cause become one line.

Heavy modules (models, store, web, OpenCV) are imported inside the sub-commands, so `edgecap --help`
answers at once.
"""
from __future__ import annotations

import os

# Before numpy is imported anywhere: OpenBLAS (numpy's BLAS) otherwise starts one thread per core at the
# first matrix product, and those threads busy-wait afterwards. On this 2-core machine that burned more
# than half a core during `ingest` (measured: 34 -> 15 ms CPU per image, 16 -> 31 images/s). The device's
# matrix products are small; one BLAS thread is faster overall. An explicit setting still wins.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # (imported after the BLAS settings on purpose)
import json
import logging
import signal
import sqlite3
import sys
import threading
import time
from pathlib import Path
from typing import Any

from device import cli_captures, records
from device.cli_common import EXIT_FAIL, EXIT_OK, EXIT_USAGE, UserError, percent
from device.config import Config, ConfigError, load_config

log = logging.getLogger("edgecap")

def setup_logging(level: str) -> None:
    # journald adds its own timestamps; JOURNAL_STREAM tells us stderr goes there
    if os.environ.get("JOURNAL_STREAM"):
        fmt = "%(levelname)s %(name)s: %(message)s"
    else:
        fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=getattr(logging, level.upper()), format=fmt, stream=sys.stderr, force=True)


# ---------------------------------------------------------------------------------------------- parser

def build_parser() -> argparse.ArgumentParser:
    from device import export  # standard library only: --help stays instant

    p = argparse.ArgumentParser(prog="edgecap", description="Offline image captioning camera.")
    p.add_argument("--config", metavar="PATH", help="TOML config file (default: $EDGECAP_CONFIG, "
                   "then /etc/edgecap/config.toml if present)")
    p.add_argument("--data-dir", metavar="DIR", help="where the database and images live ($EDGECAP_DATA_DIR)")
    p.add_argument("--models-dir", metavar="DIR", help="where the model sets live ($EDGECAP_MODELS_DIR)")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"], help="default: [log] level")
    p.add_argument("-v", "--verbose", action="store_true", help="same as --log-level debug")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    r = sub.add_parser("run", help="capture, caption and store until stopped; also serves the web page")
    r.add_argument("--no-web", action="store_true", help="do not serve the web page")
    r.add_argument("--source", help="override [camera] source (auto, picamera2, usb, jetson, stream, "
                   "folder, samples)")
    r.add_argument("--folder", metavar="DIR", help="watch this folder for new photos (implies --source folder)")
    r.add_argument("--url", help="read this RTSP/HTTP stream or video file (implies --source stream)")
    r.add_argument("--interval", type=float, help="override [capture] interval (seconds)")
    r.add_argument("--max-captures", type=int, help="stop after this many stored captures")
    _web_flags(r)

    c = sub.add_parser("caption", help="caption image files (no store)")
    c.add_argument("images", nargs="+", metavar="IMAGE")
    c.add_argument("--json", action="store_true", help="one JSON object per line")
    c.add_argument("--model", help="captioner set name or folder (e.g. captioner-4bit)")
    c.add_argument("--beam", type=int, help="beam width (1 = greedy); default [model] beam_width")

    i = sub.add_parser("ingest", help="caption a folder of existing photos into the store")
    i.add_argument("paths", nargs="+", metavar="DIR", help="folders (searched recursively) or image files")
    i.add_argument("--json", action="store_true", help="print one JSON line per stored capture, with its id")
    i.add_argument("--model", help="captioner set name or folder")
    i.add_argument("--workers", type=int, default=2, help="decoding threads (default 2)")
    i.add_argument("--threads", type=int, default=1,
                   help="TFLite threads per model (default 1: the pipeline's stages already keep the cores "
                        "busy, and measured 1 beats 2 by ~20%% CPU per image on 2 cores)")

    s = sub.add_parser("search", help="search the stored captions")
    s.add_argument("query", nargs="+")
    _results_flags(s, default_k=10, max_k=records.MAX_K)
    s.add_argument("--json", action="store_true", help="one JSON object per line (the API's fields + image_path)")

    e = sub.add_parser("export", help="write a search's results (or all captures) as CSV, JSON or a zip of photos")
    e.add_argument("query", nargs="*", help="what to search for; none: every capture the filters let through")
    e.add_argument("--format", choices=export.FORMATS, default=None, help="default: from -o's suffix, else csv")
    e.add_argument("-o", "--output", metavar="FILE", help="default: standard output (not for zip)")
    _results_flags(e, default_k=None, max_k=export.MAX_ITEMS)

    d = sub.add_parser("delete", help="delete captures (rows, photos and thumbnails) by id")
    d.add_argument("ids", nargs="+", type=int, metavar="ID")

    sub.add_parser("doctor", help="check runtime, models, camera, store and disk; say what to fix")

    rp = sub.add_parser("repair", help="rebuild the database's rows from the stored images (stop edgecap first)")
    rp.add_argument("--from", dest="from_db", metavar="FILE",
                    help="copy rows back from this database first (a backup, or `sqlite3 edgecap.db .recover`)")

    w = sub.add_parser("serve", help="serve the web page only (no capturing)")
    _web_flags(w)

    sub.add_parser("hash-password", help="print a password hash for [web] password_hash")
    return p


def _web_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", help="address to listen on (default: [web] host; 127.0.0.1 while no password "
                   "is set)")
    p.add_argument("--port", type=int, help="default: [web] port (8080)")
    p.add_argument("--no-auth", action="store_true", help="no password; listens on 127.0.0.1 unless --host")


def _results_flags(p: argparse.ArgumentParser, default_k: int | None, max_k: int) -> None:
    """-k and the filters; -k has the API's limits (search 1-100, export 1-10,000)."""
    p.set_defaults(max_k=max_k)
    p.add_argument("-k", type=int, default=default_k, metavar="N",
                   help=f"number of results, 1-{max_k:,}" + (f" (default {default_k})" if default_k else " (default: all)"))
    p.add_argument("--since", metavar="DATE", help="from this date (YYYY-MM-DD, local time)")
    p.add_argument("--until", metavar="DATE", help="up to and including this date")
    p.add_argument("--source", help="only captures from this source (samples, folder, ingest, upload, ...)")


def config_from_args(args: argparse.Namespace) -> Config:
    overrides: dict[str, Any] = {
        "data_dir": args.data_dir,
        "models_dir": args.models_dir,
        "log": {"level": "debug" if args.verbose else args.log_level},
    }
    if args.command == "run":
        source = args.source or ("folder" if args.folder else "stream" if args.url else None)
        overrides["camera"] = {"source": source, "folder": args.folder, "url": args.url}
        overrides["capture"] = {"interval": args.interval, "max_captures": args.max_captures}
    if args.command in ("run", "serve"):
        overrides["web"] = {"host": args.host, "port": args.port, "auth": False if args.no_auth else None}
    if args.command in ("caption", "ingest") and args.model:
        overrides["model"] = {"captioner": args.model}
    return load_config(args.config, overrides)


# ---------------------------------------------------------------------------------------------- commands

def cmd_run(config: Config, args: argparse.Namespace) -> int:
    from device.daemon import run

    run(config, web=not args.no_web)
    return EXIT_OK


def cmd_caption(config: Config, args: argparse.Namespace) -> int:
    from device.pipeline import load_captioner  # no store: captions only
    from device.preprocess import BadImageError, load_image

    captioner = load_captioner(config.models_dir, config.model.captioner, config.model.num_threads)
    beam = args.beam or config.model.beam_width
    status = EXIT_OK
    for path in args.images:
        try:
            image = load_image(path)
        except (BadImageError, OSError) as e:
            print(f"edgecap: {e}", file=sys.stderr)
            status = EXIT_FAIL
            continue
        c = captioner.caption(image, beam_width=beam)
        if args.json:  # the fields of POST /api/caption, and the file
            print(json.dumps({"image": path, **records.caption_json(c, captioner.model_id)}), flush=True)
        else:
            tags = ", ".join(f"{t.word} {t.p:.2f}" for t in c.tags)
            print(f"{path}\t{c.text}\t({percent(records.confidence(c.score, len(c.words)))})"
                  + (f"\t[{tags}]" if tags else ""), flush=True)
    return status


def cmd_ingest(config: Config, args: argparse.Namespace) -> int:
    from device.ingest import find_images, ingest
    from device.pipeline import open_device
    from device.progress import Progress

    try:
        files = find_images(args.paths)
    except FileNotFoundError as e:
        raise UserError(str(e)) from None
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("%s: stopping after the current images", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    config.model.num_threads = max(1, args.threads)
    with open_device(config, reconcile=True) as device:
        log.info("ingest: %d image files into %s", len(files), config.data_dir)
        store = device.store
        # a redrawn line on a terminal (not beside --json lines there); elsewhere a line every 10 s
        progress = Progress(len(files), tty=sys.stderr.isatty() and not args.json)

        def on_stored(cid: int, path: str, cap: Any) -> None:
            if args.json:
                (row,) = store.get_many([cid])
                print(json.dumps(cli_captures.capture_line(store, row)), flush=True)  # the line promises it is stored

        result = ingest(device.pipeline, files, workers=args.workers, stop=stop, on_stored=on_stored,
                        progress=progress.update)
        progress.close()
    log.info("ingest: %d stored, %d already stored, %d unreadable, of %d image files%s",
             result.stored, result.already, result.failed, result.total, " (stopped)" if stop.is_set() else "")
    return EXIT_OK if not stop.is_set() else 130


def cmd_serve(config: Config, args: argparse.Namespace) -> int:
    from device.daemon import install_signal_handlers
    from device.pipeline import OPTIONAL, open_device
    from device.runtime import tune_malloc
    from device.web import start_web

    tune_malloc()  # as `run` does: uploads decode in worker threads, each would keep its own arena
    with open_device(config, captioner=OPTIONAL) as device:
        log.info("serving the captures in %s", config.data_dir)
        stop = threading.Event()
        install_signal_handlers(stop)
        # the same start-up as `edgecap run`: the same password rule, the same messages
        server = start_web(config, device, time.time())
        try:
            stop.wait()
        finally:
            server.stop()
    return EXIT_OK


def cmd_hash_password(config: Config, args: argparse.Namespace) -> int:
    from device.web import hash_password

    if sys.stdin.isatty():
        import getpass

        pw = getpass.getpass("New web password: ")
        if pw != getpass.getpass("Again: "):
            raise UserError("the passwords differ")
    else:
        pw = sys.stdin.readline().rstrip("\r\n")
    try:
        hashed = hash_password(pw)
    except ValueError as e:
        raise UserError(str(e)) from None
    print(hashed)
    print(f'put it in the config: [web] password_hash = "{hashed}"', file=sys.stderr)
    return EXIT_OK


def cmd_repair(config: Config, args: argparse.Namespace) -> int:
    from device.pipeline import open_device
    from device.repair import RepairError, repair

    try:
        # the store alone first: repair loads the models only when it finds images to caption again
        result = repair(config.data_dir, lambda: open_device(config, captioner=False, embedder=False),
                        Path(args.from_db) if args.from_db else None, progress=print)
    except RepairError as e:
        raise UserError(str(e)) from None
    print(f"repaired: {result.rows_copied} rows copied back, {result.recaptioned} images captioned again"
          + (f", {len(result.unreadable)} unreadable images left in place" if result.unreadable else ""))
    return EXIT_OK


def cmd_doctor(config: Config, args: argparse.Namespace) -> int:
    from device.doctor import doctor

    return EXIT_OK if doctor(config, sys.stdout) else EXIT_FAIL


COMMANDS = {
    "run": cmd_run, "caption": cmd_caption, "ingest": cmd_ingest, "search": cli_captures.cmd_search,
    "export": cli_captures.cmd_export, "delete": cli_captures.cmd_delete, "doctor": cmd_doctor,
    "serve": cmd_serve, "hash-password": cmd_hash_password, "repair": cmd_repair,
}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        config = config_from_args(args)
    except ConfigError as e:
        print(f"edgecap: config error: {e}", file=sys.stderr)
        return EXIT_USAGE
    setup_logging(config.log.level)
    from device.pipeline import StartupError
    from device.store import DB_NAME, StoreError, damaged_message, is_damaged

    try:
        return COMMANDS[args.command](config, args)
    except (UserError, StartupError, StoreError) as e:
        print(f"edgecap: {e}", file=sys.stderr)
        return EXIT_FAIL
    except sqlite3.DatabaseError as e:  # found while reading, after the store opened
        if not is_damaged(e):
            raise
        print(f"edgecap: {damaged_message(config.data_dir / DB_NAME, e)}", file=sys.stderr)
        return EXIT_FAIL
    except BrokenPipeError:  # `edgecap search ... | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except KeyboardInterrupt:
        return 130
