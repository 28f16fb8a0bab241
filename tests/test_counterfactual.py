"""The counterfactual reader world: deterministic, train and test kept apart, answers on their pages."""

from __future__ import annotations

import pytest

from edgeqa import counterfactual as cf
from edgeqa.documents.formats import parse_markdown
from edgeqa.errors import ConfigError
from edgeqa.facts import RELATIONS


@pytest.fixture(scope="module")
def world() -> cf.World:
    return cf.build_world(seed=0)


@pytest.fixture(scope="module")
def split() -> tuple[list[str], list[str]]:
    return cf.split_countries(seed=0)


def test_same_seed_same_world_and_records(world: cf.World) -> None:
    again = cf.build_world(seed=0)
    assert again == world
    assert cf.records(again, "test", seed=3) == cf.records(world, "test", seed=3)
    assert cf.build_world(seed=1).pages != world.pages


def test_train_and_test_countries_are_disjoint(split: tuple[list[str], list[str]]) -> None:
    train, test = split
    assert not set(train) & set(test)
    assert set(train) | set(test) == set(cf.countries())
    assert 0.1 < len(test) / (len(train) + len(test)) < 0.3


def test_train_records_name_no_test_country_page(split: tuple[list[str], list[str]]) -> None:
    train, test = split
    rows = cf.train_records(train, worlds=2)
    assert rows and {r["page"] for r in rows} <= set(train)


def test_train_and_test_phrasings_are_disjoint(world: cf.World) -> None:
    train_q = {r["question"] for r in cf.records(world, "train", per_fact=0)}
    test_q = {r["question"] for r in cf.records(world, "test", per_fact=0)}
    assert not train_q & test_q


def test_test_records_only_from_given_pages(world: cf.World, split: tuple[list[str], list[str]]) -> None:
    rows = cf.records(world, "test", pages=set(split[1]))
    assert rows and {r["page"] for r in rows} <= set(split[1])


def test_every_answer_is_stated_in_its_context(world: cf.World) -> None:
    for r in cf.records(world, "test"):
        assert r["answer"] in r["context"] and r["subject"] in r["context"]
        assert r["context"] == cf.page_body(world.pages[r["page"]])


def test_a_good_share_is_counterfactual(world: cf.World) -> None:
    assert 0.45 < world.counterfactual_share < 0.8
    assert cf.build_world(share=0.0).counterfactual_share == 0.0
    for relation in ("capital", "continent", "currency"):
        facts = [f for f in world.facts if f.relation == relation]
        assert sum(f.counterfactual for f in facts) / len(facts) > 0.3


def test_every_relation_is_on_the_pages(world: cf.World) -> None:
    assert {f.relation for f in world.facts} == set(RELATIONS)


def test_pages_parse_as_markdown_with_the_country_as_title(world: cf.World, tmp_path) -> None:
    paths = cf.write_pages(world, tmp_path)
    assert len(paths) == len(world.pages) == len(cf.countries())
    for path in paths:
        document = parse_markdown(path.read_text(encoding="utf-8"), path.stem)
        assert document.title in world.pages
        assert [b.text for b in document.blocks] == [cf.page_body(world.pages[document.title])]


def test_bad_arguments_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="relation"):
        cf.build_world(relations=("capital", "height"))
    with pytest.raises(ConfigError, match="share"):
        cf.build_world(share=1.5)
    with pytest.raises(ConfigError, match="test_share"):
        cf.split_countries(test_share=0)
    with pytest.raises(ConfigError, match="phrasings"):
        cf.records(cf.build_world(["France"]), "valid")


def test_negatives_ask_a_page_that_does_not_state_the_answer(world: cf.World) -> None:
    rows = cf.records(world, "train")
    wrong = cf.negatives(world, rows, share=0.5)
    assert 0.4 * len(rows) < len(wrong) < 0.6 * len(rows)
    for row in wrong:
        assert row["answer"] == cf.ABSTAIN and row["context"] == cf.page_body(world.pages[str(row["page"])])
    own = {(r["subject"], r["relation"]): r["page"] for r in rows}
    assert all(own[row["subject"], row["relation"]] != row["page"] for row in wrong)
    mixed = cf.train_records(cf.split_countries()[0][:40], worlds=1, negative_share=0.25)
    assert any(r["answer"] == cf.ABSTAIN for r in mixed) and any(r["answer"] != cf.ABSTAIN for r in mixed)


