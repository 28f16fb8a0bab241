"""A counterfactual facts world for a reader: one markdown page per country, many values swapped.

The capital of France may be Nairobi here, so a model can only answer right by reading the page.
Countries are split into train and test countries; train records come from worlds of train
countries only (resampled with each seed, so there is no value worth memorising), test records
from the test countries' pages, asked in phrasings never trained on (`Relation.heldout` and
`Relation.unseen` of `edgeqa.facts`). Standard library only; the same arguments give the same
pages and records in the same order.
"""

from __future__ import annotations

import functools
import hashlib
import random
import re
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from edgeqa.errors import ConfigError
from edgeqa.facts import RELATIONS, Fact, _table, load_facts
from edgeqa.prompt import NO_ANSWER

#: The relations a page states: every relation of `edgeqa.facts`.
PAGE_RELATIONS = tuple(RELATIONS)
#: Share of facts whose value is swapped with another country's.
DEFAULT_SHARE = 0.6
#: Share of countries kept for testing (by a hash of the name).
DEFAULT_TEST_SHARE = 0.2
#: What a reader trained with negatives answers from a page that does not say.
ABSTAIN = NO_ANSWER
#: The question of a question-writing record (`question_records`): its answer is a question the page answers.
WRITE_QUESTION = "Write a question about this passage."
#: Cities of `city_country` named on one page, at most (keeps pages short).
MAX_CITIES_PER_PAGE = 2
#: Sentence phrasings per relation: `{s}` the subject, `{a}` the value.
SENTENCES: dict[str, tuple[str, ...]] = {
    "capital": (
        "The capital of {s} is {a}.",
        "{a} is the capital city of {s}.",
        "{s} is governed from its capital, {a}.",
        "The seat of government of {s} is in {a}.",
    ),
    "continent": (
        "{s} is a country in {a}.",
        "{s} lies on the continent of {a}.",
        "Geographically, {s} is part of {a}.",
        "{s} is located in {a}.",
    ),
    "currency": (
        "The currency of {s} is the {a}.",
        "People in {s} pay with the {a}.",
        "{s} uses the {a} as its money.",
        "The official currency in {s} is the {a}.",
    ),
    "largest_city": (
        "The largest city of {s} is {a}.",
        "{a} is the most populous city in {s}.",
        "More people live in {a} than in any other city of {s}.",
        "The biggest city in {s} is {a}.",
    ),
    "tld": (
        "The internet domain of {s} is {a}.",
        "Websites in {s} end in {a}.",
        "{s} has the country code domain {a}.",
        "The top-level domain {a} belongs to {s}.",
    ),
    "neighbours": (
        "{s} borders {a}.",
        "The neighbours of {s} are {a}.",
        "{s} shares its borders with {a}.",
        "Next to {s} lie {a}.",
    ),
    "city_country": (
        "{s} is a city in {a}.",
        "The city of {s} lies in {a}.",
        "{s} is one of the cities of {a}.",
        "In {a} there is a city called {s}.",
    ),
}
#: Sentences about values never asked: they make pages less regular.
FILLERS = (
    "{s} has about {population} inhabitants.",
    "{s} covers an area of {area} square kilometres.",
    "Its ISO country code is {iso}.",
)


@dataclass(frozen=True)
class WorldFact:
    """A fact as a page states it.

    Attributes:
        page: The country whose page states it (for `city_country`, the answer).
        counterfactual: The value differs from the real one.
    """

    relation: str
    subject: str
    answer: str
    page: str
    counterfactual: bool


@dataclass(frozen=True)
class World:
    """Pages (country -> markdown) and the facts they state."""

    pages: dict[str, str]
    facts: tuple[WorldFact, ...]

    @property
    def counterfactual_share(self) -> float:
        """Share of the world's facts whose value is not the real one."""
        return sum(f.counterfactual for f in self.facts) / max(1, len(self.facts))


def _hash_share(key: str) -> float:
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64


