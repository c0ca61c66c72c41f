"""Turn DICOM objects and clinical text into per-hip results.

Readers decode radiographs and CT series, ``regions`` locates each hip joint and
crops it, ``model`` contains the encoders, the fusion network, Grad-CAM and model
bundles, and ``pipeline`` runs them for one study.
"""
