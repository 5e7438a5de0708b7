"""CCNet's CommonCrawl steps: fastText lid.176, the SentencePiece + 5-gram Kneser-Ney perplexity buckets with fixed
cut-offs, the Wikipedia-reference classifier's positive set, and the default run naming every step."""

from __future__ import annotations

import bz2
import gzip
import html
import importlib.util
import json
import math
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from conftest import shared_path
from data_helpers import CC_SAMPLES, output_docs, read_jsonl_gz, run_source, write_dump_slice

from llamaforge.data.filters.langid import LanguageFilter
from llamaforge.data.filters.lm import KneserNeyLM, LMBundle, build_bundle, normalize
from llamaforge.data.filters.quality import cited_urls, normalize_url

WIKI_DUMP = "wikipedia-xml/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"


# ---- language id


def test_lid176_agrees_with_ccnet_labels_on_shared_pages():
    """The CCNet/dolma pages carry the language and score CCNet's lid.176.bin gave them: the shipped lid.176.ftz
    agrees on every label and, median, within 0.02 on the score (the .ftz is the quantized release)."""
    docs = [d for rel in CC_SAMPLES for d in read_jsonl_gz(shared_path(rel))]
    lid = LanguageFilter(None, 0.5, "fasttext")
    diffs = []
    for d in docs:
        lang, score = lid.predict(d["text"])
        assert lang == d["metadata"]["language"], d["metadata"]["url"]
        assert score == round(score, 2)  # CCNet rounds to 2 decimals before the threshold
        diffs.append(abs(score - d["metadata"]["language_score"]))
    assert len(docs) == 30 and float(np.median(diffs)) <= 0.02


def test_lid_threshold_is_applied_to_the_rounded_score():
    lid = LanguageFilter(["en"], 0.5, "fasttext")
    short_mixed = {"text": "ok si no", "meta": {}}
    out = lid(short_mixed)
    score = short_mixed["meta"]["language_score"]
    assert (out == "language_unsure") == (score < 0.5)
    en = {"text": "The committee published its annual report on the state of the river and its fish.", "meta": {}}
    assert lid(en) is en and en["meta"]["language"] == "en" and en["meta"]["language_score"] >= 0.5


# ---- the n-gram LM


def test_kneser_ney_equals_a_hand_computed_value():
    """Order 2 on "a b", "a b", "b a" (every count-of-count has a zero, so the fallback discounts 0.5, 1, 1.5 apply).
    By hand: continuation counts N1+(. a) = N1+(. b) = N1+(. </s>) = 2 of 6, D(2) = 1, so p(w) = (2-1)/6 + gamma/4
    with gamma = 1*3/6 = 1/2 over the 4 predictable words (a, b, </s>, <unk>): p(w) = 7/24, p(<unk>) = 1/8.
    After <s>: a twice, b once; p(a|<s>) = (2-1)/3 + 1/2 * 7/24 = 23/48, p(b|<s>) = (1-0.5)/3 + 7/48 = 15/48,
    and likewise p(b|a) = p(</s>|b) = 23/48; p(b|b) (unseen) = gamma(b) p(b) = 7/48."""
    lm = KneserNeyLM.train([["a", "b"], ["a", "b"], ["b", "a"]], order=2)
    assert lm.discounts == [(0.5, 1.0, 1.5), (0.5, 1.0, 1.5)]
    assert lm.score_sentences([["a", "b"]])[0] == pytest.approx(3 * math.log10(23 / 48), abs=1e-12)
    assert lm.perplexity([["a", "b"]]) == pytest.approx(48 / 23, rel=1e-12)
    assert lm.score_sentences([["b", "b"]])[0] == pytest.approx(math.log10(15 / 48 * 7 / 48 * 23 / 48), abs=1e-12)
    # an unknown word is <unk> (1/8 after backing off from "a" with gamma(a) = 1/2); its context is unknown too
    assert lm.score_sentences([["a", "zzz"]])[0] == pytest.approx(math.log10(23 / 48 * 1 / 16 * 7 / 24), abs=1e-12)