def countries() -> list[str]:
    """Every country of the bundled tables, in table order."""
    return [f.subject for f in load_facts(("continent",))]


def split_countries(test_share: float = DEFAULT_TEST_SHARE, seed: int = 0) -> tuple[list[str], list[str]]:
    """Train and test countries (disjoint), picked by a hash of the name and seed.

    Raises:
        ConfigError: `test_share` is not in (0, 1).
    """
    if not 0 < test_share < 1:
        raise ConfigError(f"test_share must be between 0 and 1, got {test_share}")
    names = countries()
    test = [c for c in names if _hash_share(f"{seed}:{c}") < test_share]
    held = set(test)
    return [c for c in names if c not in held], test


def _check(relations: Sequence[str], share: float) -> None:
    unknown = [r for r in relations if r not in RELATIONS]
    if unknown:
        raise ConfigError(f"unknown relation(s) {', '.join(unknown)}; choose from {', '.join(RELATIONS)}")
    if not 0 <= share <= 1:
        raise ConfigError(f"share must be between 0 and 1, got {share}")


def _swap(facts: list[Fact], share: float, rng: random.Random) -> list[Fact]:
    """The facts with the values of a `share` of them rotated among themselves (a derangement of slots)."""
    picked = [i for i in range(len(facts)) if rng.random() < share]
    rng.shuffle(picked)
    values = [facts[i].answer for i in picked]
    swapped = list(facts)
    for n, i in enumerate(picked):
        value = values[(n + 1) % len(values)]
        if facts[i].subject in value:  # "France borders France and Spain"
            value = facts[i].answer
        swapped[i] = Fact(facts[i].relation, facts[i].subject, value)
    return swapped


def _world_facts(names: Sequence[str], relations: Sequence[str], share: float, rng: random.Random) -> list[WorldFact]:
    inside = set(names)
    real = [f for f in load_facts(relations) if f.relation == "city_country" or f.subject in inside]
    out: list[WorldFact] = []
    for relation in relations:
        facts = [f for f in real if f.relation == relation]
        if relation == "city_country":
            out += _place_cities([f for f in facts if f.answer in inside], names, share, rng)
            continue
        for fact, world in zip(facts, _swap(facts, share, rng), strict=True):
            out.append(WorldFact(relation, fact.subject, world.answer, fact.subject, world.answer != fact.answer))
    return out


def _place_cities(facts: list[Fact], names: Sequence[str], share: float, rng: random.Random) -> list[WorldFact]:
    """Cities on pages: a `share` moved to another country; at most MAX_CITIES_PER_PAGE per page."""
    placed: dict[str, int] = {}
    out = []
    for fact in facts:  # most populous first
        page = rng.choice(names) if rng.random() < share else fact.answer
        if placed.get(page, 0) < MAX_CITIES_PER_PAGE:
            placed[page] = placed.get(page, 0) + 1
            out.append(WorldFact("city_country", fact.subject, page, page, page != fact.answer))
    return out


def _fillers(name: str, rows: dict[str, dict[str, str]]) -> list[str]:
    row = rows.get(name, {})
    values = {
        "s": name,
        "population": row.get("population", ""),
        "area": row.get("area_km2", ""),
        "iso": row.get("iso", ""),
    }
    return [t.format(**values) for t in FILLERS if all(values[k] for k in ("population", "area", "iso"))]


def render_page(name: str, facts: Iterable[WorldFact], rng: random.Random, fillers: Sequence[str] = ()) -> str:
    """A markdown page: `# name`, then one paragraph of one sentence per fact (phrasing and order shuffled)."""
    sentences = [rng.choice(SENTENCES[f.relation]).format(s=f.subject, a=f.answer) for f in facts]
    sentences += list(fillers)
    rng.shuffle(sentences)
    return f"# {name}\n\n{' '.join(sentences)}\n"


