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
          classifier_negatives: list[str] | None = None, classifier_threshold: float = 0.25, **_) -> Source:
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
