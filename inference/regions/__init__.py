"""Per-hip regions: locate each hip joint, crop it and bring it to a canonical side."""
