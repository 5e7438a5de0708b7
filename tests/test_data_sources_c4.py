"""C4 source on real Common Crawl text (CCNet and dolma shards): TFDS's line and page rules, exact line dedup."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from conftest import shared_path
from data_helpers import CC_SAMPLES, run_source

from llamaforge.data.sources.c4 import END_MARKS, POLICY, clean_page, count_sentences

SAMPLES = ["commoncrawl/dolma-tests/multiple_files_cc_en_head-0091.jsonl.gz",
           "commoncrawl/dolma-tests/provided_documents_000.json.gz"]


def test_c4_rules_and_line_dedup(tmp_path: Path):
    inputs = [shared_path(s) for s in SAMPLES]
    with gzip.open(inputs[0], "rt", encoding="utf-8") as f:
        first = json.loads(f.readline())
    planted = tmp_path / "planted.jsonl"
    with planted.open("w") as f:
        # a copy of a real page: all its lines already appeared, so it must vanish
        f.write(json.dumps({"text": first["text"], "url": "http://copy.example/"}) + "\n")
        f.write(json.dumps({"text": "Dies ist ein deutscher Satz über das Wetter in Berlin heute. Es regnet den "
                            "ganzen Tag und die Menschen bleiben zu Hause. Morgen soll die Sonne wieder "
                            "scheinen, sagt der Wetterdienst."}) + "\n")
    stats, docs = run_source("c4", inputs + [planted], tmp_path / "out")
    assert docs, "some pages must survive"
    assert not any(d["meta"].get("url") == "http://copy.example/" for d in docs)
    assert stats["stages"]["line_dedup"]["drops"].get("empty_after_line_dedup", 0) >= 1
    assert stats["stages"]["langid"]["drops"].get("language", 0) + \
        stats["stages"]["langid"]["drops"].get("language_unsure", 0) >= 1
    seen: set[str] = set()
    for d in docs:
        assert d["meta"]["language"] == "en"
        assert count_sentences(d["text"]) >= 3
        for line in d["text"].split("\n"):
            low = line.strip().lower()
            assert line.endswith(END_MARKS) and not line.endswith("...")
            assert len(line.split()) >= 5
            assert "javascript" not in low and "{" not in line and not any(p in low for p in POLICY)
            assert low not in seen, "each line is kept in one page only"
            seen.add(low)


def test_clean_page_rules():
    good = "This is the first full sentence here. This is another sentence that counts too."
    text, reason = clean_page(f"{good}\nMenu\nPlease enable JavaScript to view this page properly.\n"
                              f"Read our privacy policy for more details, please.\n{good} And a third one!")
    assert reason is None
    assert text == f"{good}\n{good} And a third one!"
    assert clean_page(f"{good}\nLorem ipsum dolor sit amet, consectetur adipiscing.\n{good}")[1] == "lorem_ipsum"
    assert clean_page(f"{good}\nfunction f() {{ return 1; }} is code here.\n{good}")[1] == "curly_bracket"
    assert clean_page("Only one sentence survives in this short page.")[1] == "too_few_sentences"
    cited, _ = clean_page(f"Water boils at one hundred degrees.[1] {good}[citation needed]")
    assert cited == f"Water boils at one hundred degrees. {good}"


def test_c4_badwords_list_from_a_path_matches_phrases_and_is_never_silently_off():
    """C4's list (the LDNOOBW commit TFDS pinned, 377 entries) is read from the path given and matches as TFDS does:
    whole entries, phrases included, between non-word characters. Without a list the step is off, and says why."""
    from llamaforge.data.sources.c4 import NO_BADWORDS, badwords_regex, build

    path = shared_path("c4-badwords/en.txt")
    entries = [w for w in path.read_text(encoding="utf-8").splitlines() if w]
    assert len(entries) == 377
    phrase = next(w for w in entries if " " in w)
    rx = badwords_regex(entries)
    good = "The river rose in the spring. The town built a wall. Everyone was safe again."
    assert rx.search(good.lower()) is None
    assert rx.search(f"{good} And then {phrase} appeared.".lower())  # a multi-word entry (never matched before)
    assert rx.search("classic assessment") is None  # inside a word is not a match
    cc = [str(shared_path(CC_SAMPLES[0]))]
    assert build(cc, badwords=str(path)).stages[0].badwords == frozenset(entries)
    assert build(cc, badwords="none").off == {"bad_words": "--badwords none"}
    assert build(cc).off == {"bad_words": NO_BADWORDS} and not build(cc).stages[0].badwords


def test_c4_badwords_file_that_is_not_text_is_refused(tmp_path):
    """A binary file given as --badwords (a tokenizer, a model) was read line by line as "bad words" and the run
    went on; it is refused like every text input (io.read_text), naming the flag, the file and the byte."""
    import pytest

    from llamaforge.data.sources.c4 import build
    from llamaforge.errors import UserError

    cc = [str(shared_path(CC_SAMPLES[0]))]
    binary = tmp_path / "words.bin"
    binary.write_bytes(b"ass\n\x00\x01\x02\xff\n")
    with pytest.raises(UserError, match=r"^--badwords: .*words\.bin: expected UTF-8 text, found binary data at byte 4$"):
        build(cc, badwords=str(binary))
    text = tmp_path / "words.txt"
    text.write_text("Two Words\n\n  spaced  \n", encoding="utf-8")  # one entry a line, trimmed, lowercased
    assert build(cc, badwords=str(text)).stages[0].badwords == frozenset({"two words", "spaced"})
