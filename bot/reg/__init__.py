"""/lora reg: regularization pictures of the project's class, rendered by the base model."""
