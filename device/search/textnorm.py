"""Text normalisation shared by the store's full-text index and the search query parser.

The FTS5 table uses the ``unicode61 remove_diacritics 2`` tokenizer; ``words()`` splits text the same
way (letters and digits, lower case, accents removed, ``_`` is a separator) so that a word we look up
in the vocabulary is the token FTS5 stored.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping

# Letters and digits; "_" is a separator for unicode61, so it is excluded from \w here.
_WORD = re.compile(r"[^\W_]+")

# Function words that carry no meaning in a caption search. Colours, numbers and nouns stay searchable:
# "two", "red", "man" are real queries.
STOP_WORDS = frozenset(
    """
    a an the and or but nor not no of on in at to into onto from by for with without within about
    above below over under up down out off near next through across along around behind beside
    between toward towards while is are was were be been being am has have had do does did its it
    this that these those there here their them they he she his her him we us our you your i me my
    as so than then too very can could will would should may might must some any each all just only
    what which who whom whose when where why how
    """.split()  # noqa: SIM905 - a word list reads better as text
)

_ALPHABET = "abcdefghijklmnopqrstuvwxyz"


def fold(text: str) -> str:
    """Lower-case and strip diacritics, as FTS5's ``remove_diacritics 2`` does."""
    decomposed = unicodedata.normalize("NFKD", text.lower())
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch))


def words(text: str) -> list[str]:
    """The tokens FTS5 would index for ``text``, in order."""
    return _WORD.findall(fold(text))


def content_words(text: str, limit: int = 16) -> list[str]:
    """Unique non-stop-words of a query, in order, at most ``limit`` (a 10 kB paste stays cheap)."""
    seen: dict[str, None] = {}
    for w in words(text):
        if w not in STOP_WORDS and w not in seen:
            seen[w] = None
            if len(seen) >= limit:
                break
    return list(seen)


def edits1(word: str) -> set[str]:
    """All strings one deletion, transposition, substitution or insertion away from ``word``."""
    splits = [(word[:i], word[i:]) for i in range(len(word) + 1)]
    deletes = [a + b[1:] for a, b in splits if b]
    transposes = [a + b[1] + b[0] + b[2:] for a, b in splits if len(b) > 1]
    replaces = [a + c + b[1:] for a, b in splits if b for c in _ALPHABET]
    inserts = [a + c + b for a, b in splits for c in _ALPHABET]
    return set(deletes + transposes + replaces + inserts) - {word}


def inflections(word: str) -> set[str]:
    """Singular/plural forms worth trying for a query word ("dog" <-> "dogs", "puppy" <-> "puppies")."""
    forms = {word, word + "s", word + "es"}
    if word.endswith("ies") and len(word) > 4:
        forms.add(word[:-3] + "y")
    if word.endswith("es") and len(word) > 3:
        forms.add(word[:-2])
    if word.endswith("s") and len(word) > 2:
        forms.add(word[:-1])
    if word.endswith("y") and len(word) > 2:
        forms.add(word[:-1] + "ies")
    return forms


def correct(word: str, vocabulary: Mapping[str, int]) -> str | None:
    """The most frequent vocabulary word within one edit of ``word``; None if there is none.

    Short words (<= 2 letters) are not corrected: one edit away from "ox" is half the dictionary.
    """
    if len(word) <= 2 or not word.isalpha():
        return None
    best: tuple[int, str] | None = None
    for cand in edits1(word):
        freq = vocabulary.get(cand)
        if freq and (best is None or (freq, _neg(cand)) > (best[0], _neg(best[1]))):
            best = (freq, cand)
    return best[1] if best else None


def _neg(word: str) -> tuple[int, ...]:
    # Tie-break equal frequencies alphabetically (deterministic), inside a max() comparison.
    return tuple(-ord(c) for c in word)


def count_words(texts: Iterable[str], into: dict[str, int]) -> None:
    """Add document frequencies of the words of ``texts`` (one text = one document) to ``into``."""
    for text in texts:
        for w in set(words(text or "")):
            into[w] = into.get(w, 0) + 1
