"""Offline runs of the whole pipeline on files, to reports (``python -m analyze VIDEO``).

- :mod:`analyze.pipeline`: starts capture, detector and classifier on the video through
  :mod:`emostream.launch` and plays the display's part in-process, with :mod:`display.worker` as a
  library (ledger, tracking, smoothing) and :mod:`display.sinks` for the annotated video;
- :mod:`analyze.report`: the collected events records -> per-frame and per-track tables, a summary
  and the emotion timeline plot.

The display stage stays the sink of a live pipeline; nothing in ``display/`` imports this package.
"""
