"""CommonCrawl with CCNet's steps, plus the paper's Wikipedia-reference classifier.

Inputs: WET files (Common Crawl's extracted text), WARC files (HTML responses, turned into text with resiliparse,
keeping every visible line as WET does: boilerplate is for line dedup to remove), or JSONL(.gz) with a "text"
field (CCNet / dolma shards). WARC parsing is fastwarc's; the gzip layer is Python's, so a cut-short file raises
and is counted (`truncated_gzip`) after the records read before the cut.

Stages, in CCNet's order:
1. `min_length`: drop documents under 300 characters (CCNet does it at read time, before dedup).
2. `line_dedup`: CCNet's paragraph dedup over groups of `dedup_group` consecutive shards: a line whose normalized
   hash occurs twice or more in the group is removed everywhere (see `filters.dedup.LineDedup`).
3. `langid`: fastText lid.176 (CCNet's model family; newlines deleted, score rounded to 2 decimals); keep
   documents whose best language is in `languages` (default en) with score >= 0.5.
4. `lm_perplexity`: CCNet's perplexity under a SentencePiece + 5-gram Kneser-Ney LM trained on Wikipedia, bucketed
   head / middle / tail by cut-offs fixed when the LM was built (see `filters.lm`); by default head and middle are
   kept and the tail dropped (RedPajama's choice; the paper keeps the pages that look like Wikipedia).
5. `reference_classifier`: P(page looks like a page Wikipedia cites) >= 0.25 (RedPajama's rule).
Steps 4 and 5 need Wikipedia (`--wikipedia`, or `--models` from an earlier run); the models are built once per
output folder into `OUT/models/` (see `build_models`). Without Wikipedia they are off and the stage table says so.
"""

from __future__ import annotations

import re
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from llamaforge.data.filters.dedup import LineDedup
from llamaforge.data.filters.langid import LanguageFilter
from llamaforge.data.filters.lm import PerplexityFilter, resolve_scorer
from llamaforge.data.filters.quality import (
    ReferenceClassifier,
    ReferenceClassifierFilter,
    cited_urls,
    normalize_url,
)
from llamaforge.data.pipeline import Doc, Result, Source, Stage
from llamaforge.data.readers import expand_inputs, is_warc, iter_jsonl, refuse_folders_without, refuse_unless_records
from llamaforge.errors import UserError
from llamaforge.io import STREAM_ERRORS, open_binary

MIN_LENGTH = 300


def html_to_text(payload: bytes) -> str:
    """All visible text of an HTML page, one block per line (like Common Crawl's WET extraction)."""
    from resiliparse.extract.html2text import extract_plain_text
    from resiliparse.parse.encoding import bytes_to_str, detect_encoding

    html = bytes_to_str(payload, detect_encoding(payload))
    return extract_plain_text(html, preserve_formatting=True, main_content=False, list_bullets=False)


_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]+")


def dechunk(body: bytes) -> bytes | None:
    """The payload of an HTTP/1.1 `Transfer-Encoding: chunked` body (RFC 9112 section 7.1): each chunk is a hex size
    line (maybe with `;extensions`), CRLF, that many bytes, CRLF; a zero-size chunk ends it (trailers ignored).
    Returns None when the body is not validly chunked (some servers send the header on an already decoded body).
    A body cut short inside a chunk (captures are truncated at a size limit) keeps the bytes that were there."""
    out, pos, n = [], 0, len(body)
    while pos < n:
        eol = body.find(b"\n", pos)
        if eol < 0:
            return None
        size_field = body[pos:eol].split(b";", 1)[0].strip()
        if not _CHUNK_SIZE.fullmatch(size_field):
            return None
        size = int(size_field, 16)
        if size == 0:
            return b"".join(out)
        start = eol + 1
        out.append(body[start:start + size])
        pos = start + size
        if body[pos:pos + 2] == b"\r\n":  # CRLF after the data (a bare LF is tolerated)
            pos += 2
        elif body[pos:pos + 1] == b"\n":
            pos += 1
    return b"".join(out)


