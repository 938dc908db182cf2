"""Digit -> word normalization: every written form, both languages, every reading option."""

import random

import pytest

from pipeline.data.normalize import (
    NormalizationError, Reading, digits_of, normalize_text, sentence_case, verbalize,
)

R = Reading

# (written, kind, lang, reading, split, expected label words)
FORMS = [
    ("1296803", "order", "en", R(), (), "one two nine six eight zero three"),
    ("1296803", "order", "en", R(), (3, 4), "one two nine, six eight zero three"),
    ("1296803", "order", "en", R(group_pauses=False), (3, 4), "one two nine six eight zero three"),
    ("045120", "location", "en", R(), (), "zero four five one two zero"),
    ("045120", "location", "en", R(zero="oh"), (3, 3), "oh four five, one two oh"),
    ("007", "digits", "en", R(zero="oh", doubles=True), (), "double oh seven"),
    ("5550001", "digits", "en", R(doubles=True), (), "triple five triple zero one"),
    ("77775", "digits", "en", R(doubles=True), (), "double seven double seven five"),
    ("#1296803", "order", "en", R(), (), "number one two nine six eight zero three"),
    ("129-6803", "order", "en", R(), (), "one two nine, six eight zero three"),
    ("555-123-4567", "phone", "en", R(), (), "five five five, one two three, four five six seven"),
    ("555-123-4567", "phone", "en", R(group_pauses=False), (), "five five five one two three four five six seven"),
    ("555.123.4567", "phone", "en", R(), (), "five five five, one two three, four five six seven"),
    ("(555) 123-4567", "phone", "en", R(), (), "five five five, one two three, four five six seven"),
    ("555 123 4567", "phone", "en", R(), (), "five five five, one two three, four five six seven"),
    ("+1 555-123-4567", "phone", "en", R(), (), "plus one, five five five, one two three, four five six seven"),
    ("+1 (208) 555-0100", "phone", "en", R(zero="oh", doubles=True), (),
     "plus one, two oh eight, triple five, oh one double oh"),
    ("555-123-4567 ext. 42", "phone", "en", R(), (),
     "five five five, one two three, four five six seven, extension four two"),
    ("+1 555 123 4567 x105", "phone", "en", R(zero="oh"), (),
     "plus one, five five five, one two three, four five six seven, extension one oh five"),
    ("+44 20 7946 0958", "phone", "en", R(), (), "plus four four, two zero, seven nine four six, zero nine five eight"),
    ("AB45", "code", "en", R(), (), "A B four five"),
    ("XK-2041", "code", "en", R(zero="oh"), (), "X K two oh four one"),
    ("3.14", "decimal", "en", R(), (), "three point one four"),
    ("1.10", "decimal", "en", R(), (), "one point one zero"),
    ("21", "cardinal", "en", R(), (), "twenty-one"),
    ("1st", "ordinal", "en", R(), (), "first"),
    ("06 12 34 56 78", "phone", "fr", R(pairs=True), (), "zéro six, douze, trente-quatre, cinquante-six, soixante-dix-huit"),
    ("06 12 34 56 78", "phone", "fr", R(), (), "zéro six, un deux, trois quatre, cinq six, sept huit"),
    ("+33 6 12 34 56 71", "phone", "fr", R(pairs=True), (),
     "plus trente-trois, six, douze, trente-quatre, cinquante-six, soixante et onze"),
    ("01.23.45.67.80", "phone", "fr", R(pairs=True, group_pauses=False), (),
     "zéro un vingt-trois quarante-cinq soixante-sept quatre-vingts"),
    ("0612345678", "phone", "fr", R(pairs=True), (), "zéro six, douze, trente-quatre, cinquante-six, soixante-dix-huit"),
    ("#4055508", "order", "fr", R(), (3, 4), "numéro quatre zéro cinq, cinq cinq zéro huit"),
    ("045120", "location", "fr", R(), (), "zéro quatre cinq un deux zéro"),
    ("01 23 45 67 89 poste 12", "phone", "fr", R(), (),
     "zéro un, deux trois, quatre cinq, six sept, huit neuf, poste un deux"),
    ("AB45", "code", "fr", R(), (), "A B quatre cinq"),
    ("3,5", "decimal", "fr", R(), (), "trois virgule cinq"),
]


@pytest.mark.parametrize("written, kind, lang, reading, split, expected", FORMS)
def test_every_written_form(written, kind, lang, reading, split, expected):
    words, tts = verbalize(written, kind, lang, reading, split=split)
    assert " ".join(words) == expected
    assert not any(c.isdigit() for w in words + tts for c in w)
    if kind not in ("cardinal", "ordinal", "decimal"):
        # Reading the words back gives the written digits, leading zeros included.
        assert digits_of(words, lang) == "".join(c for c in written if c.isdigit())


def test_letters_are_spelled_for_tts_but_kept_as_capitals_in_labels():
    words, tts = verbalize("WB12", "code", "en")
    assert words[:2] == ["W", "B"] and tts[:2] == ["double you", "bee"]


