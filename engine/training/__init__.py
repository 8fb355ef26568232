"""Training: LoRA injection, the kohya LoRA file format, and the training loop."""
