"""Encoders, attention fusion, Grad-CAM and model bundles."""