def _decompress(body: bytes, coding: str) -> bytes | None:
    """Undo one content coding (gzip, x-gzip, deflate raw or zlib-wrapped, br, zstd); None when it fails."""
    import zlib

    try:
        if coding in ("gzip", "x-gzip"):
            return zlib.decompressobj(wbits=47).decompress(body)  # 47: gzip or zlib header, auto-detected
        if coding == "deflate":  # RFC 9110 says zlib-wrapped; some servers send raw deflate
            try:
                return zlib.decompressobj().decompress(body)
            except zlib.error:
                return zlib.decompressobj(wbits=-15).decompress(body)
        if coding == "br":
            import brotli

            return brotli.decompress(body)
        if coding == "zstd":
            import zstandard

            return zstandard.ZstdDecompressor().decompressobj().decompress(body)
    except Exception:  # noqa: BLE001 - any codec failure means "could not decode", counted by the caller
        return None
    return None


def decode_http_body(body: bytes, transfer_encoding: str | None, content_encoding: str | None
                     ) -> tuple[bytes | None, str | None]:
    """The entity of an HTTP response as the server meant it: transfer codings undone (chunked), then content
    codings undone in reverse order of application (RFC 9110 section 8.4). Common Crawl stores WARC response
    records as received, so both can be present. Returns (bytes, None) or (None, drop reason).
    A chunked header over a body that is not chunked (already decoded by the crawler) passes the body through."""
    for coding in reversed(_codings(transfer_encoding)):
        if coding == "chunked":
            decoded = dechunk(body)
            body = body if decoded is None else decoded
        elif coding != "identity":
            body = _decompress(body, coding)
            if body is None:
                return None, "bad_transfer_encoding"
    for coding in reversed(_codings(content_encoding)):
        if coding == "identity":
            continue
        if coding not in ("gzip", "x-gzip", "deflate", "br", "zstd"):
            return None, "unknown_content_encoding"
        decoded = _decompress(body, coding)
        if decoded is None:
            # crawlers often store the decoded body but keep the header: pass it through when it looks like text
            if body[:2] == b"\x1f\x8b" or not _looks_like_text(body):
                return None, "bad_content_encoding"
            continue
        body = decoded
    return body, None


def _codings(header: str | None) -> list[str]:
    return [c.strip().lower() for c in header.split(",") if c.strip()] if header else []


def _looks_like_text(body: bytes) -> bool:
    head = body[:512]
    return bool(head) and sum(b < 9 or 13 < b < 32 for b in head) < len(head) // 20


def _strip_angle(uri: str | None) -> str | None:
    return uri[1:-1] if uri and uri.startswith("<") and uri.endswith(">") else uri


class CCReader:
    """WET / WARC records or JSONL documents -> `{"text", "meta": {url, date, digest, ...}}`."""

    def __call__(self, shard: str, drops: Counter) -> Iterator[Doc]:
        if is_warc(shard):
            yield from self._warc(shard, drops)
        else:
            for obj in iter_jsonl(shard, drops, text_keys=("text", "raw_content")):  # CCNet: raw_content
                # CCNet puts its fields at the top level, dolma under "metadata"
                meta = {k: v for k, v in obj.items() if k not in ("text", "raw_content", "metadata", "meta")}
                meta.update(obj.get("metadata") or obj.get("meta") or {})
                yield {"text": obj["text"], "meta": {"source": "commoncrawl", **_keep_meta(meta)}}

    def _warc(self, shard: str, drops: Counter) -> Iterator[Doc]:
        from fastwarc.warc import ArchiveIterator, WarcRecordType

        types = WarcRecordType.response | WarcRecordType.conversion
        # Python's gzip (not fastwarc's) so that a cut-short file raises instead of ending quietly
        with open_binary(shard) as stream:
            try:
                for rec in ArchiveIterator(stream, record_types=types, parse_http=True):
                    doc = self._record(rec, drops)
                    if doc is not None:
                        yield doc
            except STREAM_ERRORS:
                drops["truncated_gzip"] += 1

    def _record(self, rec, drops: Counter) -> Doc | None:
        from fastwarc.warc import WarcRecordType

        payload = rec.reader.read()
        meta = {"source": "commoncrawl", "url": _strip_angle(rec.headers.get("WARC-Target-URI")),
                "date_download": rec.headers.get("WARC-Date"), "digest": rec.headers.get("WARC-Block-Digest")}
        if rec.record_type == WarcRecordType.conversion:  # WET: text already
            try:
                text = payload.decode("utf-8")
            except UnicodeDecodeError:
                drops["invalid_utf8"] += 1
                return None
        else:
            ctype = (rec.http_headers.get("Content-Type", "") if rec.http_headers else "").lower()
            if "html" not in ctype:
                drops["not_html"] += 1
                return None
            payload, bad = decode_http_body(payload, rec.http_headers.get("Transfer-Encoding"),
                                            rec.http_headers.get("Content-Encoding"))
            if bad:
                drops[bad] += 1
                return None
            text = html_to_text(payload)
        return {"text": text, "meta": meta}


