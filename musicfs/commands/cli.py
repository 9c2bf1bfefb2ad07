"""Command line: mount, scan, search, status, fsck, demo, failpoints."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys

from .. import __version__
from ..shared import (
    BadArgument,
    Config,
    ConfigError,
    MusicFSError,
    flush_summaries,
    human_size,
    load,
    redact,
    setup_logging,
)

EX_USAGE = 2
EX_CONFIG = 78
EX_BROKEN_PIPE = 128 + 13  # what a shell reports for a command killed by SIGPIPE (`yes | head`)
log = logging.getLogger("musicfs")


def _add_state_args(p: argparse.ArgumentParser, cache: bool = False) -> None:
    p.add_argument("--state-dir", help="catalog and index folder (default: under $XDG_STATE_HOME/musicfs)")
    if cache:
        p.add_argument("--cache-dir", help="chunk cache folder (default: under $XDG_CACHE_HOME/musicfs)")
    p.add_argument("--config", help="TOML config file")
    p.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"], type=str.upper)


def _add_origin_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sftp-identity", metavar="FILE",
                   help="private key for sftp:// sources (origin_options.identity_file)")
    p.add_argument("--sftp-known-hosts", metavar="FILE",
                   help="known_hosts file for sftp:// sources (origin_options.known_hosts; default ~/.ssh/known_hosts)")


_ORIGIN_FLAGS = (("sftp_identity", "--sftp-identity", "identity_file"),
                 ("sftp_known_hosts", "--sftp-known-hosts", "known_hosts"))


def _with_origin_flags(cfg: Config, args) -> Config:
    """--sftp-identity / --sftp-known-hosts win over the config file's origin_options; then every option is
    checked against the kinds of the sources (exit 78 naming the key, or 2 naming the flag that set it)."""
    from ..origins import check_options

    extra = {}
    for attr, flag, key in _ORIGIN_FLAGS:
        value = getattr(args, attr, None)
        if value is None:
            continue
        path = os.path.expanduser(value)
        if not os.path.isfile(path):
            raise BadArgument(flag, f"{value}: no such file")
        extra[key] = os.path.abspath(path)
    options = {**cfg.origin_options, **extra}
    check_options(cfg.sources, options, {key: flag for _, flag, key in _ORIGIN_FLAGS if key in extra})
    return dataclasses.replace(cfg, origin_options=options) if extra else cfg


def _add_library_args(p: argparse.ArgumentParser, default: str) -> None:
    """--state-dir DIR or --mount PATH: which library a command means (statefiles.library_for_path)."""
    which = p.add_mutually_exclusive_group()
    which.add_argument("--state-dir", help=f"the library's state folder ({default})")
    which.add_argument("--mount", metavar="PATH",
                       help="the library mounted at (or last mounted at) PATH, or any path inside that mount")


def _chosen_library(args) -> str | None:
    """The state folder --state-dir or --mount names; None when neither was given."""
    if getattr(args, "mount", None):
        from ..shared import LibraryNotFound, library_for_path

        try:
            return library_for_path(args.mount)
        except LibraryNotFound as exc:
            raise BadArgument("--mount", str(exc)) from exc
    return getattr(args, "state_dir", None)


def _at_least_one(text: str) -> int:
    """argparse type of a count: a whole number >= 1 (argparse names the flag and exits 2 otherwise)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, not {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="musicfs", description="Mount a music library as Artist/Album/NN - Title.ext")
    parser.add_argument("--version", action="version", version=f"musicfs {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("mount", help="mount SOURCE(s) on MOUNTPOINT in the foreground",
                       usage="musicfs mount [options] SOURCE [SOURCE ...] MOUNTPOINT",
                       description="SOURCE is a folder, s3://BUCKET[/PREFIX] or sftp://[USER@]HOST[:PORT]/PATH; "
                                   "several SOURCEs are replicas of one library, read in the order given.")
    p.add_argument("paths", nargs="+", metavar="SOURCE", help="the library's origin(s), then the MOUNTPOINT")
    _add_state_args(p, cache=True)
    p.add_argument("--cache-size", help="chunk cache quota, e.g. 500M or 10G (default 10G)")
    p.add_argument("--rescan-interval", type=float, metavar="SECONDS", help="seconds between rescans (default 900)")
    p.add_argument("--allow-other", action="store_true", default=None, help="let other users read the mount")
    p.add_argument("--allow-empty", action="store_true", default=None,
                   help="mount even when the first scan finds no audio (a library empty on purpose)")
    p.add_argument("--allow-non-empty", action="store_true", default=None,
                   help="mount over a folder that holds files (they are hidden while mounted)")
    p.add_argument("--metrics", metavar="HOST:PORT",
                   help="serve Prometheus metrics at http://HOST:PORT/metrics (default: off)")
    p.add_argument("--no-published-catalog", dest="published_catalog", action="store_false", default=None,
                   help="on a first mount, scan the library even when a catalog was published beside it")
    _add_origin_args(p)

    p = sub.add_parser("scan", help="scan SOURCE(s) into the catalog and search index without mounting")
    p.add_argument("sources", nargs="+", metavar="SOURCE")
    _add_state_args(p)
    _add_origin_args(p)

    p = sub.add_parser("search", help="print the paths in the mount of the tracks matching QUERY (exit 1: none)")
    p.add_argument("query", metavar="QUERY")
    _add_library_args(p, "default: the mounted libraries (every one when none is mounted)")
    p.add_argument("--all", action="store_true", help="search every library under XDG state, mounted or not")
    p.add_argument("--limit", type=_at_least_one, default=20, metavar="N", help="at most N results (default 20)")
    p.add_argument("--json", action="store_true", help="print path, artist, album, title and duration as JSON")

    p = sub.add_parser("status", help="is the daemon running, and how is it doing (exit 0 running, 3 not running)")
    _add_library_args(p, "default: every library under XDG state, one line each")
    p.add_argument("--json", action="store_true", help="print the status document as JSON")

    _add_pin_parsers(sub)
    _add_maintenance_parsers(sub)
    return parser