@pytest.mark.parametrize("written, kind, lang, reading, message", [
    ("12a4", "order", "en", R(), "unexpected '12a4'"),
    ("555_123", "phone", "en", R(), "unexpected"),
    ("+12345 555", "phone", "en", R(), "country code"),
    ("#", "order", "en", R(), "no digits"),
    ("12", "order", "xx", R(), "language 'xx'"),
    ("12", "order", "fr", R(zero="oh"), "not available in 'fr'"),
    ("12", "order", "fr", R(doubles=True), "English only"),
    ("1.2.3", "decimal", "en", R(), "decimal"),
    ("A1", "order", "en", R(), "unexpected 'A1'"),
    ("12", "money", "en", R(), "unknown number kind"),
])
def test_unreadable_patterns_raise_and_name_the_input(written, kind, lang, reading, message):
    with pytest.raises(NormalizationError, match=message):
        verbalize(written, kind, lang, reading)


# Free text as Whisper or a user writes it: (text, expected label text, expected spans (written, kind)).
TEXTS = [
    ("My order number is 1296803.", "My order number is one two nine six eight zero three.", [("1296803", "digits")]),
    ("Call 555-123-4567, please.", "Call five five five, one two three, four five six seven, please.",
     [("555-123-4567", "phone")]),
    ("It is 1, 2, 9.", "It is one, two, nine.", [("1, 2, 9", "digits")]),
    ("Order 129-6803", "Order one two nine, six eight zero three", [("129-6803", "phone")]),
    ("Call +1 555 123 4567 ext. 42 now", "Call plus one, five five five, one two three, four five six seven, "
     "extension four two now", [("+1 555 123 4567 ext. 42", "phone")]),
    ("Code AB-45 and #77.", "Code A B four five and number seven seven.", [("AB-45", "code"), ("#77", "digits")]),
    ("My reference is LD S7O.", "My reference is LD S seven zero.", [("S7O", "code")]),
    # Whisper hears "aisle ZY-3974" as one spelled code; up to six capitals are read letter by letter
    ("It's an IELZY3974.", "It's an I E L Z Y three nine seven four.", [("IELZY3974", "code")]),
    ("The (555) 123-4567 line", "The five five five, one two three, four five six seven line",
     [("(555) 123-4567", "phone")]),
    ("Take 3.5 now", "Take three point five now", [("3.5", "decimal")]),
    ("It's the 3rd time", "It's the third time", [("3rd", "ordinal")]),
    ("No numbers here.", "No numbers here.", []),
    ("Le 06 12 34 56 78.", "Le zéro six, un deux, trois quatre, cinq six, sept huit.", [("06 12 34 56 78", "phone")]),
]


@pytest.mark.parametrize("text, expected, spans", TEXTS)
def test_free_text(text, expected, spans):
    lang = "fr" if text.startswith("Le ") else "en"
    spoken = normalize_text(text, lang)
    assert spoken.text == expected
    assert [(s.written, s.kind) for s in spoken.spans] == spans
    for span in spoken.spans:
        words = spoken.words[span.first:span.last + 1]
        if span.kind not in ("decimal", "ordinal"):
            want = "".join(c for c in span.written.replace("O", "0") if c.isdigit())
            assert digits_of(words, lang) == want


def test_ambiguous_two_digit_number_is_never_a_silent_guess():
    with pytest.raises(NormalizationError, match="'12' .* could be read as a value or digit by digit"):
        normalize_text("I have 12 items")
    warnings = []
    assert normalize_text("I have 12 items", warnings=warnings).text == "I have twelve items"
    assert len(warnings) == 1 and "'12'" in warnings[0]
    assert normalize_text("I have 12 items", reading=R(small="digits"), warnings=[]).text == "I have one two items"
    assert normalize_text("I have 7 items").text == "I have seven items"  # one digit: same either way


def test_digits_glued_to_words_are_an_error_not_a_guess():
    with pytest.raises(NormalizationError, match="cannot read every number"):
        normalize_text("the 5G network's 12abc")


def test_digits_of_reads_spoken_forms():
    assert digits_of("double oh seven, triple five".split()) == "007555"
    assert digits_of("My order is one two nine.".split()) == "129"
    assert digits_of("Code O seven".split()) == "07"
    assert digits_of("Oh, hello there".split()) == ""  # an interjection is not a zero
    assert digits_of("zéro six, douze, soixante et onze".split(), "fr") == "061271"


@pytest.mark.parametrize("lang", ["en", "fr"])
def test_round_trip_on_random_numbers(lang):
    """verbalize -> digits_of gives back the digits for every reading, on many random numbers."""
    rng = random.Random(lang)
    readings = ([R(zero=z, doubles=d, group_pauses=g) for z in ("zero", "oh") for d in (False, True) for g in (False, True)]
                if lang == "en" else [R(pairs=p, group_pauses=g) for p in (False, True) for g in (False, True)])
    for _ in range(300):
        groups = [
            "".join(rng.choice("0123456789") for _ in range(rng.randint(1, 5))) for _ in range(rng.randint(1, 4))]
        written = rng.choice(["-", " ", "."]).join(groups)
        if len("".join(groups)) < 2:
            continue  # a lone "oh" is an interjection to digits_of, by design
        for reading in readings:
            words, _ = verbalize(written, "phone", lang, reading)
            assert digits_of(words, lang) == "".join(groups), (written, reading, words)


def test_sentence_case():
    spoken = normalize_text("one two 3.")
    assert sentence_case(spoken).words[0] == "One"