def _keep_meta(meta: dict) -> dict:
    """Useful CCNet fields from an upstream shard (not its line ids or old scores)."""
    keep = ("url", "id", "date_download", "digest", "source_domain", "title", "cc_segment")
    return {k: meta[k] for k in keep if k in meta}


class MinLength(Stage):
    """Drop documents shorter than `min_length` characters ("too_short"; default MIN_LENGTH, 300)."""
    name = "min_length"

    def __init__(self, min_length: int = MIN_LENGTH):
        self.min_length = min_length

    def __call__(self, doc: Doc) -> Result:
        return doc if len(doc["text"]) >= self.min_length else "too_short"


MIN_POSITIVES = 50  # fewer cited pages than this in the crawl sample: train on Wikipedia article text instead


def _read_wikipedia(paths: list[str]) -> tuple[list[str], set[str]]:
    """Cleaned article texts and cited URLs: from MediaWiki XML dumps (text cleaned here, URLs from the raw
    wikitext), or from `prepare wikipedia` output (JSONL: text only, no URLs)."""
    from llamaforge.data.readers import is_jsonl
    from llamaforge.data.sources.wikipedia import WikipediaReader, clean_wikitext

    texts, urls = [], set()
    drops: Counter = Counter()
    for path in paths:
        if is_jsonl(path):
            texts += [o["text"] for o in iter_jsonl(path, drops)]
            continue
        for doc in WikipediaReader()(path, drops):
            urls |= cited_urls(doc["text"])
            text = clean_wikitext(doc["text"])
            if text:
                texts.append(text)
    if not texts:
        raise UserError(f"--wikipedia: no article text found in {', '.join(paths)}")
    return texts, urls


def _crawl_sample(shards: list[str], n: int, min_length: int, langid: LanguageFilter) -> list[Doc]:
    """The first `n` pages of the crawl, in input order, that pass the length and language steps (what CCNet's
    cut-offs were computed over: pages after language id)."""
    out: list[Doc] = []
    reader = CCReader()
    for shard in shards:
        for doc in reader(shard, Counter()):
            if len(doc["text"]) >= min_length and isinstance(langid(doc), dict):
                out.append(doc)
                if len(out) >= n:
                    return out
    return out


def build_models(folder: Path, wikipedia: list[str], shards: list[str], min_length: int, langid: LanguageFilter,
                 sample_size: int = 10_000, order: int = 5, vocab_size: int = 65536, seed: int = 0,
                 min_positives: int = MIN_POSITIVES) -> dict:
    """The two models the paper's CommonCrawl recipe needs, built once into `folder` (reused when present):
    `folder/lm/` (SentencePiece + 5-gram KN on the Wikipedia text + fixed cut-offs from the crawl sample, see
    `filters.lm.build_bundle`) and `folder/reference_classifier.npz`: positives are the sampled crawl pages whose
    normalised URL Wikipedia cites; when fewer than `MIN_POSITIVES` are found, Wikipedia article text stands in
    (said in `info["classifier"]["positives"]`); negatives are random sampled crawl pages. Returns the info saved
    in `folder/info.json`."""
    import json

    import numpy as np

    from llamaforge.data.filters.lm import build_bundle
    from llamaforge.io import atomic_file

    info_path = folder / "info.json"
    if info_path.exists():
        return json.loads(info_path.read_text())
    folder.mkdir(parents=True, exist_ok=True)
    texts, urls = _read_wikipedia(wikipedia)
    sample = _crawl_sample(shards, sample_size, min_length, langid)
    lm_info = build_bundle(folder / "lm", texts, [d["text"] for d in sample], order=order, vocab_size=vocab_size,
                           sample_source=f"first {len(sample)} crawl pages after min_length and langid")
    cited = [d for d in sample if normalize_url(d["meta"].get("url") or "") in urls]
    rng = np.random.default_rng(seed)
    if len(cited) >= min_positives:
        positives, kind = [d["text"] for d in cited], f"{len(cited)} crawl pages cited by the Wikipedia dump"
    else:
        positives = [texts[i] for i in rng.permutation(len(texts))[:max(min_positives, len(sample))]]
        kind = (f"Wikipedia article text ({len(positives)} articles): only {len(cited)} crawl pages in the sample "
                f"of {len(sample)} are cited by the dump ({len(urls)} cited URLs), fewer than {min_positives}")
    cited_ids = {id(d) for d in cited}
    pool = [d["text"] for d in sample if id(d) not in cited_ids]
    negatives = [pool[i] for i in rng.permutation(len(pool))[:len(positives)]]
    if not negatives:
        raise UserError("reference classifier: no crawl page left to use as a negative example")
    clf = ReferenceClassifier.train(positives, negatives)
    clf.save(folder / "reference_classifier.npz")
    info = {"lm": lm_info, "classifier": {"positives": kind, "n_positives": len(positives),
                                          "n_negatives": len(negatives), "cited_urls": len(urls)},
            "wikipedia": wikipedia, "crawl_sample": len(sample)}
    with atomic_file(info_path, "w") as f:
        json.dump(info, f, indent=1)
    return info


