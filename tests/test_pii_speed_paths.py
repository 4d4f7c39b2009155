"""PII compute shortcuts give the answers of the work they skip: the array-built NLP artifacts and the
copy-on-boost context enhancer against presidio's stock code, and the record-search shortcut against
the search, on real-looking chat text."""

from __future__ import annotations

import pytest
from presidio_analyzer import AnalyzerEngine, RecognizerResult
from presidio_analyzer.context_aware_enhancers import LemmaContextAwareEnhancer

from curator.config import PiiConfig
from curator.steps import pii
from curator.steps.pii import CopyOnBoostEnhancer, PiiScrub, _found_once, build_analyzer

TEXTS = [
    "My SSN is 078-05-1120 and my driver's license number is D1234567, please keep them safe.",
    "Hi, I'm Margaret Thornbury; call me at (415) 555-0198 or mail m.thornbury@northwind-mail.com.",
    "passport: 912803456, bank account 123456789012, routing number 021000021 for the transfer",
    "we met in Lisbon last may and don't remember the IBAN GB82 WEST 1234 5698 7654 32 anymore",
    "No PII here: upgrade numpy to 2.1.0 and rerun `pytest -x` on port 8080.",
    "",
    "   ",
    "ÄÖÜ straße 12 — naïve café, “quoted” words… and an emoji 😀 next to 10.0.0.1",
]


@pytest.fixture(scope="module")
def analyzer() -> AnalyzerEngine:
    """The project's analyzer (loading spaCy is the slow part)."""
    return build_analyzer(PiiConfig())


def test_artifacts_from_arrays_match_token_by_token(analyzer: AnalyzerEngine) -> None:
    engine = analyzer.nlp_engine
    for doc in engine.nlp["en"].pipe(TEXTS):
        art = engine.artifacts(doc)
        assert art.tokens_indices == [t.idx for t in doc]
        assert art.lemmas == [t.lemma_ or t.lower_ for t in doc]
        assert art.keywords == art.set_keywords(engine, [t.lemma_ or t.lower_ for t in doc], "en")


def test_copy_on_boost_enhancer_gives_the_stock_enhancers_results(analyzer: AnalyzerEngine) -> None:
    assert isinstance(analyzer.context_aware_enhancer, CopyOnBoostEnhancer)
    stock = AnalyzerEngine(
        registry=analyzer.registry,
        nlp_engine=analyzer.nlp_engine,
        supported_languages=["en"],
        context_aware_enhancer=LemmaContextAwareEnhancer(),
    )
    engine = analyzer.nlp_engine
    boosted = 0
    for text, doc in zip(TEXTS, engine.nlp["en"].pipe(TEXTS), strict=True):
        for threshold in (0.0, 0.35):
            kwargs = {"language": "en", "score_threshold": threshold, "return_decision_process": True}
            ours = analyzer.analyze(text, nlp_artifacts=engine.artifacts(doc), **kwargs)
            theirs = stock.analyze(text, nlp_artifacts=engine.artifacts(doc), **kwargs)
            assert sorted(map(_key, ours)) == sorted(map(_key, theirs)), text
            boosted += sum(bool(getattr(r.analysis_explanation, "supportive_context_word", "")) for r in ours)
    assert boosted  # the SSN / licence / passport context words did raise scores


def _key(r: RecognizerResult) -> tuple[str, int, int, float, str]:
    """What a result says: type, span, score and the recognizer that found it."""
    return (r.entity_type, r.start, r.end, r.score, r.recognition_metadata["recognizer_name"])


RECORDS = [
    *TEXTS,
    "Margaret Thornbury called. Tell margaret the parcel for Thornbury is at 12 Kerkstraat, 1234 AB Utrecht.",
    "Ana Lee wrote: my password is Qr7!dke#39, and Qr7!dke#39x is the old one. Thanks, Ana",
    "Li and Bo met Li at the station; Bo paid with 4111 1111 1111 1111.",
    "Kelvin sign: 5 \u212a for Karl Berg, and karl berg again in lower case",
    "i live at kecskeméti utca 188., h-1936 hetvennémeti and my name is zsófia kertész",
    # a dotless i matches "i" case-insensitively, but lower() keeps it: the record goes to the search
    "My name is Aylin Yildiz; the bank wrote it as AYLIN YıLDıZ on the card",
]


def test_the_search_shortcut_finds_what_the_record_search_finds(monkeypatch: pytest.MonkeyPatch) -> None:
    """A record whose found values each occur once skips compiling its search regex: same spans."""
    step = PiiScrub(PiiConfig())
    searched = [[(s.type, s.start, s.end) for s in spans] for spans in step.find_spans(RECORDS)]
    shortcut = []
    monkeypatch.setattr(pii, "_found_once", lambda *a: shortcut.append(_found_once(*a)) or False)
    step._cache.clear()
    assert [[(s.type, s.start, s.end) for s in spans] for spans in step.find_spans(RECORDS)] == searched
    assert True in shortcut and False in shortcut  # both paths ran: the comparison means something
    assert any(t == "PERSON" and RECORDS[8][s:e].lower() == "margaret" for t, s, e in searched[8])


def test_the_tagger_reads_no_found_secret_and_still_finds_the_name_beside_it() -> None:
    """Rampart's windows leave out the secrets the patterns found (a random key is a token per two or
    three characters, and anything tagged inside it merges into it); the words around it are read."""
    step = PiiScrub(PiiConfig())
    key, token = "sk_live_4eC39HqLyjWDarjtT1zdp7dc", "ghp_1a2B3c4D5e6F7g8H9i0JkLmNoPqRsTuVwXyZ12"
    text = f"ok so my sister wiktoria said to rotate {key} today, and {token} is dead too. thanks wiktoria"
    read: list[str] = []
    tag = step._tag_windows
    step._tag_windows = lambda scan: read.extend(w[2] for w in scan.windows) or tag(scan)  # type: ignore[method-assign]
    spans = step.find_spans([text])[0]
    assert read and not any(key in w or token in w for w in read), read
    assert any("wiktoria" in w for w in read)
    found = {(s.type, text[s.start : s.end]) for s in spans}
    assert {("SECRET", key), ("SECRET", token)} <= found, found
    assert [s for s in spans if s.type == "PERSON" and text[s.start : s.end] == "wiktoria"], found
