"""CommonCrawl with CCNet's steps, plus the paper's Wikipedia-reference classifier.

Inputs: WET files (Common Crawl's extracted text), WARC files (HTML responses, turned into text with resiliparse,
keeping every visible line as WET does: boilerplate is for line dedup to remove), or JSONL(.gz) with a "text"
field (CCNet / dolma shards). WARC parsing is fastwarc's; the gzip layer is Python's, so a cut-short file raises
and is counted (`truncated_gzip`) after the records read before the cut.

Stages, in CCNet's order:
1. `min_length`: drop documents under 300 characters (CCNet does it at read time, before dedup).
2. `line_dedup`: CCNet's paragraph dedup over groups of `dedup_group` consecutive shards: a line whose normalized
   hash occurs twice or more in the group is removed everywhere (see `filters.dedup.LineDedup`).
3. `langid`: keep documents whose best language is in `languages` (default en) with score >= 0.5.
4. optional `lm_score` + `lm_buckets`: perplexity under an n-gram LM trained on a reference corpus; head / middle /
   tail by the 30th / 60th percentiles; tail dropped (RedPajama kept head and middle).
5. optional `reference_classifier`: P(page looks like a Wikipedia reference) >= 0.25 (RedPajama's cut).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator

from llamaforge.data.filters.dedup import LineDedup
from llamaforge.data.filters.langid import LanguageFilter
from llamaforge.data.filters.quality import (
    NGramLM,
    PerplexityBuckets,
    PerplexityScorer,
    ReferenceClassifier,
    ReferenceClassifierFilter,
    load_texts,
)
from llamaforge.data.pipeline import Doc, Result, Source, Stage
from llamaforge.data.readers import expand_inputs, iter_jsonl
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
        if ".warc" in shard:
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
    name = "min_length"

    def __init__(self, min_length: int = MIN_LENGTH):
        self.min_length = min_length

    def __call__(self, doc: Doc) -> Result:
        return doc if len(doc["text"]) >= self.min_length else "too_short"


def build(inputs: list[str], languages: list[str] | None = None, lang_threshold: float = 0.5,
          langid: str = "py3langid", min_length: int = MIN_LENGTH, dedup_group: int | None = 50,
          lm: str | NGramLM | None = None, lm_reference: list[str] | None = None, lm_order: int = 3,
          bucket_percentiles: tuple[float, float] = (30.0, 60.0), bucket_cutoffs: tuple[float, float] | None = None,
          keep_buckets: tuple[str, ...] = ("head", "middle"),
          classifier: str | ReferenceClassifier | None = None, classifier_positives: list[str] | None = None,
          classifier_negatives: list[str] | None = None, classifier_threshold: float = 0.25) -> Source:
    shards = expand_inputs(inputs, (".warc.gz", ".wet.gz", ".warc", ".jsonl", ".jsonl.gz", ".json.gz"))
    stages = [MinLength(min_length), LineDedup(mode="ccnet", group_size=dedup_group),
              LanguageFilter(languages or ["en"], lang_threshold, langid)]
    if lm is None and lm_reference:
        lm = NGramLM.train(load_texts(lm_reference), order=lm_order)
    if lm is not None:
        stages += [PerplexityScorer(lm),
                   PerplexityBuckets(bucket_percentiles, bucket_cutoffs, keep_buckets)]
    if classifier is None and classifier_positives and classifier_negatives:
        classifier = ReferenceClassifier.train(load_texts(classifier_positives), load_texts(classifier_negatives))
    if classifier is not None:
        stages.append(ReferenceClassifierFilter(classifier, classifier_threshold))
    return Source("commoncrawl", shards, CCReader(), stages)
