"""Capture stage: cameras, files, folders and streams -> frame messages."""
