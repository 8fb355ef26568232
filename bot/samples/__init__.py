"""/lora samples: grids at several LoRA weights, scores and the recommended epoch and weight."""
