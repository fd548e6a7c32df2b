"""Tiered checkpoints: a local copy first, an S3 copy in the background."""
