"""What goes into intake and what comes out of it: the member's files, and per file either where it was
stored (with what was changed) or why it was turned away."""
from __future__ import annotations

from dataclasses import dataclass, field

from engine.naming import is_hidden


def shown_name(name: str) -> str:
    """A member's file name as reports show it: hidden characters written as \\uXXXX, so a name cannot
    start a forged report line or reverse the text after it."""
    return "".join(f"\\u{ord(ch):04x}" if is_hidden(ch) else ch for ch in name)


@dataclass(frozen=True)
class IncomingFile:
    name: str          # as the member sent it: "IMG_0001.JPG", "set.zip", even "../../x.png"
    data: bytes


@dataclass(frozen=True)
class Accepted:
    name: str          # the member's name for it (shown_name); a zip entry is "set.zip/inner/a.png"
    filename: str      # stored file name inside dataset/ or reg/, e.g. "0007_img_0001.png"
    width: int
    height: int
    notes: tuple[str, ...]   # what was changed, in the member's words: "rotated upright (EXIF)"

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", shown_name(self.name))


@dataclass(frozen=True)
class Rejected:
    name: str          # shown_name
    reason: str        # one sentence: what is wrong and what to do about it

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", shown_name(self.name))


@dataclass
class IntakeReport:
    accepted: list[Accepted] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)

    def summary(self) -> str:
        return f"accepted {len(self.accepted)}, rejected {len(self.rejected)}"


class Refused(Exception):
    """Raised by a check to turn one file away; the text is the member-facing reason."""

    @property
    def reason(self) -> str:
        return str(self.args[0])
