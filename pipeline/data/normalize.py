"""Written numbers -> the words people say, digit by digit for codes and phone numbers.

The label of a dictated number must be what was actually said, so the reading is explicit
(`Reading`: "zero" or "oh", "double three", pauses between groups, French pairs) and every
pattern the normalizer does not know raises `NormalizationError` naming it: no silent guess.
Leading zeros are kept ("045120" -> "zero four five one two zero").

Label style follows Kyutai's STT output: sentence case and punctuation, with punctuation glued
to the word before it. A pause between digit groups is written as a comma after the group's last
word ("five five five, one two three"), which is also what makes both TTS engines pause there.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from num2words import num2words

from ..errors import StageError

LANGS = ("en", "fr")
DIGITS = {
    "en": ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"],
    "fr": ["zéro", "un", "deux", "trois", "quatre", "cinq", "six", "sept", "huit", "neuf"],
}
WORDS = {  # spoken forms of the symbols that appear in written numbers
    "en": {"plus": "plus", "ext": "extension", "#": "number", "point": "point",
           2: "double", 3: "triple"},
    "fr": {"plus": "plus", "ext": "poste", "#": "numéro", "point": "virgule"},
}
# Letter names for the TTS engines only; labels keep the capital letter itself.
LETTER_NAMES = {
    "en": dict(zip("ABCDEFGHIJKLMNOPQRSTUVWXYZ", [
        "ay", "bee", "see", "dee", "ee", "eff", "gee", "aitch", "eye", "jay", "kay", "el", "em", "en",
        "oh", "pee", "cue", "ar", "ess", "tee", "you", "vee", "double you", "ex", "why", "zee"])),
    "fr": dict(zip("ABCDEFGHIJKLMNOPQRSTUVWXYZ", [
        "a", "bé", "cé", "dé", "eu", "effe", "gé", "ache", "i", "ji", "ka", "elle", "emme", "enne",
        "o", "pé", "ku", "erre", "esse", "té", "u", "vé", "double vé", "ixe", "i grec", "zède"])),
}
KINDS = ("order", "location", "phone", "code", "digits", "cardinal", "ordinal", "decimal")


class NormalizationError(StageError):
    """A written number the normalizer cannot read; the message names it."""


@dataclass(frozen=True)
class Reading:
    """How a person reads digit strings aloud."""

    zero: str = "zero"          # English: "zero" or "oh"
    doubles: bool = False       # English: "double three", "triple seven"
    group_pauses: bool = True   # a comma (pause) after each written group
    pairs: bool = False         # French: phone digits read in pairs ("zéro six, douze, ...")
    small: str = "value"        # free text: a lone 2-digit number as a "value" (twelve) or "digits"

    def check(self, lang: str) -> None:
        if lang not in LANGS:
            raise NormalizationError(f"language {lang!r} is not supported; use one of {LANGS}")
        if self.small not in ("value", "digits"):
            raise NormalizationError(f"reading small={self.small!r} must be 'value' or 'digits'")
        if self.zero not in ("zero", "oh") or (lang == "fr" and self.zero == "oh"):
            raise NormalizationError(f"reading zero={self.zero!r} is not available in {lang!r}")
        if lang == "fr" and self.doubles:
            raise NormalizationError("'double'/'triple' readings are English only")


@dataclass(frozen=True)
class NumberSpan:
    """Inclusive word indices (into a label word list) that speak one written number."""

    first: int
    last: int
    written: str
    kind: str

    def to_json(self) -> dict:
        return {"first": self.first, "last": self.last, "written": self.written, "kind": self.kind}

    def __getitem__(self, key: str):
        """span["first"] works too: readers may treat spans as the JSON dicts they are on disk."""
        if key not in ("first", "last", "written", "kind"):
            raise KeyError(key)
        return getattr(self, key)


@dataclass
class Spoken:
    """A spoken utterance: label words, what TTS engines should read for each, number spans."""

    words: list[str] = field(default_factory=list)
    tts: list[str] = field(default_factory=list)
    spans: list[NumberSpan] = field(default_factory=list)

    @property
    def text(self) -> str:
        return " ".join(self.words)

    @property
    def tts_text(self) -> str:
        return " ".join(self.tts)


def _digit_word(d: str, lang: str, reading: Reading) -> str:
    return "oh" if d == "0" and lang == "en" and reading.zero == "oh" else DIGITS[lang][int(d)]


def digit_group(digits: str, lang: str, reading: Reading) -> list[str]:
    """Words for one group of digits ("5550" -> five five five zero / double five ...)."""
    if lang == "fr" and reading.pairs and len(digits) <= 2:
        if len(digits) == 2 and digits[0] == "0":
            return [DIGITS["fr"][0], DIGITS["fr"][int(digits[1])]]
        return num2words(int(digits), lang="fr").split()
    words: list[str] = []
    for run in re.finditer(r"(\d)\1*", digits):
        n, d = len(run.group()), run.group(1)
        while n > 0:
            if reading.doubles and n >= 2:
                take = 3 if n == 3 else 2
                words += [WORDS["en"][take], _digit_word(d, lang, reading)]
            else:
                take = 1
                words.append(_digit_word(d, lang, reading))
            n -= take
    return words


_LETTERS_DIGITS = re.compile(r"^([A-Za-z]+)[- ]?(\d[\dO]*)$")
_SEPARATORS = re.compile(r"[\s.\-/]+")


def _groups(body: str, written: str) -> list[str]:
    groups = []
    for part in _SEPARATORS.split(body.strip()):
        if not part:
            continue
        if re.fullmatch(r"\(\d+\)", part):
            part = part[1:-1]
        if not part.isdigit():
            raise NormalizationError(f"cannot read {written!r} as a spoken number: unexpected {part!r}; "
                                     "write digits, groups separated by spaces, dashes or dots, '+', '#' or 'ext.'")
        groups.append(part)
    return groups


def _pairs(group: str) -> list[str]:
    return [group] if len(group) <= 2 else [group[i:i + 2] for i in range(0, len(group), 2)]


def verbalize(written: str, kind: str, lang: str = "en", reading: Reading = Reading(),
              split: tuple[int, ...] = ()) -> tuple[list[str], list[str]]:
    """(label words, TTS words) for one written number of a known kind.

    kinds: order/location/digits (a digit code), phone (groups, +country code, extension),
    code (letters then digits, "AB45"), cardinal/ordinal/decimal (values, read with num2words).
    `split` gives spoken group sizes for a number written as one block ("1296803", (3, 4)).
    """
    reading.check(lang)
    w = WORDS[lang]
    if kind in ("cardinal", "ordinal"):
        m = re.fullmatch(r"(\d+)(st|nd|rd|th|er|e|ème)?", written.replace(",", "") if lang == "en" else written)
        if not m or (kind == "cardinal") != (m.group(2) is None):
            raise NormalizationError(f"cannot read {written!r} as a {kind}")
        text = num2words(int(m.group(1)), lang=lang, to=kind)
        words = text.replace(",", "").split()
        return words, words
    if kind == "decimal":
        sep = "," if lang == "fr" else "."
        m = re.fullmatch(rf"(\d+)\{sep}(\d+)", written)
        if not m:
            raise NormalizationError(f"cannot read {written!r} as a decimal number")
        # Digits after the point are read one by one, so trailing zeros survive ("1.10").
        words = num2words(int(m.group(1)), lang=lang).replace(",", "").split() + [w["point"]]
        words += [DIGITS[lang][int(d)] for d in m.group(2)]
        return words, words
    if kind == "code":
        m = _LETTERS_DIGITS.match(written)
        if not m:
            raise NormalizationError(f"cannot read {written!r} as a code (capital letters then digits, e.g. 'AB45')")
        letters = list(m.group(1).upper())
        # Whisper writes "S7O" for "S seven oh": a capital O among digits is a zero.
        digits = digit_group(m.group(2).replace("O", "0"), lang, reading)
        return letters + digits, [LETTER_NAMES[lang][c] for c in letters] + digits
    if kind not in KINDS:
        raise NormalizationError(f"unknown number kind {kind!r}; use one of {KINDS}")

    body, words, groups_words = written.strip(), [], []
    if body.startswith("#"):
        words.append(w["#"])
        body = body[1:].lstrip()
    ext = re.search(r"\s*(?:ext\.?|extension|x|poste)\s*(\d+)$", body, flags=re.IGNORECASE)
    if ext:
        body = body[:ext.start()]
    if body.startswith("+"):
        cc = re.match(r"\+(\d{1,3})(?=[\s.\-(]|$)", body)
        if not cc:
            raise NormalizationError(f"cannot read {written!r}: '+' must be followed by a 1-3 digit country code")
        groups_words.append([w["plus"]] + (num2words(int(cc.group(1)), lang="fr").split() if lang == "fr" and reading.pairs
                                           else digit_group(cc.group(1), lang, reading)))
        body = body[cc.end():]
    groups = _groups(body, written)
    if split and len(groups) == 1 and sum(split) == len(groups[0]):
        starts = [sum(split[:i]) for i in range(len(split))]
        groups = [groups[0][a:a + n] for a, n in zip(starts, split)]
    for group in groups:
        if lang == "fr" and reading.pairs and kind == "phone":
            for pair in _pairs(group):
                groups_words.append(digit_group(pair, lang, reading))
        else:
            groups_words.append(digit_group(group, lang, reading))
    if ext:
        groups_words.append([w["ext"]] + digit_group(ext.group(1), lang, Reading(reading.zero, reading.doubles, False)))
    if not groups_words or all(g and g[0] == w["plus"] and len(g) == 1 for g in groups_words):
        raise NormalizationError(f"cannot read {written!r}: no digits")
    for i, group in enumerate(groups_words):
        group = list(group)
        if reading.group_pauses and i < len(groups_words) - 1:
            group[-1] += ","
        words += group
    return words, words


# --- free text (Whisper transcripts, users' transcripts) ----------------------------------------

# A code in free text: AB45, AB-45, S7O (Whisper's O for zero); up to six capitals (ABCD45)
_CODE = r"(?:[A-Za-z]{1,3}|[A-Z]{4,6})-?\d[\dO]*"
_NUMBER = re.compile(
    r"#\s?\d+"                                                     # #1296803
    r"|\+\d{1,3}(?:[\s.\-]?\(?\d+\)?)+(?:\s*(?:ext\.?|x)\s*\d+)?"  # +1 555 123 4567 ext. 42
    r"|\(\d+\)\s?\d+(?:[\s.\-]\d+)*"                               # (555) 123-4567
    rf"|\b{_CODE}\b"                                                # AB45
    r"|\b\d+(?:st|nd|rd|th|er|e|ème)\b"                            # 1st, 2e
    r"|(?<![^\W\d_])\d+(?:[.,]\d+)?(?:[\s.\-]\d+)*(?:\s*(?:ext\.?|x)\s*\d+)?(?![^\W\d_])"
)  # the last: 1296803, 555-123-4567, 3.14 (never digits glued to letters: those are unreadable)


def classify(written: str, lang: str) -> tuple[str, bool]:
    """(kind, guessed) for a number found in free text; guessed means the reading is ambiguous."""
    s = written.strip()
    if s.startswith("#"):
        return "digits", False
    if s.startswith(("+", "(")) or re.search(r"(ext\.?|x)\s*\d+$", s):
        return "phone", False
    if re.fullmatch(_CODE, s):
        return "code", False
    if re.fullmatch(r"\d+(st|nd|rd|th|er|e|ème)", s):
        return "ordinal", False
    if re.fullmatch(r"[1-9]?\d" + (r",\d{1,3}" if lang == "fr" else r"\.\d{1,3}"), s):
        return "decimal", False  # "3.14", "0.5"; longer dotted groups are phone numbers
    if re.search(r"[\s.\-,]", s):
        return "phone", False
    if len(s) >= 3 or s.startswith("0"):
        return "digits", False
    # One or two digits alone: "7" reads the same either way, "12" could be "twelve" or "one two".
    return "cardinal", len(s) == 2


def normalize_text(text: str, lang: str = "en", reading: Reading = Reading(),
                   warnings: list[str] | None = None) -> Spoken:
    """Label words for a written text: numbers verbalized, other words kept with their casing
    and punctuation. Ambiguous readings are appended to `warnings` (or raise if it is None)."""
    reading.check(lang)
    out = Spoken()
    pos = last_start = 0
    for m in _NUMBER.finditer(text):
        _append_plain(out, text[pos:m.start()], lang)
        written = m.group().rstrip(".,")
        kind, guessed = classify(written, lang)
        if guessed:
            message = f"{written!r} in {text!r} could be read as a value or digit by digit; read as {reading.small}"
            if warnings is None:
                raise NormalizationError(message)
            warnings.append(message)
            kind = "digits" if reading.small == "digits" else kind
        words, tts = verbalize(written, kind, lang, reading)
        glue = bool(out.words) and m.start() > 0 and not text[m.start() - 1].isspace()
        between = text[pos:m.start()]
        _append_words(out, words, tts, glue)
        span = NumberSpan(len(out.words) - len(words), len(out.words) - 1, written, kind)
        if out.spans and out.spans[-1].last == span.first - 1 and re.fullmatch(r"[\s,]*", between):
            # "1, 2, 9": Whisper wrote one dictated number as several; keep it one span.
            prev = out.spans.pop()
            span = NumberSpan(prev.first, span.last, text[last_start:m.start() + len(written)], "digits")
        else:
            last_start = m.start()
        out.spans.append(span)
        pos = m.start() + len(written)
    _append_plain(out, text[pos:], lang)
    if any(ch.isdigit() for word in out.words for ch in word):
        raise NormalizationError(f"cannot read every number in {text!r}; write numbers as digits, codes or phone numbers")
    return out


def _append_words(out: Spoken, words: list[str], tts: list[str], glue: bool) -> None:
    if glue and out.words:  # e.g. "(" before a number: keep it on the number's first word
        words = [out.words.pop() + words[0]] + words[1:]
        tts = [out.tts.pop() + " " + tts[0]] + tts[1:]
    out.words += words
    out.tts += tts


def _append_plain(out: Spoken, chunk: str, lang: str) -> None:
    if not chunk:
        return
    tokens = chunk.split()
    if tokens and out.words and not chunk[0].isspace():
        out.words[-1] += tokens[0]  # punctuation right after a number: "three."
        out.tts[-1] += tokens[0]
        tokens = tokens[1:]
    for token in tokens:
        out.words.append(token)
        out.tts.append(token)


def sentence_case(spoken: Spoken) -> Spoken:
    """Capitalize the first word, as Kyutai's model does at sentence starts."""
    if spoken.words and spoken.words[0][:1].islower():
        spoken.words[0] = spoken.words[0][0].upper() + spoken.words[0][1:]
    return spoken


