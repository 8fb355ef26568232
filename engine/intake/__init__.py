"""Image intake: member uploads (pictures and zips of pictures) → validated, normalised, de-duplicated
PNGs in a project's dataset/ or reg/ folder, with a reason for every file turned away."""
from engine.intake.report import Accepted, IncomingFile, IntakeReport, Rejected
from engine.intake.service import add_images

__all__ = ["Accepted", "IncomingFile", "IntakeReport", "Rejected", "add_images"]
