"""``python -m capture``: read the configured sources and push frames to the detector(s).

Start-up failures (bad config, a source that cannot be opened) print one line and exit 2. Exits 0
after every source has ended and ``[capture] eof_linger_s`` has passed, or within ~1 s of SIGTERM.
"""

from __future__ import annotations

import os
import sys
import threading
from contextlib import ExitStack

import click

from bus import codec, sockets
from bus.cli import config_option, fail
from bus.config import ConfigError, load
from bus.runtime import Stats, install_stop, setup_logging, single_threaded_opencv
from capture.sources import Source, SourceError, open_source
from capture.worker import printer, run, socket_sender


@click.command()
@config_option
@click.option("--source", help="Camera index, video file, image, folder or URL (replaces the sources).")
@click.option(
    "--print",
    "print_only",
    is_flag=True,
    help="Send nothing: print one JSON line per frame header and exit at end of file.",
)
def main(config_path: str | None, source: str | None, print_only: bool) -> None:
    """Read frames from cameras, files, folders or streams and push them to the detector."""
    stop = threading.Event()
    install_stop(stop)
    # FFmpeg's own log lines (refused connections, corrupt packets) would interleave with ours;
    # failures are reported and counted by the stage instead.
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    env = dict(os.environ)
    if source is not None:
        env["SOURCE"] = source
    try:
        cfg = load(config_path, env)
    except ConfigError as e:
        fail("capture", str(e))
    # one PUSH per source (each source's thread sends on its own); a missing key: exit 2 here
    plumbing = None if print_only else sockets.StageSockets("capture", cfg, pushes=len(cfg.capture.sources))
    log = setup_logging("capture")
    single_threaded_opencv()
    with ExitStack() as stack:
        opened: list[Source] = []
        for sc in cfg.capture.sources:
            try:
                src = open_source(sc, (cfg.capture.reconnect_s, cfg.capture.reconnect_max_s))
            except SourceError as e:
                fail("capture", f"cannot open source {sc.id!r}: {e}")
            stack.callback(src.close)
            opened.append(src)
        stats = Stats(log, cfg.bus.stats_interval_s)
        if print_only:
            lock = threading.Lock()
            run(cfg, opened, [printer(sys.stdout, lock) for _ in opened], stop, stats, linger_s=0, shm=False)
            return
        assert plumbing is not None
        socks = stack.enter_context(plumbing)  # closed first: the sockets' short linger lets a queued eos out
        senders = [socket_sender(sock, cfg.bus.jpeg_quality) for sock in socks.push]
        log.info("%d source(s) -> %s (run %s)", len(opened), ", ".join(cfg.detector.endpoints), codec.RUN or "-")
        run(cfg, opened, senders, stop, stats, run_id=codec.RUN)


if __name__ == "__main__":
    main()