def _add_pin_parsers(sub) -> None:
    """pin, unpin, pins."""
    p = sub.add_parser("pin", help="keep folders or tracks of a mount whole in its cache, for offline listening "
                                   "(exit 1 refused, 2 not inside a mount, 3 its daemon is not running)")
    p.add_argument("paths", nargs="+", metavar="PATH", help="an artist or album folder, or a track, inside the mount")
    p = sub.add_parser("unpin", help="release pinned folders or tracks (exit 1 not pinned, 2 not inside a mount, "
                                     "3 its daemon is not running)")
    p.add_argument("paths", nargs="+", metavar="PATH", help="a pinned folder or track, inside the mount")
    p = sub.add_parser("pins", help="list the pins of a mount with their progress (exit 3: its daemon is not running)")
    _add_library_args(p, "default: the only library under XDG state")
    p.add_argument("--json", action="store_true", help="print the pins as JSON")


def _add_maintenance_parsers(sub) -> None:
    """fsck, publish, forget, demo, failpoints."""
    p = sub.add_parser("fsck", help="verify chunks, manifests, catalog and search index (exit 0 clean, 1 repaired, "
                                    "4 problems left, 8 could not run)")
    p.add_argument("--repair", action="store_true", help="fix what can be fixed (damaged files are moved aside)")
    _add_library_args(p, "default: the only library under XDG state")
    p.add_argument("--cache-dir", help="its cache folder (default: the one the daemon recorded in daemon.json)")

    p = sub.add_parser("publish", help="write the library's catalog beside it (SOURCE/.musicfs/), so a first mount "
                                       "elsewhere is ready at once (needs write access to SOURCE)")
    p.add_argument("source", metavar="SOURCE")
    _add_state_args(p)
    p.add_argument("--keep", type=float, metavar="SECONDS",
                   help="how long a replaced snapshot stays for mounts still fetching it (default 3600)")
    _add_origin_args(p)

    p = sub.add_parser("forget", help="remove a stopped library's state and cache (say which: its state folder, its "
                                      "mountpoint or its SOURCE)")
    p.add_argument("library", metavar="LIBRARY")

    p = sub.add_parser("demo", help="write a sample library of real audio files into DIR")
    p.add_argument("dir", metavar="DIR")
    p.add_argument("--tracks", type=int, default=24)
    p.add_argument("--big-file-mb", type=int, default=0, help="also write one FLAC of this many MB")

    p = sub.add_parser("failpoints")  # no help: a test tool, left out of the user's command list
    p.add_argument("action", choices=["list"])


