"""/lora train (plan, then Start) and /lora download."""
