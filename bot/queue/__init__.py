"""/lora queue, cancel, check: the jobs, and a system check of the GPU box."""
