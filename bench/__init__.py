"""Side-by-side timing of protonet and PyTorch CPU (``python -m bench``)."""