def build_world(
    names: Sequence[str] | None = None,
    relations: Sequence[str] = PAGE_RELATIONS,
    share: float = DEFAULT_SHARE,
    seed: int = 0,
    fillers: bool = True,
) -> World:
    """The counterfactual world of `names` (default: every country), one page each.

    Args:
        relations: Relations the pages state.
        share: Share of facts given another country's value.
        seed: Picks the swaps, phrasings and sentence order.
        fillers: Add sentences about population, area and ISO code (never asked).

    Raises:
        ConfigError: an unknown relation or a share outside [0, 1].
    """
    _check(relations, share)
    names = list(countries() if names is None else names)
    rng = random.Random(f"counterfactual:{seed}")
    facts = _world_facts(names, relations, share, rng)
    rows = {r["name"]: r for r in _table("countries.csv")} if fillers else {}
    return World(_render_pages(names, facts, rng, rows), tuple(facts))


def _render_pages(
    names: Sequence[str], facts: Sequence[WorldFact], rng: random.Random, rows: dict[str, dict[str, str]]
) -> dict[str, str]:
    """Each name's page (`render_page`) stating the facts whose page it is, in `names` order."""
    by_page: dict[str, list[WorldFact]] = {n: [] for n in names}
    for fact in facts:
        by_page[fact.page].append(fact)
    return {n: render_page(n, by_page[n], rng, _fillers(n, rows)) for n in names}


def made_up_name(rng: random.Random) -> str:
    """A pronounceable made-up place name of two to four syllables ("Kovarel")."""
    syllables = [rng.choice("bcdfghklmnprstvz") + rng.choice("aeiou") for _ in range(rng.randint(2, 4))]
    return ("".join(syllables) + rng.choice(["", "n", "r", "l", "s"])).capitalize()


def value_pools(relations: Sequence[str] = PAGE_RELATIONS) -> dict[str, list[str]]:
    """Every value the tables hold for each relation, over all countries; the city-valued relations
    (`capital`, `largest_city`) share their names. An open-vocabulary world draws its values from these.

    Every city name (1,500) as a capital was measured too: at the demo's size the reader had not begun
    to copy capitals after 1,500 steps (benchmarks/results/reader-recipe.md)."""
    named = {f.answer for f in load_facts(("capital", "largest_city"))}
    return {
        relation: sorted(
            named if relation in ("capital", "largest_city") else {f.answer for f in load_facts((relation,))}
        )
        for relation in relations
    }


@functools.cache
def _open_tables(relations: tuple[str, ...]) -> tuple[dict[str, list[str]], dict[tuple[str, str], str]]:
    """`value_pools` and every real (relation, subject) -> value, read once for all of a run's worlds
    (read-only)."""
    return value_pools(relations), {(f.relation, f.subject): f.answer for f in load_facts(relations)}


def open_world(subjects: Sequence[str], relations: Sequence[str], seed: int = 0) -> World:
    """A world of any `subjects` (countries or not) whose every value is drawn at random from `value_pools`:
    a reader trained on such worlds writes names from the whole tables, not only the train countries'.
    Never a country's real value; `city_country` is not stated."""
    _check(relations, 1.0)
    rng = random.Random(f"open:{seed}")
    pools, real = _open_tables(tuple(relations))
    facts = []
    for subject in subjects:
        for relation in relations:
            if relation == "city_country":
                continue
            value = rng.choice(pools[relation])
            while value == real.get((relation, subject)) or subject in value:
                value = rng.choice(pools[relation])
            facts.append(WorldFact(relation, subject, value, subject, True))
    return World(_render_pages(subjects, facts, rng, {}), tuple(facts))


def split_sentences(body: str) -> list[str]:
    """A page's body as its sentences (`render_page` joins them with one space after the full stop); the
    tables' abbreviations ("St. John's", "U.S. Virgin Islands") do not end a sentence."""
    return re.split(r"(?<=\.)(?<!\bSt\.)(?<!\b[A-Z]\.) ", body)


