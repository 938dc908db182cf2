"""Seeded prompts a business voice agent hears: order numbers, location codes, phone numbers,
mixed sentences, and plain sentences without numbers (so general behaviour is kept).

Each prompt has its written form (digits, as a person would type it) and one spoken form, with
the reading (zero/oh, doubles, pauses between groups, French pairs) drawn per prompt.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from .normalize import Reading, Spoken, NumberSpan, sentence_case, verbalize

CATEGORIES = ("order", "location", "phone", "mixed", "plain")

TEMPLATES = {
    "en": {
        "order": ["My order number is {order}.", "Order {order}.", "I'm calling about order {order}.",
                  "The order number is {order}.", "It's order {order}, I think.", "Can you look up order {order}?",
                  "{order}.", "Yes, it's {order}.", "My order is {order}, it hasn't arrived yet."],
        "location": ["The location code is {location}.", "Location {location}.", "Our store code is {location}.",
                     "I'm at location {location}.", "{location}.", "The site code is {location}, please."],
        "phone": ["My phone number is {phone}.", "Please call me back at {phone}.", "You can reach me at {phone}.",
                  "{phone}.", "The number is {phone}.", "Call {phone} after lunch.", "It's {phone}."],
        "mixed": ["Order {order} was supposed to go to location {location}.", "My reference is {code}.",
                  "The code is {code}, and my order is {order}.",
                  "I placed order {order} yesterday and nobody called me back at {phone}.",
                  "Can you check whether location {location} has it in stock?", "It's in aisle {code}.",
                  "Hi, this is about order {order}, can you help me?", "Ticket {code}, order {order}.",
                  "Send the invoice for order {order} to the store at location {location}, thanks."],
    },
    "fr": {
        "order": ["Mon numéro de commande est le {order}.", "Commande {order}.", "J'appelle pour la commande {order}.",
                  "C'est la commande {order}.", "{order}."],
        "location": ["Le code du magasin est {location}.", "Site {location}.", "Je suis au magasin {location}.",
                     "{location}."],
        "phone": ["Mon numéro est le {phone}.", "Rappelez-moi au {phone}.", "Vous pouvez me joindre au {phone}.",
                  "{phone}."],
        "mixed": ["La commande {order} devait partir du site {location}.", "Ma référence est {code}.",
                  "J'ai passé la commande {order} et personne ne m'a rappelé au {phone}.",
                  "Le ticket {code} concerne la commande {order}."],
    },
}

PLAIN = {
    "en": [
        "Hello, I'm calling about my recent order.", "I need to change the delivery address.",
        "My account was charged twice last week.", "Can you read that back to me?", "Yes, that's correct.",
        "No, that's not right.", "Could you spell that for me?", "Thank you very much for your help today.",
        "I'd like to speak to someone in billing.", "The package never arrived.", "Can I return it to the store?",
        "What time do you close on Saturday?", "I'm not sure, let me check.", "Sorry, could you repeat that?",
        "Hold on, I'm looking for it.", "I want to cancel my subscription.", "The item was damaged when it arrived.",
        "Is there a store near the train station?", "I'd like a refund, please.", "That's all, thanks.",
        "Can you send me a confirmation email?", "I've been waiting for almost an hour.",
        "The driver left it at the wrong house.", "Do you have it in blue?", "I'll call back tomorrow morning.",
        "My name is Sarah Johnson.", "It's for my mother's birthday.", "I think there's a mistake on the invoice.",
        "Could you transfer me to the manager?", "Great, that works for me.", "Let me find my reading glasses.",
        "We moved to a new apartment last month.", "The tracking page hasn't changed in days.",
        "I ordered the large one, not the small one.", "Please cancel the second item.",
        "Can I pick it up instead?", "Okay, I'll wait for the email.", "How long will the refund take?",
        "Actually, never mind.", "Perfect, thank you so much.",
    ],
    "fr": [
        "Bonjour, j'appelle pour ma commande.", "Je voudrais changer l'adresse de livraison.",
        "Pouvez-vous répéter, s'il vous plaît ?", "Oui, c'est exact.", "Non, ce n'est pas ça.",
        "Merci beaucoup pour votre aide.", "Le colis n'est jamais arrivé.", "Je voudrais être remboursé.",
        "À quelle heure fermez-vous samedi ?", "Un instant, je cherche.", "Je souhaite résilier mon abonnement.",
        "L'article était abîmé.", "Pouvez-vous m'envoyer un courriel de confirmation ?", "C'est tout, merci.",
        "Je rappellerai demain matin.", "Il y a une erreur sur la facture.", "Parfait, merci beaucoup.",
        "Je peux passer le chercher au magasin ?", "J'attends depuis presque une heure.", "D'accord, j'attends.",
    ],
}
_PREFIXES = {"en": ["", "", "", "Hi, ", "Hello, ", "Okay, ", "Yes, ", "Sorry, "], "fr": ["", "", "Bonjour, ", "Oui, ", "Alors, "]}
_LETTERS = "ABCDEFGHJKLMNPRSTUVWXYZ"  # no I or O: people avoid them in codes next to digits


@dataclass
class Prompt:
    lang: str
    category: str
    written: str
    spoken: Spoken
    reading: Reading


def _digits(rng: random.Random, n: int, first: str = "0123456789") -> str:
    return rng.choice(first) + "".join(rng.choice("0123456789") for _ in range(n - 1))


def _number(kind: str, lang: str, rng: random.Random) -> tuple[str, tuple[int, ...]]:
    """(written number, spoken split for a block of digits) for a placeholder."""
    if kind == "order":
        d = _digits(rng, 7, "123456789")
        style = rng.random()
        if style < 0.15:
            return f"#{d}", (3, 4)
        if style < 0.3:
            return f"{d[:3]}-{d[3:]}", ()
        return d, rng.choice([(3, 4), (4, 3), (2, 2, 3)])
    if kind == "location":
        d = _digits(rng, 6)
        if rng.random() < 0.3:  # leading zeros are common in codes and must survive
            d = "0" + d[1:]
        return (f"{d[:3]}-{d[3:]}", ()) if rng.random() < 0.2 else (d, rng.choice([(3, 3), (2, 2, 2)]))
    if kind == "code":
        letters = "".join(rng.choice(_LETTERS) for _ in range(rng.choice([1, 2, 2, 3])))
        return letters + rng.choice(["", "-"]) + _digits(rng, rng.choice([2, 2, 3, 4])), ()
    if lang == "fr":
        pairs = [f"{rng.randint(0, 99):02d}" for _ in range(4)]
        mobile = rng.choice("1234567")
        return rng.choice([f"0{mobile} " + " ".join(pairs), f"+33 {mobile} " + " ".join(pairs),
                           f"0{mobile}." + ".".join(pairs)]), ()
    area, mid, last = _digits(rng, 3, "23456789"), _digits(rng, 3, "23456789"), _digits(rng, 4)
    ext = _digits(rng, rng.choice([2, 3, 4]))
    return rng.choice([
        f"{area}-{mid}-{last}", f"({area}) {mid}-{last}", f"{area}.{mid}.{last}", f"{area} {mid} {last}",
        f"+1 {area}-{mid}-{last}", f"+1 ({area}) {mid}-{last}", f"{area}-{mid}-{last} ext. {ext}",
        f"+44 20 {_digits(rng, 4)} {_digits(rng, 4)}", f"+1 {area} {mid} {last} x{ext}",
    ]), ()


def _reading(lang: str, rng: random.Random) -> Reading:
    if lang == "fr":
        return Reading(group_pauses=rng.random() < 0.7, pairs=rng.random() < 0.7)
    return Reading(zero="oh" if rng.random() < 0.3 else "zero", doubles=rng.random() < 0.2,
                   group_pauses=rng.random() < 0.6)


def compose(template: str, numbers: dict[str, tuple[str, tuple[int, ...]]], lang: str,
            reading: Reading) -> tuple[str, Spoken]:
    """(written text, spoken form with number spans) for a template and its numbers."""
    spoken = Spoken()
    written = ""
    for part in re.split(r"(\{\w+\})", template):
        if not part:
            continue
        m = re.fullmatch(r"\{(\w+)\}", part)
        if m is None:
            written += part
            tokens = part.split()
            if tokens and spoken.words and not part[0].isspace():
                spoken.words[-1] += tokens[0]  # punctuation glued to the number before it
                spoken.tts[-1] += tokens[0]
                tokens = tokens[1:]
            spoken.words += tokens
            spoken.tts += tokens
            continue
        kind = m.group(1).rstrip("2")
        number, split = numbers[m.group(1)]
        words, tts = verbalize(number, kind, lang, reading, split=split if reading.group_pauses else ())
        spoken.spans.append(NumberSpan(len(spoken.words), len(spoken.words) + len(words) - 1, number, kind))
        spoken.words += words
        spoken.tts += tts
        written += number
    return written, sentence_case(spoken)


def make_prompt(category: str, lang: str, rng: random.Random) -> Prompt:
    reading = _reading(lang, rng)
    if category == "plain":
        prefix, sentence = rng.choice(_PREFIXES[lang]), rng.choice(PLAIN[lang])
        if prefix and not re.match(r"I\b", sentence):  # "Hi, can you..." but "Hi, I'm..."
            sentence = sentence[0].lower() + sentence[1:]
        text = prefix + sentence
        written, spoken = compose(text, {}, lang, reading)
        return Prompt(lang, category, written, spoken, reading)
    template = rng.choice(TEMPLATES[lang][category])
    names = re.findall(r"\{(\w+)\}", template)
    numbers = {name: _number(name, lang, rng) for name in names}
    written, spoken = compose(template, numbers, lang, reading)
    return Prompt(lang, category, written, spoken, reading)


def make_prompts(count: int, seed: int, french_fraction: float = 0.0, plain_fraction: float = 0.25) -> list[Prompt]:
    """`count` prompts; `plain_fraction` of them without numbers, `french_fraction` in French."""
    rng = random.Random(seed)
    prompts, plain = [], 0
    numbered = [c for c in CATEGORIES if c != "plain"]
    for i in range(count):
        lang = "fr" if rng.random() < french_fraction else "en"
        # A quota, not a coin flip: the plain share is met exactly (rounded up), not on average.
        category = "plain" if plain < (i + 1) * plain_fraction else rng.choice(numbered)
        plain += category == "plain"
        prompts.append(make_prompt(category, lang, rng))
    rng.shuffle(prompts)
    return prompts
