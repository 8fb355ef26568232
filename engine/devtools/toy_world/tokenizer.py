"""A CLIP tokenizer for the toy world, in the files real SD checkpoints ship (vocab.json + merges.txt).

Like CLIP's, its vocabulary is byte-level BPE: the 256 bytes, the 256 bytes ending a word, the merges,
then the two special tokens. The merges are learned (as BPE learns them: the most frequent pair first)
over the world's words only, so every word of a world tag is one token, while any other word — a trigger
such as `xingbar`, `masterpiece`, `park` — is spelled in several pieces, as real CLIP does with words it
has not seen.
"""
from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

from engine.devtools.tiny_models import BOS_TOKEN, EOS_TOKEN, _bytes_to_unicode, write_clip_tokenizer
from engine.devtools.toy_world.world import all_tags


def world_words() -> list[str]:
    words: list[str] = []
    for tag in all_tags():
        for word in re.findall(r"[a-z]+|[0-9]", tag.lower()):
            if word not in words:
                words.append(word)
    return words


def learn_merges(words: list[str]) -> list[tuple[str, str]]:
    """BPE merges, most frequent pair first, until every word is a single token. Words are split as
    CLIP splits them: runs of letters, and each digit on its own (`1boy` is `1` + `boy`)."""
    spelled = {word: [*word[:-1], word[-1] + "</w>"] for word in words}
    merges: list[tuple[str, str]] = []
    while any(len(pieces) > 1 for pieces in spelled.values()):
        pairs: Counter[tuple[str, str]] = Counter()
        for pieces in spelled.values():
            pairs.update(zip(pieces, pieces[1:], strict=False))
        best = min(pairs, key=lambda pair: (-pairs[pair], pair))   # ties by the pair itself: deterministic
        merges.append(best)
        for word, pieces in spelled.items():
            merged, i = [], 0
            while i < len(pieces):
                if i + 1 < len(pieces) and (pieces[i], pieces[i + 1]) == best:
                    merged.append(pieces[i] + pieces[i + 1])
                    i += 2
                else:
                    merged.append(pieces[i])
                    i += 1
            spelled[word] = merged
    return merges


def write_toy_tokenizer(folder: Path) -> int:
    """Writes the tokenizer files into `folder`; returns the vocabulary size."""
    chars = _bytes_to_unicode()
    merges = learn_merges(world_words())
    tokens = [*chars, *(c + "</w>" for c in chars)]
    tokens += [a + b for a, b in merges if a + b not in tokens]
    tokens += [BOS_TOKEN, EOS_TOKEN]
    vocab = {token: i for i, token in enumerate(tokens)}
    write_clip_tokenizer(folder, vocab, merges)
    return len(vocab)