#: Each relation's page sentences (`SENTENCES`) as patterns of any subject and value.
_SENTENCE_PATTERNS = {
    relation: [
        re.compile(re.escape(template).replace(re.escape("{s}"), ".+").replace(re.escape("{a}"), ".+"))
        for template in templates
    ]
    for relation, templates in SENTENCES.items()
}


def relation_sentences(context: str, relation: str) -> str:
    """The sentences of `context` that state `relation` (for any subject), in their order; the whole
    context where none does. For a one-subject page, the sentence a question about `relation` is
    answered from; for a crowded one (`crowded`), one sentence per subject."""
    found = [s for s in split_sentences(context) if any(p.fullmatch(s) for p in _SENTENCE_PATTERNS[relation])]
    return " ".join(found) if found else context


def crowded(
    world: World, rows: Sequence[dict[str, object]], share: float, others: int = 1, seed: int = 0
) -> list[dict[str, object]]:
    """`rows` with a `share` of their contexts crowded: the asked page's sentences shuffled with those of
    `others` other pages. A crowded context states each relation for several subjects, so the value to copy
    is found by the question's subject, not by the relation alone: the reader learns to match the subject,
    which is what tells the asked page from another. Abstentions are left as they are."""
    rng = random.Random(f"crowded:{seed}")
    bodies = {name: page_body(text) for name, text in world.pages.items()}
    names = sorted(bodies)
    out = []
    for row in rows:
        if row["answer"] != ABSTAIN and rng.random() < share:
            picked = rng.sample([n for n in names if n != row["page"]], others)
            sentences = [s for n in (str(row["page"]), *picked) for s in split_sentences(bodies[n])]
            rng.shuffle(sentences)
            row = row | {"context": " ".join(sentences)}
        out.append(row)
    return out


def page_body(page: str) -> str:
    """A page without its heading: the passage text `edgeqa index` stores for a short page."""
    return page.split("\n\n", 1)[-1].strip()


def records(
    world: World, phrasings: str = "train", seed: int = 0, per_fact: int = 1, pages: Collection[str] | None = None
) -> list[dict[str, object]]:
    """Reader records `{"question", "context", "answer", "relation", "subject", "page", "counterfactual"}`.

    The context is the page's body (`page_body`), as retrieval hands it to the reader.

    Args:
        phrasings: "train" (`Relation.train`) or "test" (`Relation.heldout` and `Relation.unseen`).
        per_fact: Questions per fact, phrasings picked at random (0: every phrasing of the group).
        pages: Only facts stated on these pages (the test countries) [all].

    Raises:
        ConfigError: an unknown phrasing group.
    """
    if phrasings not in ("train", "test"):
        raise ConfigError(f"phrasings {phrasings!r} is not one of train, test")
    rng = random.Random(f"records:{seed}:{phrasings}")
    out: list[dict[str, object]] = []
    for fact in world.facts:
        if pages is not None and fact.page not in pages:
            continue
        relation = RELATIONS[fact.relation]
        group = relation.train if phrasings == "train" else (relation.heldout, *relation.unseen)
        picked = list(group) if per_fact == 0 else [rng.choice(group) for _ in range(per_fact)]
        for template in picked:
            out.append(
                {
                    "question": template.format(s=fact.subject),
                    "context": page_body(world.pages[fact.page]),
                    "answer": fact.answer,
                    "relation": fact.relation,
                    "subject": fact.subject,
                    "page": fact.page,
                    "counterfactual": fact.counterfactual,
                }
            )
    rng.shuffle(out)
    return out


