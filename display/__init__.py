"""Display stage: the pipeline's sink. Annotated frames to a window, a local web page, a video file
and a JSON-lines events file; accounts for every frame each source read."""