# --- spoken words -> digits (evaluation and agreement checks) ------------------------------------

def _inverse(lang: str) -> dict[tuple[str, ...], str]:
    table = {(word,): str(d) for d, word in enumerate(DIGITS[lang])}
    if lang == "en":
        table[("oh",)] = "0"
        table[("o",)] = "0"
    else:  # French pairs: "douze" -> 12, "soixante et onze" -> 71
        for n in range(10, 100):
            table[tuple(num2words(n, lang="fr").split())] = f"{n:02d}"
    return table


_INVERSE = {lang: _inverse(lang) for lang in LANGS}


def bare(word: str) -> str:
    """A word without surrounding punctuation, lower case."""
    return re.sub(r"^[^\w]+|[^\w]+$", "", word.lower())


def digits_of(words: list[str], lang: str = "en") -> str:
    """The digit sequence spoken by `words` ("double oh seven" -> "007"); digits pass through."""
    table = _INVERSE[lang]
    longest = max(len(k) for k in table)
    # "three-double" (a hyphen glued by Whisper); French pairs like "trente-quatre" stay whole.
    tokens = [part for w in words for part in ([bare(w)] if (bare(w),) in table or "-" not in w
                                                else [bare(x) for x in bare(w).split("-")])]
    out, i = [], 0
    while i < len(tokens):
        tok = tokens[i]
        if tok.isdigit():
            out.append(tok)
            i += 1
            continue
        times = {"double": 2, "triple": 3}.get(tok, 1) if lang == "en" else 1
        j = i + 1 if times > 1 else i
        for n in range(longest, 0, -1):
            key = tuple(tokens[j:j + n])
            if len(key) != n or key not in table:
                continue
            following = tokens[j + 1] if j + 1 < len(tokens) else ""
            if key in (("o",), ("oh",)) and not (out or (following,) in table or following in ("double", "triple")):
                continue  # "O" or "oh" away from other digits is a letter or an interjection, not zero
            out.append(table[key] * times)
            i = j + n
            break
        else:
            i += 1
    return "".join(out)