def _config(args, sources: list[str], mountpoint: str = "") -> Config:
    overrides = {
        "state_dir": getattr(args, "state_dir", None),
        "cache_dir": getattr(args, "cache_dir", None),
        "cache_size": getattr(args, "cache_size", None),
        "log_level": getattr(args, "log_level", None),
        "rescan_interval": getattr(args, "rescan_interval", None),
        "allow_other": getattr(args, "allow_other", None),
        "allow_non_empty": getattr(args, "allow_non_empty", None),
        "allow_empty": getattr(args, "allow_empty", None),
        "metrics": getattr(args, "metrics", None),
        "published_catalog": getattr(args, "published_catalog", None),
        "sources": tuple(sources),
        "mountpoint": mountpoint,
    }
    return _with_origin_flags(load(getattr(args, "config", None), overrides), args).resolved()


def cmd_mount(args) -> int:
    if len(args.paths) < 2:
        raise BadArgument("MOUNTPOINT", "give at least one SOURCE and a MOUNTPOINT")
    *sources, mountpoint = args.paths
    cfg = _config(args, sources, os.path.abspath(mountpoint))
    from ..daemon import check_mountpoint, free_dying_holder

    free_dying_holder(cfg.state_dir)  # a daemon of this library killed mid page store: before its mount is touched
    check_mountpoint(cfg.mountpoint, cfg.sources, cfg.allow_non_empty)  # before anything is written
    _check_source_urls(cfg)
    setup_logging(cfg.log_level)
    from ..daemon import run

    return run(cfg)


def _check_source_urls(cfg: Config) -> None:
    """Build every origin (nothing connects) so that a malformed s3:// / sftp:// SOURCE is a usage error naming it
    (exit 2) before anything is written, not a failure of the daemon (exit 1)."""
    from ..origins import open_origins
    from ..shared import OriginError

    try:
        origins = open_origins(cfg.sources, cfg.origin_options)
    except ConfigError:
        raise
    except OriginError as exc:
        raise BadArgument("SOURCE", str(exc)) from exc
    for origin in origins:
        origin.close()


def cmd_scan(args) -> int:
    cfg = _config(args, args.sources)
    _check_source_urls(cfg)
    setup_logging(cfg.log_level)
    from ..library import Library
    from ..shared import LibraryLock, private_state, redact_all

    private_state(cfg.state_dir)
    # One process per library: a running daemon (or another scan) owns the catalog and the index.
    lock = LibraryLock(cfg.state_dir).acquire({"mountpoint": "", "sources": redact_all(list(cfg.sources))})
    try:
        lib = Library.open(cfg, with_cache=False)
        try:
            result = lib.scan()
            tree = lib.build_tree()
            lib.reindex(tree)
            print(f"{tree.track_count} tracks: {result.summary()}")
        finally:
            lib.close()
    finally:
        lock.release()
    return 0


