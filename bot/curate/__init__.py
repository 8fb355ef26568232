"""/lora curate (prune tags with buttons), browse, trigger, replace, export."""
