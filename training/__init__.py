"""Offline training: datasets, models, training, evaluation and int8 TFLite export (TensorFlow/Keras)."""
