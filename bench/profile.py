"""Where a stage's time goes: py-spy samples a running stage, :func:`summarise` sorts the samples.

``py-spy record --idle --format raw`` writes collapsed stacks (``frame;frame;... count``, root
first). Time inside a C extension (MediaPipe's graph, LiteRT's invoke, OpenCV, libzmq) is charged to
the innermost Python frame that called it, so each sample is put in the category of the innermost
frame that matches a rule in :data:`CATEGORIES`. Only the main thread counts (the stage loop; its
share of each category is a share of wall time): MediaPipe runs the graph on its own worker thread
while the main thread waits in ``detect``, and pyzmq keeps an idle garbage-collector thread. Idle
samples (the main thread blocked in ``poll``) are kept: their share is the time the stage waited for
work.
"""

from __future__ import annotations

import collections
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

# (category, substring of "function (file:line)") -- checked from the innermost frame outwards.
CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("zmq poll (waiting for input)", ("poll (zmq/", "poll (bus/sockets.py")),
    ("zmq send/recv", ("zmq/", "send (bus/sockets.py", "recv (bus/sockets.py")),
    ("BGR->RGB + mp.Image (detector)", ("_image (detector/faces.py", "(mediapipe/tasks/python/vision/core/image.py")),
    ("mediapipe detect", ("mediapipe/",)),
    ("litert invoke", ("ai_edge_litert/",)),
    (
        "codec decode",
        ("decode (bus/codec.py", "_frame (bus/codec.py", "_pixels_in (bus/codec.py", "_crops_in (bus/codec.py"),
    ),
    ("codec encode", ("encode (bus/codec.py", "_bytes_view (bus/codec.py", "_pixels_out (bus/codec.py")),
    ("face crops (cv2)", ("bus/preprocess.py",)),
    ("classifier pre/post (numpy)", ("classifier/preprocess.py", "classifier/model.py")),
    ("logging / stats", ("logging/", "bus/runtime.py")),
)
OTHER = "other Python"
MAIN = "_run_module_as_main"  # the root frame of the main thread of ``python -m <stage>``
LINE = re.compile(r"^(?P<stack>.*)\s(?P<count>\d+)$")


def pyspy() -> str | None:
    """The py-spy executable next to this interpreter, or on PATH."""
    here = Path(sys.executable).with_name("py-spy")
    return str(here) if here.is_file() else shutil.which("py-spy")


def start(pid: int, seconds: float, out: Path, rate: int = 100) -> subprocess.Popen[bytes]:
    """Start sampling ``pid`` for ``seconds`` into ``out`` (collapsed stacks) in the background."""
    exe = pyspy()
    if exe is None:
        raise FileNotFoundError("py-spy is not installed (pip install py-spy)")
    cmd = [exe, "record", "--pid", str(pid), "--duration", str(max(1, round(seconds))), "--rate", str(rate)]
    cmd += ["--idle", "--format", "raw", "--output", str(out)]
    with out.with_suffix(".log").open("wb") as err:
        return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, stdin=subprocess.DEVNULL)


def category(stack: list[str]) -> str:
    for frame in reversed(stack):
        for name, needles in CATEGORIES:
            if any(n in frame for n in needles):
                return name
    return OTHER


def summarise(collapsed: str, top: int = 8) -> dict[str, Any]:
    """Collapsed stacks -> {"samples", "categories": {name: share %}, "top_leaves": [[frame, share %]]}
    over the main thread's samples."""
    cats: collections.Counter[str] = collections.Counter()
    leaves: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.splitlines():
        m = LINE.match(line.strip())
        if not m:
            continue
        stack = [f for f in m["stack"].split(";") if f and not f.startswith(("process ", "thread "))]
        if not stack or not stack[0].startswith(MAIN):
            continue
        n = int(m["count"])
        total += n
        cats[category(stack)] += n
        if stack:
            leaves[stack[-1]] += n

    def share(n: int) -> float:
        return round(100.0 * n / max(1, total), 1)

    return {
        "samples": total,
        "categories": {k: share(v) for k, v in cats.most_common()},
        "top_leaves": [[k, share(v)] for k, v in leaves.most_common(top)],
    }
