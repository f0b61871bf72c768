"""``python -m emostream``: the ``emostream`` command (:mod:`emostream.cli`)."""

from emostream.cli import main

if __name__ == "__main__":
    main()