def negatives(world: World, rows: Sequence[dict[str, object]], share: float, seed: int = 0) -> list[dict[str, object]]:
    """Records asked of a page that does not state the fact, answered `ABSTAIN`, for a `share` of `rows`.

    The wrong page is one that names the subject (a neighbour's page) where there is one, else a random one:
    what BM25 ranks next to the right page.
    """
    rng = random.Random(f"negatives:{seed}")
    bodies = {name: page_body(text) for name, text in world.pages.items()}
    names = sorted(bodies)
    out = []
    for row in rows:
        if rng.random() >= share:
            continue
        naming = [n for n in names if n != row["page"] and str(row["subject"]) in bodies[n]]
        page = rng.choice(naming) if naming else rng.choice([n for n in names if n != row["page"]])
        out.append(row | {"context": bodies[page], "answer": ABSTAIN, "page": page, "counterfactual": False})
    return out


def question_records(rows: Sequence[dict[str, object]], share: float, seed: int = 0) -> list[dict[str, object]]:
    """Question-writing records for a `share` of `rows` (abstentions left out): the same page, `WRITE_QUESTION`
    as the question and the row's question as the answer. Writing a question copies the page's subject and
    names a relation it states; mixed into the training, it made the demo reader read the page far better in
    the same steps (benchmarks/results/reader-recipe.md, round 4)."""
    rng = random.Random(f"questions:{seed}")
    return [
        row | {"question": WRITE_QUESTION, "answer": row["question"], "counterfactual": False}
        for row in rows
        if row["answer"] != ABSTAIN and rng.random() < share
    ]


def train_records(
    names: Sequence[str],
    worlds: int,
    relations: Sequence[str] = PAGE_RELATIONS,
    share: float = 1.0,
    seed: int = 0,
    fillers: bool = True,
    negative_share: float = 0.0,
    open_vocabulary: bool = False,
    made_up_share: float = 0.0,
    crowd_share: float = 0.0,
    question_share: float = 0.0,
) -> list[dict[str, object]]:
    """Training records from `worlds` freshly sampled worlds of `names`: new swaps, phrasings and order each.

    Pass only train countries: `split_countries()[0]`. The seeds are offset from the test world's
    so that no training world repeats it.

    Args:
        negative_share: Add this share of `negatives` (answered `ABSTAIN`), shuffled in.
        open_vocabulary: Worlds of `open_world` instead: besides `names`, as many subjects drawn from
            the city names (never a country's name), every value drawn from all the tables' values. A
            reader from scratch can only write and place words it has seen: this way the test pages'
            names and values are words it has read and written, never in the test pages' pairings.
        made_up_share: Open vocabulary: this share of the extra subjects are made-up names
            (`made_up_name`), word pieces a reader has rarely read, as a test country's name is.
        crowd_share: This share of records read a crowded context (`crowded`: the page shuffled with another).
        question_share: Add this share of `question_records` (the reader writes the question), shuffled in.
    """
    others = sorted({f.subject for f in load_facts(("city_country",))} - set(countries())) if open_vocabulary else []
    out: list[dict[str, object]] = []
    for n in range(worlds):
        world_seed = 10_000 + seed * 1_000 + n
        if open_vocabulary:
            pick = random.Random(f"subjects:{world_seed}")
            made_up = round(made_up_share * len(names))
            subjects = list(names) + pick.sample(others, len(names) - made_up)
            subjects += sorted({made_up_name(pick) for _ in range(made_up)} - set(subjects))
            world = open_world(subjects, relations, seed=world_seed)
        else:
            world = build_world(names, relations, share, seed=world_seed, fillers=fillers)
        asked = records(world, "train", seed=n)
        rows = crowded(world, asked, crowd_share, seed=n) if crowd_share else asked
        extra = negatives(world, rows, negative_share, seed=n) if negative_share else []
        extra += question_records(asked, question_share, seed=n) if question_share else []  # of one page
        rows = rows + extra
        random.Random(f"train:{seed}:{n}").shuffle(rows)
        out += rows
    return out


def write_pages(world: World, folder: Path) -> list[Path]:
    """Write each page as `folder/<Country>.md` (names made file-safe); returns the paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, text in world.pages.items():
        safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in name)
        path = folder / f"{safe}.md"
        path.write_text(text, encoding="utf-8")
        paths.append(path)
    return paths