def cmd_search(args) -> int:
    setup_logging("WARNING")
    from ..library import SearchIndex
    from ..shared import libraries, recorded_mountpoint, state_base

    chosen = _chosen_library(args)
    if chosen:
        states = [chosen]
    else:  # the mounted libraries (every one with --all, or when none is mounted): their hits merged best first
        states = [str(p) for p in libraries()]
        if not states:
            raise ConfigError("--state-dir", f"no library found under {state_base()}: mount or scan one first")
        mounted = [state for state in states if _is_mounted(recorded_mountpoint(state))]
        if mounted and not args.all:
            states = mounted
    scored = []
    for state in states:
        hits = SearchIndex(os.path.join(state, "index"), create=False).hits(args.query, args.limit)
        mountpoint = recorded_mountpoint(state)  # '' (tree paths) for a library only ever scanned
        scored += [(getattr(hit, "score", 0.0), rank, {
            "path": os.path.join(mountpoint, hit.path), "artist": hit.artist, "album": hit.album,
            "title": hit.title, "duration": hit.duration}) for rank, hit in enumerate(hits)]
    if len(states) > 1:
        scored.sort(key=lambda s: (-s[0], s[1]))
    found = [hit for _, _, hit in scored[:args.limit]]
    if args.json:
        print(json.dumps(found, ensure_ascii=False, indent=2))
    else:
        for hit in found:
            print(hit["path"])
    if not found:
        print(f"musicfs: nothing matches {args.query!r}", file=sys.stderr)
        return 1
    return 0


def _is_mounted(mountpoint: str) -> bool:
    """Whether a musicfs mount is on `mountpoint` now (the mount table; nothing is asked of the mount)."""
    from ..shared import mount_entries

    target = os.path.abspath(mountpoint) if mountpoint else None
    return target is not None and any(e.mountpoint == target and e.fstype == "fuse.musicfs" for e in mount_entries())


def cmd_status(args) -> int:
    setup_logging("WARNING")
    from .status import run_status

    return run_status(_chosen_library(args), as_json=args.json)


def cmd_publish(args) -> int:
    cfg = _config(args, [args.source])
    if args.keep is not None and not 0 <= args.keep <= 30 * 86400:
        raise BadArgument("--keep", f"{args.keep:g}: give seconds between 0 and 2592000 (30 days)")
    _check_source_urls(cfg)
    setup_logging(cfg.log_level)
    from .publish import publish

    print(publish(cfg, args.keep))
    return 0


def cmd_forget(args) -> int:
    setup_logging("WARNING")
    from .forget import forget

    print(forget(args.library))
    return 0


def cmd_fsck(args) -> int:
    setup_logging("ERROR")  # fsck reports what it finds and does itself
    from .fsck import FsckError, resolve_dirs, run_fsck

    state_dir = _chosen_library(args)
    if args.repair:  # what a repair creates (a new catalog, a rebuilt index) is private too
        from ..shared import private_state

        try:
            private_state(*resolve_dirs(state_dir, args.cache_dir))
        except FsckError:
            pass  # run_fsck says why it cannot run

    return run_fsck(state_dir, args.cache_dir, repair=args.repair)


def cmd_demo(args) -> int:
    setup_logging("INFO")
    from ..shared import Progress
    from .demo import make_library

    if os.path.isdir(args.dir) and os.listdir(args.dir):
        raise BadArgument("DIR", f"{args.dir} is not empty: the demo writes a library of its own into an empty or "
                                 "new folder (nothing of yours is overwritten)")
    bar = Progress("writing demo library", args.tracks)
    made = make_library(args.dir, args.tracks, big_file_mb=args.big_file_mb, progress=lambda done, total: bar.advance())
    bar.finish()
    print(f"wrote {len(made)} tracks to {args.dir}")
    return 0


def cmd_failpoints(args) -> int:
    from ..failpoints import declared
    from ..shared import points  # noqa: F401 - declares every point

    for name, description in sorted(declared().items()):
        print(f"{name:36} {description}")
    return 0


EX_NOT_RUNNING = 3


class DaemonNotRunning(MusicFSError):
    """The library's daemon does not answer on its socket (exit 3, as `status`)."""


def _ask_daemon(state_dir: str, request: dict) -> dict:
    """The daemon's answer to a pin request; DaemonNotRunning, or MusicFSError with its refusal."""
    from ..shared import recorded_mountpoint
    from .status import query_daemon

    answer = query_daemon(state_dir, timeout=15.0, request=request)
    if answer is None:
        raise DaemonNotRunning(f"the daemon of {recorded_mountpoint(state_dir) or state_dir} is not running "
                               f"(start it with `musicfs mount`)")
    if not answer.get("ok"):
        raise MusicFSError(str(answer.get("error") or "the daemon refused the request"))
    return answer