SUFFIXES = (".warc.gz", ".wet.gz", ".warc", ".jsonl", ".jsonl.gz", ".json.gz")
EXPECTED = 'Common Crawl WARC / WET (.warc.gz) or JSONL(.gz) with a "text" or "raw_content" field (CCNet / dolma)'


def _check_values(min_length=MIN_LENGTH, dedup_group=50, keep_buckets=("head", "middle"),
                  classifier_threshold=0.25, lm_vocab=65536, cutoff_sample=10_000) -> None:
    """Refuse out-of-range option values before anything runs, whether or not the LM and classifier steps are on
    (a bad `--keep-buckets` must not pass only because no `--wikipedia` was given). Raises UserError naming the
    option: `min_length` >= 0 characters, `dedup_group` >= 0 shards (0 or None: all in one group), `keep_buckets`
    a non-empty subset of head/middle/tail, `classifier_threshold` a probability in [0, 1], `lm_vocab` and
    `cutoff_sample` >= 1."""
    def count(flag, value, low):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise UserError(f"{flag}: expected a whole number >= {low}, got {value!r}")

    count("--min-length", min_length, 0)
    if dedup_group is not None:
        count("--dedup-group", dedup_group, 0)  # 0, like None: one group of every shard
    buckets = [keep_buckets] if isinstance(keep_buckets, str) else list(keep_buckets or [])
    if not buckets or set(buckets) - {"head", "middle", "tail"}:
        raise UserError(f"--keep-buckets: expected some of head, middle, tail, got {','.join(map(str, buckets)) or '(none)'}")
    if isinstance(classifier_threshold, bool) or not isinstance(classifier_threshold, (int, float)) \
            or not 0 <= classifier_threshold <= 1:
        raise UserError(f"--classifier-threshold: expected a probability in [0, 1], got {classifier_threshold!r}")
    count("--lm-vocab", lm_vocab, 1)
    count("--cutoff-sample", cutoff_sample, 1)


def _checked(inputs, languages, lang_threshold, langid, wikipedia, models, **values) -> tuple[list[str], LanguageFilter]:
    """The crawl's shards and the language filter, after the checks `build` and `check` share: option values in
    range (`_check_values`, given `values`), inputs of the right kind (`readers.refuse_unless_records`), a valid
    language-id setting, `--wikipedia` files that exist, and not both `wikipedia` and `models` (one source of the
    models: which one would be used is not for the user to guess)."""
    if wikipedia and models:
        raise UserError(f"--wikipedia, --models: expected one of them, got both: --models {models} uses models built "
                        "before, --wikipedia trains them into OUT/models; drop one")
    _check_values(**values)
    refuse_folders_without(inputs, SUFFIXES, "commoncrawl", EXPECTED)
    shards = expand_inputs(inputs, SUFFIXES)
    refuse_unless_records(shards, "commoncrawl", EXPECTED, warc=True)
    lid = LanguageFilter(languages or ["en"], lang_threshold, langid)
    from llamaforge.data.readers import is_jsonl
    from llamaforge.data.sources.wikipedia import check_is_dump

    for path in wikipedia or []:
        if not Path(path).is_file():
            raise UserError(f"--wikipedia: {path}: no such file; expected MediaWiki XML dumps or `prepare "
                            "wikipedia` output (JSONL)")
        if not is_jsonl(path):
            check_is_dump(path)
    if models and not (Path(models) / "info.json").exists() and not wikipedia:
        raise UserError(f"--models: {models}: expected a folder with info.json, lm/ and reference_classifier.npz "
                        "(built by a run with --wikipedia)")
    return shards, lid