def _random_corpus(n: int = 400, seed: int = 0) -> list[list[str]]:
    rng = random.Random(seed)
    words = [f"w{i}" for i in range(30)]
    return [[rng.choice(words[:rng.randint(3, 30)]) for _ in range(rng.randint(1, 12))] for _ in range(n)]


def test_five_gram_kn_is_normalized_and_discounts_are_modified():
    sents = _random_corpus()
    lm = KneserNeyLM.train(sents, order=5)
    assert lm.sizes[0] == 33 and all(n > 0 for n in lm.sizes)
    assert any(d != (0.5, 1.0, 1.5) for d in lm.discounts)  # Chen & Goodman's D1 < D2 < D3+ where counts allow
    for d in lm.discounts:
        assert 0 < d[0] < d[1] < d[2] <= 3
    for history in [[], ["w1"], ["w1", "w2"], sents[0][:4], ["never", "seen", "words", "here"]]:
        total = sum(10 ** lm.log10_prob(history, w) for w in lm.vocab if w != "<s>")
        assert total == pytest.approx(1.0, abs=1e-9), history


def test_arpa_roundtrip_and_kenlm_agree(tmp_path: Path):
    sents = _random_corpus(seed=1)
    lm = KneserNeyLM.train(sents, order=5)
    lm.write_arpa(tmp_path / "lm.arpa")
    back = KneserNeyLM.read_arpa(tmp_path / "lm.arpa")
    lm.save(tmp_path / "lm.npz")
    binary = KneserNeyLM.load(tmp_path / "lm.npz")
    probe = sents[:50] + [["oov", "w1", "w2"], ["w3", "oov2"]]
    for s in probe:
        ours = lm.score_sentences([s])[0]
        assert back.score_sentences([s])[0] == pytest.approx(ours, abs=1e-6)
        assert binary.score_sentences([s])[0] == ours
    kenlm = pytest.importorskip("kenlm", reason="KenLM's query module did not build here (needs Boost)")
    model = kenlm.Model(str(tmp_path / "lm.arpa"))
    for s in probe:
        assert model.score(" ".join(s), bos=True, eos=True) == pytest.approx(lm.score_sentences([s])[0], abs=1e-5)


def test_normalize_is_ccnets():
    assert normalize("  Café NÚMERO 1234 “quoted” — ok…  ") == 'cafe numero 0000 "quoted"  -  ok...'
    assert normalize("tab\there") == "tabhere"  # control characters removed
    assert normalize("ｆｕｌｌ１") == 'ｆｕｌｌ0'  # a full-width digit is a digit first (CCNet's order)


def _wikitext_paragraphs() -> list[str]:
    text = shared_path("wikitext-2/valid.txt").read_text(encoding="utf-8")
    return [p.strip() for p in text.split("\n") if len(p.strip()) > 200 and not p.strip().startswith("=")]


@pytest.fixture(scope="module")
def small_bundle(tmp_path_factory) -> Path:
    """SentencePiece + 5-gram KN on 400 Wikipedia paragraphs (WikiText-2), cut-offs from the shared crawl pages."""
    folder = tmp_path_factory.mktemp("lm")
    crawl = [d["text"] for rel in CC_SAMPLES for d in read_jsonl_gz(shared_path(rel))]
    info = build_bundle(folder, _wikitext_paragraphs()[:400], crawl, vocab_size=4000, sample_source="shared CC")
    assert info["sample_docs"] == 30 and info["head"] < info["middle"]
    return folder


def test_bundle_scores_agree_with_kenlm_on_pieces(small_bundle: Path):
    kenlm = pytest.importorskip("kenlm", reason="KenLM's query module did not build here (needs Boost)")
    bundle = LMBundle(small_bundle)
    model = kenlm.Model(str(small_bundle / "lm.arpa.gz"))
    text = read_jsonl_gz(shared_path(CC_SAMPLES[0]))[0]["text"]
    logp, n = 0.0, 0
    for line in text.split("\n"):
        line = normalize(line)
        if line:
            pieces = bundle.sp.encode(line, out_type=str)
            logp += model.score(" ".join(pieces), bos=True, eos=True)
            n += len(pieces) + 1
    assert bundle.perplexity(text) == pytest.approx(10 ** (-logp / n), rel=1e-5)


