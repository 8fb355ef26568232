"""Which tags are probably the character: the pruning suggestions of DESIGN §1 step 4.

The recipe removes the tags that describe the character's fixed traits (hair, eyes, body…) so that
the trigger word absorbs them. A tag is suggested when it is in at least `min_share` of the pictures
AND it names a trait. Traits are recognised by patterns over the tag text (as the tagger writes it,
underscores already spaces), not by an exhaustive list, so unseen colours and styles still match:
`<colour> hair`, `<colour> eyes`, `<animal> ears`, `<anything> horns`…

What is deliberately NOT a trait:
- clothing and accessories, even on the hair or face (`hair ribbon`, `hairclip`, `glasses`, `hat`);
- background, pose, camera, expression and states (`white background`, `upper body`, `smile`,
  `closed eyes`, `wet hair`, `floating hair`, `hand in own hair`);
- people-count tags (`1boy`, `1girl`, `2boys`, `solo`): they say how many people are in the picture,
  not who they are, and `1boy`/`1girl` is often the class token the reg images are tagged with too.
  `male focus` is a trait (gender), and so are age (`mature male`) and vibe (`manly`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from engine.tagging.analyze import TagCount


@dataclass(frozen=True)
class Suggestion:
    tag: str        # as it appears in the captions
    count: int      # pictures whose caption has it
    share: float    # count / pictures
    category: str   # hair, eyes, skin, body, face, gender, age, build, species
    reason: str     # one line for the member


CATEGORIES = ("hair", "eyes", "skin", "body", "face", "gender", "age", "build", "species")


def _alt(words: str) -> str:
    """'a b|c d' → a regex alternation; longest first so 'light brown' wins over 'light'."""
    items = sorted({w.strip() for w in words.split("|") if w.strip()}, key=len, reverse=True)
    return "(?:" + "|".join(re.escape(w).replace(r"\ ", r"[ -]") for w in items) + ")"


_COLOUR = _alt(
    "black|white|grey|gray|silver|blonde|blond|platinum blonde|strawberry blonde|brown|light brown|dark brown|"
    "red|dark red|auburn|ginger|pink|light pink|purple|light purple|dark purple|violet|lavender|blue|light blue|"
    "dark blue|navy blue|aqua|teal|cyan|green|light green|dark green|yellow|orange|gold|golden|amber|copper|"
    "magenta|maroon|crimson|multicolored|multicoloured|two-tone|gradient|streaked|rainbow|colored|coloured|"
    "split-color|hazel"
)
_HAIR_LENGTH = _alt("short|medium|long|very long|absurdly long|very short|shoulder-length")
_HAIR_STYLE = _alt(
    "straight|wavy|curly|spiked|spiky|messy|slicked back|swept back|braided|drill|ringlet|flipped|"
    "antenna|asymmetrical|thick|fluffy|big|layered|hime|bowl cut|parted|center-parted|side-swept"
)
_HAIR_WORD = _alt(
    "ponytail|twintails|braid|braids|bangs|sidelocks|ahoge|hair bun|single hair bun|double bun|pigtails|ringlets|"
    "bob cut|hime cut|buzz cut|crew cut|pixie cut|undercut|mohawk|bald|afro|dreadlocks|pompadour|quiff|"
    "cowlick|mullet|topknot|chignon|two side up|one side up|drill hair|hair intakes|hair flaps|hair rings|"
    "hair between eyes|hair over one eye|hair over eyes|hair slicked back|hair pulled back|widow's peak|"
    "receding hairline"
)
_EYE_TRAIT = _alt(
    "heterochromia|slit pupils|ringed eyes|tsurime|tareme|sanpaku|colored sclera|black sclera|"
    "symbol-shaped pupils"
)
_SKIN = _alt("dark|pale|tan|tanned|fair|olive|light|very dark|colored|coloured")
_ANIMAL = _alt(
    "animal|cat|dog|fox|wolf|rabbit|bunny|horse|cow|bear|mouse|tiger|lion|leopard|raccoon|squirrel|sheep|"
    "goat|deer|bat|monkey|panda|hamster|ferret|lizard|dragon|demon|devil|oni|angel|bird|feathered|fairy|"
    "insect|butterfly|fish|shark|snake|horse|pig|otter|weasel|jackal|hyena|elk|reindeer|dinosaur|"
    "pointy|long pointy|elf|extra|furry|fluffy|big|multiple|single|curled|short|long|head|"
    "low|black|white|brown|red|blue|grey|gray|orange|purple|pink|green|yellow|golden|striped"
)

# (category, full-match pattern), tried in order: face before hair so 'facial hair' is a face trait,
# body before hair so 'chest hair' is a body trait.
_RULES: list[tuple[str, str]] = [
    ("gender", r"(?:male|female) focus|androgynous|otoko no ko|tomboy|genderswap"),
    ("age", r"mature (?:male|female)|old (?:man|woman)|old|elderly|middle-aged|young|child|teenage|"
            r"wrinkled skin|wrinkles"),
    ("build", r"manly|bishounen|bara|tough guy"),
    ("face", r"(?:(?:short|long|thick|full|thin|white|grey|gray|black|brown|blonde|red) )?"
             r"(?:beard|mustache|moustache|goatee)|facial hair|stubble|sideburns|freckles|"
             r"moles?|mole (?:under|on|above|below) (?:the )?[a-z ]+|beauty mark|"
             r"scars?|scar (?:on|across|over) [a-z ]+|(?:facial|forehead) (?:mark|tattoo)|whisker markings|"
             r"eyelashes|(?:long|colored|coloured) eyelashes|(?:thick|short) eyebrows"),
    ("body", r"muscular(?: (?:male|female|arms|legs))?|(?:large |small |huge )?pectorals|abs|toned(?: male| female)?|"
             r"biceps|thick (?:arms|thighs|neck)|wide hips|narrow waist|broad shoulders|"
             r"curvy|plump|chubby|fat|fat (?:man|woman)|skinny|slim|petite|"
             r"(?:very )?tall(?: (?:male|female|man|woman))?|short stature|giant|giantess|"
             r"flat chest|(?:small|medium|large|huge|gigantic|big) breasts|"
             r"(?:body|chest|arm|leg|navel|stomach) hair|hairy|veins|"
             r"(?:[a-z]+ )?tattoo|tanlines"),
    ("eyes", rf"(?:(?:very|light|dark|pale|bright) )?{_COLOUR}(?: and {_COLOUR})? eyes|"
             rf"{_COLOUR} pupils|{_EYE_TRAIT}"),
    ("skin", rf"(?:{_SKIN}|{_COLOUR})[ -]skin|dark-skinned(?: (?:male|female))?|tan|tanned|sun tan"),
    ("hair", rf"(?:(?:{_COLOUR}|{_HAIR_LENGTH}|{_HAIR_STYLE}|very|light|dark|pale)[ -]){{1,3}}hair|"
             rf"(?:(?:high|low|side|short|long|folded|single|twin|french|crown|side|tied|braided|"
             rf"multiple|sideways|blunt|swept|parted|crossed|asymmetrical|choppy|diagonal|arched) ){{0,2}}"
             rf"{_HAIR_WORD}|{_COLOUR} (?:streaks?|tips)|colored (?:inner hair|tips)"),
    ("species", rf"(?:{_ANIMAL} )?(?:ears|horns?|wings?|tails?)|kemonomimi mode|"
                rf"(?:{_ANIMAL} )?fur|furry(?: male| female)?|animal nose|snout|whiskers|fangs?|"
                r"sharp teeth|scales|halo|elf|dark elf|demon (?:girl|boy)|robot|android|cyborg|"
                r"mechanical (?:arm|arms|parts|legs?)|prosthetic (?:arm|leg)|antennae|"
                r"(?:monster|cat|fox|dog|wolf|slime) (?:girl|boy)"),
]
_COMPILED = [(category, re.compile(rf"(?:{pattern})")) for category, pattern in _RULES]
# Never traits even when a pattern above would match: costumes and props that look like body parts.
_NOT_TRAIT = re.compile(r"fake .+|mechanical (?:ears|horns?|wings?|tails?)")


def _key(tag: str) -> str:
    """Tags compare in lower case, `_` as a space (tags longer than 3 characters), spaces collapsed."""
    tag = tag.strip().lower()
    if len(tag) > 3:
        tag = tag.replace("_", " ")
    return " ".join(tag.split())


def trait_category(tag: str) -> str | None:
    """The trait category a tag names (hair, eyes…), or None when it is not a fixed trait."""
    key = _key(tag)
    if not key or _NOT_TRAIT.fullmatch(key):
        return None
    for category, pattern in _COMPILED:
        if pattern.fullmatch(key):
            return category
    return None


def suggest_traits(stats: list[TagCount], *, min_share: float = 0.5) -> list[Suggestion]:
    """Tags in at least `min_share` of the pictures that name a character trait, most common first
    (ties: more pictures, then the tag). `stats` is `engine.tagging.analyze.analyze(...)`'s list."""
    if not 0.0 < min_share <= 1.0:
        raise ValueError(f"min_share must be in (0, 1], not {min_share}")
    found: list[Suggestion] = []
    for stat in stats:
        if stat.share + 1e-9 < min_share:
            continue
        category = trait_category(stat.tag)
        if category is None:
            continue
        total = round(stat.count / stat.share) if stat.share > 0 else stat.count
        reason = (f"{category} tag in {stat.count} of {total} pictures ({stat.share:.0%}): probably the "
                  "character — prune it so the trigger word learns it?")
        found.append(Suggestion(stat.tag, stat.count, stat.share, category, reason))
    found.sort(key=lambda s: (-s.share, -s.count, s.tag))
    return found
