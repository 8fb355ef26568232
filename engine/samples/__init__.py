"""Checking a LoRA's quality: sample grids (epoch × weight × prompt) and their scores."""