UNKNOWN_TO_SP = "The fund paid $ 5 million (£ 3 million) for the site & its 40 ° slope!\nA second line."


def test_characters_sentencepiece_lacks_are_scored_as_the_lm_saw_them(small_bundle: Path):
    """The LM is trained on SentencePiece's string pieces, where a character SentencePiece has no piece for stays
    itself ("$", "£", "&" here); scoring must look those strings up too (CCNet's `encode_as_pieces`). Scoring by
    SentencePiece id made each of them the LM's <unk> and moved such pages' perplexity by up to 15%."""
    bundle = LMBundle(small_bundle, "numpy")
    pieces = [bundle.sp.encode(normalize(line), out_type=str) for line in UNKNOWN_TO_SP.split("\n")]
    lacking = {p for line in pieces for p in line if bundle.sp.piece_to_id(p) == bundle.sp.unk_id()}
    assert lacking & set(bundle.lm.index), "the text must hold a piece SentencePiece lacks but the LM has seen"
    assert bundle.perplexity(UNKNOWN_TO_SP) == pytest.approx(bundle.lm.perplexity(pieces), rel=1e-12)
    if importlib.util.find_spec("kenlm"):  # and the KenLM scorer agrees (its probabilities are float32)
        assert LMBundle(small_bundle, "kenlm").perplexity(UNKNOWN_TO_SP) == pytest.approx(
            bundle.perplexity(UNKNOWN_TO_SP), rel=1e-5)


def test_lm_scorer_choice(monkeypatch):
    from llamaforge.data.filters import lm
    from llamaforge.errors import UserError

    with pytest.raises(UserError, match="--lm-scorer: expected one of auto, kenlm, numpy"):
        lm.resolve_scorer("srilm")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)  # kenlm not installed
    assert lm.resolve_scorer("auto") == "numpy"
    with pytest.raises(UserError, match=r"kenlm module is not installed \(pip install 'llamaforge\[kenlm\]'"):
        lm.resolve_scorer("kenlm")


def _with_meta(shard: str, drops: Counter):
    from llamaforge.data.readers import iter_jsonl

    return ({"text": o["text"], "meta": {}} for o in iter_jsonl(shard, drops))


def test_bucket_of_a_page_does_not_depend_on_the_batch(small_bundle: Path, tmp_path: Path):
    """The cut-offs come from cutoffs.json only: a page filtered alone or among others gets the same perplexity
    and bucket (the old percentile buckets moved it with the batch)."""
    from llamaforge.data.filters.lm import PerplexityFilter
    from llamaforge.data.pipeline import Source, run

    docs = [d for rel in CC_SAMPLES for d in read_jsonl_gz(shared_path(rel))]
    alone = tmp_path / "alone.jsonl"
    alone.write_text(json.dumps({"text": docs[3]["text"]}) + "\n")
    batch = tmp_path / "batch.jsonl"
    batch.write_text("".join(json.dumps({"text": d["text"]}) + "\n" for d in docs))
    got = {}
    for name, path in (("alone", alone), ("batch", batch)):
        src = Source("cc", [str(path)], _with_meta, [PerplexityFilter(small_bundle, keep=("head", "middle", "tail"))])
        run(src, tmp_path / name, progress=False)
        got[name] = output_docs(tmp_path / name)
    one = got["alone"][0]["meta"]
    same = next(d["meta"] for d in got["batch"] if d["text"] == docs[3]["text"])
    assert (one["perplexity"], one["bucket"]) == (same["perplexity"], same["bucket"])
    cut = json.loads((small_bundle / "cutoffs.json").read_text())
    buckets = Counter(d["meta"]["bucket"] for d in got["batch"])
    assert buckets["head"] == pytest.approx(0.3 * 30, abs=1) and buckets["tail"] == pytest.approx(0.4 * 30, abs=1)
    for d in got["batch"]:  # the stored numbers decide
        p = d["meta"]["perplexity"]
        assert d["meta"]["bucket"] == ("head" if p < cut["head"] else "middle" if p < cut["middle"] else "tail")


# ---- the reference classifier's positive set


