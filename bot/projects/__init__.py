"""/lora new, list, info, delete: a member's own projects."""