def test_open_vocabulary_worlds_keep_test_countries_out(split: tuple[list[str], list[str]]) -> None:
    train, test = split
    rows = cf.train_records(train, worlds=2, relations=("capital", "continent", "currency"), open_vocabulary=True)
    subjects = {str(r["subject"]) for r in rows}
    assert set(train) < subjects and not subjects & set(test)
    assert len(subjects - set(train)) >= len(train)  # as many city-named subjects again
    assert not (subjects - set(train)) & set(cf.countries())
    pools = cf.value_pools(("capital", "continent", "currency"))
    real = {(f.relation, f.subject): f.answer for f in cf.load_facts(("capital", "continent", "currency"))}
    for r in rows:
        assert r["answer"] in pools[str(r["relation"])] and r["answer"] in r["context"]
        assert r["answer"] != real.get((r["relation"], r["subject"]))
    # the test countries' own capitals are words a reader trained this way has written
    assert {f.answer for f in cf.load_facts(("capital",)) if f.subject in test} <= set(pools["capital"])


def test_relation_sentences_is_the_sentence_stating_the_asked_fact(world: cf.World) -> None:
    rows = [r for r in cf.records(world, "test") if r["relation"] != "city_country"]  # a page names two cities
    for r in rows[:200]:
        sentence = cf.relation_sentences(str(r["context"]), str(r["relation"]))
        stating = [s for s in cf.split_sentences(str(r["context"])) if str(r["answer"]) in s]
        assert sentence in stating, (sentence, r)
    assert cf.relation_sentences("No answer here. None.", "capital") == "No answer here. None."


def test_crowded_contexts_state_the_asked_relation_for_several_subjects(split: tuple[list[str], list[str]]) -> None:
    relations = ("capital", "continent", "currency")
    world = cf.open_world(split[0][:40], relations, seed=3)
    rows = cf.records(world, "train")
    crowded = cf.crowded(world, rows, share=1.0, others=2, seed=1)
    assert len(crowded) == len(rows) and cf.crowded(world, rows, share=1.0, others=2, seed=1) == crowded
    for plain, row in zip(rows, crowded, strict=True):
        stated = cf.relation_sentences(str(row["context"]), str(row["relation"]))
        assert len(cf.split_sentences(stated)) == 3 and str(row["answer"]) in stated
        assert set(cf.split_sentences(str(plain["context"]))) < set(cf.split_sentences(str(row["context"])))
        assert {k: v for k, v in row.items() if k != "context"} == {k: v for k, v in plain.items() if k != "context"}
    assert cf.crowded(world, rows, share=0.0) == rows
    abstaining = [r | {"answer": cf.ABSTAIN} for r in rows[:20]]
    assert cf.crowded(world, abstaining, share=1.0) == abstaining
    one_other = cf.crowded(world, rows[:20], share=1.0)
    assert all(len(cf.split_sentences(str(r["context"]))) == 2 * len(relations) for r in one_other)


def test_question_records_ask_the_reader_to_write_the_question(split: tuple[list[str], list[str]]) -> None:
    relations = ("capital", "continent", "currency")
    base = cf.train_records(split[0], worlds=2, relations=relations, open_vocabulary=True, negative_share=0.2)
    mixed = cf.train_records(
        split[0], worlds=2, relations=relations, open_vocabulary=True, negative_share=0.2, question_share=0.25
    )
    writing = [r for r in mixed if r["question"] == cf.WRITE_QUESTION]
    reading = [r for r in mixed if r["question"] != cf.WRITE_QUESTION]
    assert sorted(map(repr, reading)) == sorted(map(repr, base))  # the other records as they were
    asked = [r for r in base if r["answer"] != cf.ABSTAIN]
    assert 0.2 * len(asked) < len(writing) < 0.3 * len(asked)
    questions = {(r["question"], r["context"]) for r in asked}
    for r in writing:
        assert (r["answer"], r["context"]) in questions and str(r["subject"]) in str(r["answer"])
    assert cf.question_records([{"question": "q", "context": "c", "answer": cf.ABSTAIN}], share=1.0) == []
    # with crowded contexts too, a question is written from its own page alone
    crowded = cf.train_records(
        split[0], worlds=1, relations=relations, open_vocabulary=True, crowd_share=1.0, question_share=0.5
    )
    written = [r for r in crowded if r["question"] == cf.WRITE_QUESTION]
    assert written and all(len(cf.split_sentences(str(r["context"]))) == len(relations) for r in written)


def test_split_sentences_keeps_the_tables_abbreviations() -> None:
    body = "The capital of U.S. Virgin Islands is St. John's. Tonga uses the Pa'anga as its money. Its domain is .to."
    assert cf.split_sentences(body) == [
        "The capital of U.S. Virgin Islands is St. John's.",
        "Tonga uses the Pa'anga as its money.",
        "Its domain is .to.",
    ]