def check(inputs: list[str], languages: list[str] | None = None, lang_threshold: float = 0.5,
          langid: str = "fasttext", wikipedia: list[str] | None = None, models: str | None = None,
          lm_scorer: str = "auto", **options) -> None:
    """`build`'s checks on the inputs and options, without training the models (`sources.check_inputs`)."""
    values = {k: options[k] for k in ("min_length", "dedup_group", "keep_buckets", "classifier_threshold",
                                      "lm_vocab", "cutoff_sample") if k in options}
    _checked(inputs, languages, lang_threshold, langid, wikipedia, models, **values)
    resolve_scorer(lm_scorer)


def build(inputs: list[str], languages: list[str] | None = None, lang_threshold: float = 0.5,
          langid: str = "fasttext", min_length: int = MIN_LENGTH, dedup_group: int | None = 50,
          wikipedia: list[str] | None = None, models: str | None = None, keep_buckets=("head", "middle"),
          classifier_threshold: float = 0.25, lm_order: int = 5, lm_vocab: int = 65536, cutoff_sample: int = 10_000,
          lm_scorer: str = "auto", work_dir: str | None = None) -> Source:
    """CCNet's steps (min length, line dedup, fastText lid.176 >= 0.5, SentencePiece + 5-gram KN perplexity
    buckets) and the paper's Wikipedia-reference classifier, every step on.

    The last two need models trained on Wikipedia: `models` is a folder built before (`OUT/models` of an earlier
    run), else they are built into `work_dir/models` from `wikipedia` (dumps or `prepare wikipedia` output; see
    `build_models`). With neither, those two steps are off and the stage table says why. `lm_scorer`: who computes
    the perplexities, KenLM's query module or the numpy scorer ("auto": kenlm when installed; see
    `filters.lm.resolve_scorer`); the stage table's notes say which one ran."""
    shards, lid = _checked(inputs, languages, lang_threshold, langid, wikipedia, models, min_length=min_length,
                           dedup_group=dedup_group, keep_buckets=keep_buckets,
                           classifier_threshold=classifier_threshold, lm_vocab=lm_vocab, cutoff_sample=cutoff_sample)
    stages: list = [MinLength(min_length), LineDedup(mode="ccnet", group_size=dedup_group), lid]
    source = Source("commoncrawl", shards, CCReader(), stages)
    folder = Path(models) if models else (Path(work_dir) / "models" if work_dir and wikipedia else None)
    if folder is not None and not (folder / "info.json").exists():
        if not wikipedia:
            raise UserError(f"--models: {folder}: expected a folder with info.json, lm/ and "
                            "reference_classifier.npz (built by a run with --wikipedia)")
        print(f"commoncrawl: training the CCNet LM and the reference classifier on {', '.join(wikipedia)} "
              f"into {folder} (once)", file=sys.stderr)
        build_models(folder, wikipedia, shards, min_length, lid, cutoff_sample, lm_order, lm_vocab)
    if folder is None:
        why = "no Wikipedia to train it on: give --wikipedia DUMP_OR_PREPARED_JSONL or --models DIR"
        source.off = {"lm_perplexity": why, "reference_classifier": why}
        return source
    import json

    info = json.loads((folder / "info.json").read_text())
    perplexity = PerplexityFilter(folder / "lm", keep_buckets, lm_scorer)
    stages += [perplexity,
               ReferenceClassifierFilter(folder / "reference_classifier.npz", classifier_threshold)]
    lm = info["lm"]
    source.notes.append(f"lm_perplexity: {folder / 'lm'}: head < {lm['head']}, middle < {lm['middle']} (the "
                        f"{lm['percentiles'][0]:g}th/{lm['percentiles'][1]:g}th percentiles of {lm['sample_docs']} "
                        f"pages: {lm['sample']}), keeping {', '.join(keep_buckets)}; scored by "
                        + ("KenLM's query module (kenlm)" if perplexity.scorer == "kenlm" else
                           "llamaforge's numpy KN scorer" + (" (kenlm not installed)" if lm_scorer == "auto" else "")))
    source.notes.append(f"reference_classifier: positives = {info['classifier']['positives']}; "
                        f"keep P(reference) >= {classifier_threshold}")
    return source
