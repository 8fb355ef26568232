"""/lora tag (WD14 tagging as a queued job) and /lora tags (the tag list, page by page)."""
