"""Classifier stage: face crops in, emotion label and probabilities per face out (int8 TFLite via LiteRT)."""
