"""Detector stage: frames -> faces (MediaPipe BlazeFace) and classifier-ready face crops."""