def test_cited_urls_and_normalisation():
    wikitext = ("Text.<ref>{{cite web |url=https://www.Example.com/report/ |title=R}}</ref> more "
                "[http://news.example.org/a?id=3#top Story] and <ref name=x>http://blog.example.net/p.html.</ref>")
    assert cited_urls(wikitext) == {"example.com/report", "news.example.org/a?id=3", "blog.example.net/p.html"}


def test_cited_urls_skip_template_parameters_outside_refs():
    """Only <ref> bodies (their cite templates included) and external links count: the URL of an infobox
    (a template parameter, not a citation), of an {{Official website}} template, of a comment and of a
    self-closing <ref name=x /> are not cited URLs (the old rule took every http(s) URL of the wikitext)."""
    wikitext = (
        "{{Infobox company\n| name = Acme\n| website = {{URL|http://www.acme-infobox.example/}}\n"
        "| logo_url = https://img.example/logo.png\n| nested = {{small|{{URL|http://deep.example/x}}}}\n}}\n"
        "'''Acme''' makes anvils.<ref name=\"a\">{{cite news |url=https://paper.example/anvils |title=T "
        "|archive-url=https://archive.example/anvils}}</ref> It grew.<ref name=\"a\" />"
        "<!-- http://hidden.example/comment -->\n"
        "See http://bare.example/page for more.\n"
        "== External links ==\n* [https://www.acme.example/about/ Official site]\n"
        "* {{Official website|http://official-template.example}}\n")
    assert cited_urls(wikitext) == {"paper.example/anvils", "archive.example/anvils", "bare.example/page",
                                    "acme.example/about"}


def test_normalize_url():
    assert normalize_url("HTTPS://WWW.example.com:443/report#x") == "example.com/report"
    assert normalize_url("not a url") == ""


def _page(title: str, refs: list[str]) -> str:
    body = " ".join(f"Sentence {i} about {title} and its history, people and places." for i in range(30))
    cites = "".join(f"<ref>{{{{cite web |url={u} |title=x}}}}</ref>" for u in refs)
    wikitext = html.escape(f"{body}{cites}\n\n== History ==\n{body}\n\n{body}\n", quote=False)
    return (f"  <page>\n    <title>{title}</title>\n    <ns>0</ns>\n    <id>{abs(hash(title)) % 10**6}</id>\n"
            f"    <revision><timestamp>2020-01-01T00:00:00Z</timestamp><text>{wikitext}</text></revision>\n"
            f"  </page>\n")


def test_positive_set_from_a_dump_and_a_crawl_sharing_urls(tmp_path: Path):
    from llamaforge.data.sources.commoncrawl import build_models

    cited = [f"https://www.site{i}.org/article/{i}/" for i in range(8)]
    dump = tmp_path / "enwiki-test.xml.bz2"
    pages = [_page(f"Topic {i}", cited[i:i + 2]) for i in range(8)]
    dump.write_bytes(bz2.compress(("<mediawiki>\n<siteinfo><dbname>enwiki</dbname></siteinfo>\n" + "".join(pages)
                                   + "</mediawiki>\n").encode()))
    rng = random.Random(0)
    words = ["report", "river", "council", "museum", "season", "league", "election", "harbour", "bridge"]
    crawl = []
    for i in range(40):
        # 8 pages whose URL Wikipedia cites, written as the crawler saw them (http, no www, no trailing slash)
        url = f"http://site{i}.org/article/{i}" if i < 8 else f"http://random{i}.com/page"
        text = "\n".join(" ".join(rng.choice(words) for _ in range(12)) + "." for _ in range(30))
        crawl.append({"text": text, "url": url})
    shard = tmp_path / "crawl.jsonl.gz"
    shard.write_bytes(gzip.compress("".join(json.dumps(d) + "\n" for d in crawl).encode()))
    lid = LanguageFilter(None, 0.0, "resiliparse")
    info = build_models(tmp_path / "m", [str(dump)], [str(shard)], 300, lid, vocab_size=500, min_positives=5)
    assert info["classifier"]["n_positives"] == 8
    assert info["classifier"]["positives"] == "8 crawl pages cited by the Wikipedia dump"
    assert info["classifier"]["cited_urls"] == 8
    # too few cited pages: Wikipedia article text stands in, and the reason is stated
    info = build_models(tmp_path / "m2", [str(dump)], [str(shard)], 300, lid, vocab_size=500, min_positives=20)
    assert info["classifier"]["positives"].startswith("Wikipedia article text")
    assert "only 8 crawl pages" in info["classifier"]["positives"]


