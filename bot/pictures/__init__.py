"""/lora upload (attachments, zips, or a form) and "Apps → Add to LoRA project"."""
