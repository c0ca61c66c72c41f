"""Readers for radiographs, CT series and clinical text."""
