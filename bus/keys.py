"""``python -m bus.keys generate DIR [--name NAME ...]``: CURVE key pairs for ``[bus] curve = true``.

Writes, per name, ``DIR/NAME.key`` (public, 0644) and ``DIR/NAME.key_secret`` (public + secret,
mode 0600) in pyzmq's ``zmq.auth`` certificate format, and copies the public key into ``DIR/allowed/``,
the folder of client keys every CURVE server accepts (``--no-allow`` skips that). Without ``--name``
it makes one pair per stage: capture, detector, classifier, display. The folders it creates are
mode 0700 whatever the umask (who may add a key to ``allowed/`` decides who may connect).

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
    written: list[Path] = []
    old = os.umask(0o077)  # folders 0700 and the secret files 0600, not even readable for a moment
    try:
        _mkdir(keys_dir)
        for n in names:
            public, secret = zmq.auth.create_certificates(str(keys_dir), n)
            os.chmod(secret, 0o600)
            os.chmod(public, 0o644)
            written += [Path(public), Path(secret)]
            if allow:
                _mkdir(keys_dir / ALLOWED)
                written.append(Path(shutil.copy(public, keys_dir / ALLOWED / f"{n}.key")))
    finally:
        os.umask(old)
    return written


def _mkdir(path: Path) -> None:
    """Create ``path`` (and its parents) mode 0700; a folder that was there already keeps its mode."""
    missing = [p for p in (path, *path.parents) if not p.exists()]
    path.mkdir(parents=True, exist_ok=True)
    for p in missing:
        os.chmod(p, 0o700)  # mkdir's mode goes through the umask


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
