"""``python -m capture``: read the configured sources and push frames to the detector(s).

Start-up failures (bad config, a source that cannot be opened) print one line and exit 2. Exits 0
after every source has ended and ``[capture] eof_linger_s`` has passed, or within ~1 s of SIGTERM.
"""

from __future__ import annotations

import os
import sys
import threading
from contextlib import ExitStack
from typing import NoReturn

import click

from bus import codec, sockets
from bus.cli import config_option, fail
from bus.config import ConfigError, load
from bus.runtime import Stats, install_stop, setup_logging, single_threaded_opencv
from capture.sources import Source, SourceError, open_source
from capture.worker import printer, run, socket_sender


def _fail(message: str) -> NoReturn:
    fail("capture", message)


@click.command()
@config_option
@click.option("--source", default=None, help="Camera index, video file, image, folder or URL (replaces the sources).")
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
        security = sockets.security(cfg.bus, "capture", peer="detector", serves=False)
    except ConfigError as e:
        _fail(str(e))
    log = setup_logging("capture")
    single_threaded_opencv()
    with ExitStack() as stack:
        opened: list[Source] = []
        for sc in cfg.capture.sources:
            try:
                src = open_source(sc, (cfg.capture.reconnect_s, cfg.capture.reconnect_max_s))
            except SourceError as e:
                _fail(f"cannot open source {sc.id!r}: {e}")
            stack.callback(src.close)
            opened.append(src)
        stats = Stats(log, cfg.bus.stats_interval_s)
        if print_only:
            lock = threading.Lock()
            run(cfg, opened, [printer(sys.stdout, lock) for _ in opened], stop, stats, linger_s=0, shm=False)
            return
        ctx = sockets.Context()
        stack.callback(ctx.term)
        senders = []
        for _ in opened:
            sock = sockets.push(ctx, cfg.detector.endpoints, cfg.bus.hwm, cfg.bus.send_timeout_ms, security)
            stack.callback(sock.close)  # the socket's short linger lets a queued eos out
            senders.append(socket_sender(sock, cfg.bus.jpeg_quality))
        log.info("%d source(s) -> %s (run %s)", len(opened), ", ".join(cfg.detector.endpoints), codec.RUN or "-")
        run(cfg, opened, senders, stop, stats, run_id=codec.RUN)


if __name__ == "__main__":
    main()
