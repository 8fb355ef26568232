"""WD14 tagging: ONNX tagger → one comma-separated caption per image (DESIGN §3 "WD14 tagger").

    preprocess  image file → the tagger's input array (kohya's recipe)
    model       find/download the model, read selected_tags.csv, open the onnxruntime session
    tags        probabilities → caption (thresholds, blacklist, underscores, order, trigger)
    run         a folder of images → captions, batched, `.txt` beside each image
    analyze     tag frequencies over a set of captions

This package stays light to import (no onnxruntime or huggingface_hub at import time), so that code
which only needs `analyze` or `TaggerError` does not load the runtime.
"""
from __future__ import annotations


class TaggerError(Exception):
    """A tagging failure the member or server owner can act on; the message says what to do."""