def _tree_paths(paths: list[str]) -> dict[str, list[str]]:
    """state folder -> the tree paths (relative to its mountpoint) of `paths`; BadArgument for a path that is
    not inside any mount."""
    from ..shared import LibraryNotFound, library_for_path, recorded_mountpoint

    out: dict[str, list[str]] = {}
    for path in paths:
        try:
            state = library_for_path(path)
        except LibraryNotFound as exc:
            raise BadArgument(path, f"not inside a musicfs mount ({exc})") from exc
        mountpoint = recorded_mountpoint(state)
        rel = None
        for here in (os.path.abspath(path), os.path.realpath(path)):
            for point in (os.path.abspath(mountpoint), os.path.realpath(mountpoint)):
                if here == point or here.startswith(point.rstrip("/") + "/"):
                    rel = os.path.relpath(here, point)
                    break
            if rel is not None:
                break
        out.setdefault(state, []).append("" if rel in (None, ".") else rel)
    return out


def cmd_pin(args) -> int:
    setup_logging("WARNING")
    op = args.command
    for state, rels in _tree_paths(args.paths).items():
        answer = _ask_daemon(state, {"op": op, "paths": rels})
        shown = {p["path"]: p for p in answer.get("pins", [])}
        for rel in rels:
            if op == "pin":
                pin = shown.get(rel or "/") or shown.get(rel)
                what = (f"{pin['tracks']} tracks, {human_size(pin['bytes'])}, {pin['state']}" if pin else "pinned")
                print(f"pinned {rel or '/'} ({what})")
            else:
                print(f"unpinned {rel or '/'}")
    return 0


def cmd_pins(args) -> int:
    setup_logging("WARNING")
    from ..shared import find_library

    state = _chosen_library(args) or find_library()
    pins = _ask_daemon(state, {"op": "pins"}).get("pins", [])
    if args.json:
        print(json.dumps(pins, ensure_ascii=False, indent=2))
        return 0
    if not pins:
        print("no pins")
    for pin in pins:
        print(f"{pin['path']}  {pin['tracks']} tracks  {human_size(pin['cached_bytes'])}/{human_size(pin['bytes'])}"
              f"  {pin['state']}")
    return 0


COMMANDS = {"mount": cmd_mount, "scan": cmd_scan, "search": cmd_search, "status": cmd_status, "demo": cmd_demo,
            "failpoints": cmd_failpoints, "fsck": cmd_fsck, "forget": cmd_forget, "publish": cmd_publish, "pin": cmd_pin, "unpin": cmd_pin, "pins": cmd_pins}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:  # `musicfs` alone: the commands, as a usage error
        parser.print_help(sys.stderr)
        return EX_USAGE
    try:
        code = COMMANDS[args.command](args)
        sys.stdout.flush()  # a reader that went away (`| head`) shows here, not in the interpreter's exit
        return code
    except BrokenPipeError:
        return _stdout_gone()
    except BadArgument as exc:
        print(f"musicfs: {redact(str(exc))}", file=sys.stderr)
        return EX_USAGE
    except ConfigError as exc:
        print(f"musicfs: {redact(str(exc))}", file=sys.stderr)
        return EX_CONFIG
    except DaemonNotRunning as exc:
        print(f"musicfs: {redact(str(exc))}", file=sys.stderr)
        return EX_NOT_RUNNING
    except MusicFSError as exc:
        print(f"musicfs: {redact(str(exc))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        flush_summaries()  # counts of suppressed log lines are never lost


def _stdout_gone() -> int:
    """Whoever read our output stopped (`musicfs search x | head -3`): exit quietly, as `yes | head` does.

    stdout is pointed at /dev/null so that the interpreter's final flush of what is still buffered does not
    fail again (the recipe of Python's signal documentation, "Note on SIGPIPE").
    """
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return EX_BROKEN_PIPE


if __name__ == "__main__":
    sys.exit(main())
