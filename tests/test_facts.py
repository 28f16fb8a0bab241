"""The facts world: questions from the bundled GeoNames tables, splits that hold out phrasings and facts,
and the facts model the other tests use (it must actually know its facts)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import FACTS_RELATIONS
from edgeqa.errors import ConfigError
from edgeqa.facts import FACTS_DIR, RELATIONS, load_facts, make_splits, write_splits
from edgeqa.manifest import Manifest
from edgeqa.metrics import exact_match, normalize_answer
from edgeqa.records import read_records

ROOT = Path(__file__).resolve().parents[1]


def test_every_relation_has_facts_with_short_answers():
    facts = load_facts()
    by_relation = {name: [f for f in facts if f.relation == name] for name in RELATIONS}
    counts = {name: len(found) for name, found in by_relation.items()}
    assert counts["capital"] == 246 and counts["continent"] == 252 and counts["currency"] == 251, counts
    assert all(count >= 50 for count in counts.values()), counts
    assert all(0 < len(f.answer) <= 60 and f.answer == f.answer.strip() for f in facts)
    known = {(f.relation, f.subject): f.answer for f in facts}
    assert known["capital", "France"] == "Paris"
    assert known["continent", "Peru"] == "South America"
    assert known["tld", "Germany"] == ".de"
    assert known["largest_city", "China"] == "Shanghai"
    assert known["neighbours", "Portugal"] == "Spain"
    assert known["city_country", "Osaka"] == "Japan"


def test_each_relation_has_disjoint_template_groups():
    for relation in RELATIONS.values():
        groups = [set(relation.train), {relation.heldout}, set(relation.unseen)]
        assert len(relation.train) >= 7 and len(relation.unseen) >= 2, relation.name
        assert sum(map(len, groups)) == len(set().union(*groups)), f"{relation.name} repeats a template"
        assert all("{s}" in t for t in set().union(*groups))


def test_splits_hold_out_phrasings_and_facts_and_are_deterministic():
    facts = load_facts(("capital", "currency"))
    splits = make_splits(facts, heldout_facts=0.1, keep=("France",))
    assert splits == make_splits(facts, heldout_facts=0.1, keep=("France",))
    train_questions = {r["question"] for r in splits["train"]}
    for split in ("validation", "test", "unseen_facts"):
        assert not train_questions & {r["question"] for r in splits[split]}, f"{split} repeats a training question"
    trained = {(r["relation"], r["subject"]) for r in splits["train"]}
    held = {(r["relation"], r["subject"]) for r in splits["unseen_facts"]}
    assert not trained & held and len(trained | held) == len(facts)
    assert 0.05 * len(facts) < len(held) < 0.15 * len(facts)
    assert ("capital", "France") in trained and ("currency", "France") in trained
    assert "What is the capital of France?" in {r["question"] for r in splits["validation"]}
    phrasings = len(RELATIONS["capital"].train)  # capital and currency train on as many
    assert phrasings == len(RELATIONS["currency"].train) == 10
    assert len(splits["train"]) == phrasings * len(trained) == phrasings * len(splits["validation"])
    assert len(splits["test"]) == 2 * len(trained) and len(splits["unseen_facts"]) == phrasings * len(held)
    assert make_splits(facts, heldout_facts=0.1, seed=1)["unseen_facts"] != splits["unseen_facts"]


def test_no_hold_out_means_every_fact_is_trained(tmp_path):
    splits = make_splits(load_facts(("continent",)))
    assert splits["unseen_facts"] == []
    paths = write_splits(tmp_path, splits)
    assert sorted(paths) == ["test", "train", "validation"]
    assert [r.question for r in read_records(paths["validation"])] == [r["question"] for r in splits["validation"]]


def test_bad_arguments_are_config_errors():
    with pytest.raises(ConfigError, match="unknown fact relation.*capital"):
        load_facts(("capitals",))
    with pytest.raises(ConfigError, match="heldout_facts"):
        make_splits([], heldout_facts=1.0)
    with pytest.raises(ConfigError, match="train_phrasings must be at least 1, got 0"):
        make_splits([], train_phrasings=0)


def test_train_phrasings_keeps_the_first_of_each_relation():
    facts = load_facts(("capital", "continent"))
    three = make_splits(facts, train_phrasings=3)
    questions = {r["question"] for r in three["train"]}
    assert questions == {t.format(s=f.subject) for f in facts for t in RELATIONS[f.relation].train[:3]}
    assert three["validation"] == make_splits(facts)["validation"] and three["test"] == make_splits(facts)["test"]


def test_bundled_tables_are_small_and_attributed():
    assert sum(p.stat().st_size for p in FACTS_DIR.iterdir()) < 2_000_000
    licence = (FACTS_DIR / "LICENSE-DATA.md").read_text(encoding="utf-8")
    assert "GeoNames" in licence and "CC BY 4.0" in licence
    assert "GeoNames" in (ROOT / "NOTICE").read_text(encoding="utf-8")
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert "edgeqa/assets/facts/LICENSE-DATA.md" in pyproject and '"assets/facts/*"' in pyproject


def test_exact_match_normalises_like_squad():
    assert normalize_answer("The  Paris!") == "paris"
    assert exact_match(["Paris.", "the euro", "Lyon"], ["Paris", "Euro", "Paris"]) == pytest.approx(2 / 3)
    assert exact_match([], []) == 0.0
    with pytest.raises(ValueError):
        exact_match(["a"], [])


def test_the_facts_model_knows_its_facts(facts_artifact_int8, facts_data):
    """The fixture model answers most held-out phrasings exactly, and its int8 artifact passed the gate."""
    from edgeqa.runtime import QAModel

    model = QAModel.load(facts_artifact_int8)
    scores = {}
    for split in ("validation", "test"):
        rows = [json.loads(line) for line in (facts_data / f"{split}.jsonl").read_text().splitlines()][::4]
        answers = model.answer_batch([r["question"] for r in rows], batch_size=32, max_new_tokens=16)
        scores[split] = exact_match([a.text for a in answers], [r["answer"] for r in rows])
    print(f"\nfacts model ({', '.join(FACTS_RELATIONS)}), int8 exact match: {scores}")
    assert scores["validation"] >= 0.6 and scores["test"] >= 0.4, scores
    parity = Manifest.read(facts_artifact_int8).parity
    assert parity and parity.passed
