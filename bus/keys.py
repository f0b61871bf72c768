"""``python -m bus.keys generate DIR [--name NAME ...]``: CURVE key pairs for ``[bus] curve = true``.

Writes, per name, ``DIR/NAME.key`` (public) and ``DIR/NAME.key_secret`` (public + secret, mode
0600) in pyzmq's ``zmq.auth`` certificate format, and copies the public key into ``DIR/allowed/``,
the folder of client keys every CURVE server accepts (``--no-allow`` skips that). Without ``--name``
it makes one pair per stage: capture, detector, classifier, display.

Across hosts each host needs its own stage's ``.key_secret``, the ``.key`` of the stage it connects
to, and (if it binds) an ``allowed/`` folder with the public keys of the stages that connect to it.
Public keys can be copied freely; a ``.key_secret`` never leaves its host. Existing secret keys are
never overwritten unless ``--force``. Exit 2 with one line on a bad name or an unwritable folder.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path

import click
import zmq
import zmq.auth

from bus.sockets import ALLOWED

STAGES = ("capture", "detector", "classifier", "display")
NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def generate(keys_dir: Path, names: tuple[str, ...], allow: bool = True, force: bool = False) -> list[Path]:
    """Create the key pairs; returns the files written. Raises ValueError / OSError on failure."""
    for n in names:
        if not NAME.match(n) or n.startswith("."):
            raise ValueError(f"bad key name {n!r}: letters, digits, '_', '-', '.' only")
        if not force and (keys_dir / f"{n}.key_secret").exists():
            raise ValueError(f"{keys_dir / (n + '.key_secret')} exists (use --force to replace it)")
    keys_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for n in names:
        old = os.umask(0o077)  # the secret file is never readable by others, not even for a moment
        try:
            public, secret = zmq.auth.create_certificates(str(keys_dir), n)
        finally:
            os.umask(old)
        os.chmod(public, 0o644)
        written += [Path(public), Path(secret)]
        if allow:
            (keys_dir / ALLOWED).mkdir(exist_ok=True)
            written.append(Path(shutil.copy(public, keys_dir / ALLOWED / f"{n}.key")))
    return written


@click.group()
def main() -> None:
    """CURVE keys for the bus ([bus] curve = true, keys_dir = DIR)."""


@main.command("generate")
@click.argument("keys_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--name", "names", multiple=True, help="Key pair name (a stage); repeatable. Default: all four stages.")
@click.option("--allow/--no-allow", default=True, show_default=True, help="Also copy the public key into DIR/allowed/.")
@click.option("--force", is_flag=True, help="Replace existing key pairs.")
def generate_command(keys_dir: Path, names: tuple[str, ...], allow: bool, force: bool) -> None:
    """Write NAME.key and NAME.key_secret into KEYS_DIR (and NAME.key into KEYS_DIR/allowed/)."""
    if not zmq.has("curve"):
        click.echo("bus.keys: this libzmq was built without CURVE support", err=True)
        sys.exit(2)
    try:
        written = generate(keys_dir, names or STAGES, allow, force)
    except (ValueError, OSError) as e:
        click.echo(f"bus.keys: {e}", err=True)
        sys.exit(2)
    for path in written:
        click.echo(str(path))


if __name__ == "__main__":
    main()