# ---- the whole recipe


@pytest.fixture(scope="module")
def dump_slice(tmp_path_factory) -> Path:
    """The shared dump's first 60 pages (about 20 articles)."""
    return write_dump_slice(WIKI_DUMP, 60, tmp_path_factory.mktemp("wiki") / "enwiki-slice.xml.bz2")


@pytest.mark.slow
def test_default_commoncrawl_runs_every_paper_step(dump_slice: Path, tmp_path: Path):
    from llamaforge.data.pipeline import format_stats_table

    inputs = [shared_path(p) for p in CC_SAMPLES] + [
        shared_path("commoncrawl/dolma-tests/warc_sample-0000.warc.gz"),
        shared_path("commoncrawl/whirlwind/whirlwind.warc.wet.gz")]
    stats, docs = run_source("commoncrawl", inputs, tmp_path / "out", wikipedia=[str(dump_slice)],
                             lm_vocab=2000)
    steps = ["read", "min_length", "line_dedup", "langid", "lm_perplexity", "reference_classifier"]
    assert list(stats["stages"]) == steps and stats["ran"] == steps and stats["off"] == {}
    table = format_stats_table(stats)
    for name in steps:
        assert name in table
    assert "positives = Wikipedia article text" in table  # no shared page is cited by the slice: said so
    assert 0 < len(docs) < stats["stages"]["langid"]["docs_out"]
    for d in docs:
        assert d["meta"]["bucket"] in ("head", "middle") and d["meta"]["wiki_prob"] >= 0.25
        assert d["meta"]["language"] == "en"
    assert (tmp_path / "out" / "models" / "lm" / "lm.arpa.gz").exists()
    # without Wikipedia the two model steps are off, and the table says why
    stats, _ = run_source("commoncrawl", inputs[:1], tmp_path / "bare")
    assert set(stats["off"]) == {"lm_perplexity", "reference_classifier"}
    assert "off: lm_perplexity (no Wikipedia" in format_stats_table(stats)


def test_kenlm_scorer_loads_without_its_binary_file_hint_but_keeps_real_errors(small_bundle: Path, tmp_path: Path,
                                                                              capfd):
    """Every `prepare commoncrawl` run with models printed KenLM's "Loading the LM will be faster if you build a
    binary file." (C++, fd 2) into the stage table's output; a broken ARPA file still raises KenLM's error, and what
    else KenLM writes while loading still reaches stderr."""
    pytest.importorskip("kenlm", reason="KenLM's query module did not build here (needs Boost)")
    capfd.readouterr()
    bundle = LMBundle(small_bundle, "kenlm")
    assert bundle.perplexity(_wikitext_paragraphs()[0]) > 1
    err = capfd.readouterr().err
    assert "build a binary file" not in err and not err.strip(), err
    from llamaforge.data.filters.lm import KENLM_BINARY_HINT, load_kenlm

    broken = tmp_path / "broken.arpa"
    broken.write_text("not an ARPA file\n")
    with pytest.raises(OSError, match="Cannot read model"):
        load_kenlm(broken)
    assert KENLM_BINARY_HINT not in capfd.readouterr().err
    # a warning KenLM writes while loading passes through: an ARPA file without <unk> (KenLM adds one and says so)
    (tmp_path / "no_unk.arpa").write_text("\\data\\\nngram 1=3\nngram 2=1\n\n\\1-grams:\n-1.0\t<s>\t-0.3\n"
                                          "-0.5\t</s>\n-0.7\tword\t-0.2\n\n\\2-grams:\n-0.1\t<s> word\n\n"
                                          "\\end\\\n")
    load_kenlm(tmp_path / "no_unk.arpa")
    err = capfd.readouterr().err
    assert KENLM_BINARY_HINT not in err and "<unk>" in err, err
