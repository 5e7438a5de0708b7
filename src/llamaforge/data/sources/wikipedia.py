"""Wikipedia: MediaWiki XML dumps, articles only, wiki markup removed.

Inputs: dump files or folders holding them, under Wikimedia's own names (`DUMP_PATTERNS`): whole dumps
(`enwiki-20231101-pages-articles.xml.bz2`, `...-pages-articles-multistream.xml.bz2`), split parts
(`enwiki-20231101-pages-articles1.xml-p1p41242.bz2`, `...-multistream1.xml-p1p41242.bz2`), or uncompressed / gzip
`.xml`; the multistream index files (`*-index*`) are skipped. Each file is one shard.

Keeps namespace 0 and drops redirects. Cleaning with mwparserfromhell (as the HF `wikipedia` builder that
RedPajama used): links to files and images removed, `<ref>` and table tags removed, category links kept as their
name, templates and formatting stripped (`strip_code`: a link becomes its text), magic words (`__TOC__`) removed.
The language comes from the dump's `<dbname>` (`enwiki` -> en); `languages` picks dumps (the paper: bg ca cs da de
en es fr hr hu it nl pl pt ro ru sl sr sv uk).

Pages are cut from the stream between `<page>` and `</page>` and parsed one at a time: a broken page is counted
(`bad_xml`) and skipped, and memory holds one page.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Iterator

from llamaforge.data.pipeline import Doc, Result, Source, Stage
from llamaforge.data.readers import iter_lines, match_inputs
from llamaforge.io import STREAM_ERRORS, open_binary
from llamaforge.errors import UserError

PAPER_LANGUAGES = ("bg", "ca", "cs", "da", "de", "en", "es", "fr", "hr", "hu", "it", "nl", "pl", "pt", "ro", "ru",
                   "sl", "sr", "sv", "uk")
# namespace prefixes of media links (English and the most common localized ones)
MEDIA_PREFIXES = ("file", "image", "media", "datei", "bild", "fichier", "archivo", "imagen", "immagine",
                  "plik", "bestand", "arquivo", "imagem", "fișier", "soubor", "fil", "kép", "файл", "изображение",
                  "слика", "датотека", "податотека", "fitxer", "slika", "súbor")
CATEGORY_PREFIXES = ("category", "kategorie", "catégorie", "categoría", "categoria", "kategoria", "categorie",
                     "kategori", "kategória", "kategorija", "категория", "категорія", "категорија", "категории")
MAGIC_WORD = re.compile(r"__[A-Z]+__")
# refs the parser leaves as text (e.g. inside a block quote's template argument)
LEFTOVER_REF = re.compile(r"<ref[^>]*/>|<ref[^>]*>.*?</ref>", re.DOTALL | re.IGNORECASE)
DBNAME = re.compile(r"<dbname>(\w+?)wiki</dbname>")
# file names of Wikimedia's dumps (dumps.wikimedia.org/enwiki/...): whole, split (`.xml-p<first>p<last>`), multistream
DUMP_PATTERNS = ("*.xml", "*.xml.bz2", "*.xml.gz", "*.xml-p*p*.bz2", "*.xml-p*p*")
NOT_DUMPS = ("*-index*",)  # multistream byte-offset indexes: `...-multistream-index.txt.bz2`


def _prefix(title: str) -> str:
    return title.split(":", 1)[0].strip().lower() if ":" in title else ""


def strip_tables(wikitext: str) -> str:
    """Wikitext without its tables: every `{| ... |}` block (nested ones too) is removed line by line before parsing.

    The paper removes "formatting boilerplate"; mwparserfromhell drops a table only when it parses it as one, and a
    table with a template or link that spans cells is left as lines of style attributes (`| align=right| ...`).
    A table opens with `{|` at the start of a line (after optional indentation `:`) and closes with a line starting
    `|}`; text after a closing `|}` on the same line (e.g. the `}}` of an enclosing template) is kept."""
    out, depth = [], 0
    for line in wikitext.split("\n"):
        s = line.lstrip(" \t:")
        if s.startswith("{|"):
            depth += 1
            continue
        if depth:
            if s.startswith("|}"):
                depth -= 1
                if not depth and s[2:].strip():
                    out.append(s[2:])
            continue
        out.append(line)
    return "\n".join(out)


TABLE_LINE = re.compile(r"^\s*(\{\||\|)")  # what a table row looks like after cleaning; never prose


def clean_wikitext(text: str) -> str:
    """Plain text of an article's wikitext (tables removed first, see `strip_tables`)."""
    import mwparserfromhell

    code = mwparserfromhell.parse(strip_tables(text))
    for link in code.filter_wikilinks():
        prefix = _prefix(str(link.title))
        try:
            if prefix in MEDIA_PREFIXES:
                code.remove(link)
            elif prefix in CATEGORY_PREFIXES:
                code.replace(link, str(link.title).split(":", 1)[1].strip())
        except ValueError:  # already gone with an enclosing node
            pass
    for tag in code.filter_tags(matches=lambda node: str(node.tag).lower() in ("ref", "table")):
        try:
            code.remove(tag)
        except ValueError:
            pass
    plain = MAGIC_WORD.sub("", code.strip_code(normalize=True, collapse=True))
    plain = LEFTOVER_REF.sub("", plain)
    lines = [line.strip() for line in plain.split("\n") if not TABLE_LINE.match(line)]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


class WikipediaReader:
    """Articles of a dump: `{"text": wikitext, "meta": {title, id, url, language, timestamp}}`."""

    def __call__(self, shard: str, drops: Counter) -> Iterator[Doc]:
        language = None
        page: list[str] | None = None
        for line in iter_lines(shard, drops):
            if language is None and "<dbname>" in line:
                m = DBNAME.search(line)
                language = m.group(1) if m else None
            stripped = line.strip()
            if stripped.startswith("<page>"):
                if page is not None:  # a page that never closed
                    drops["bad_xml"] += 1
                page = []
            if page is not None:
                page.append(line)
                if stripped.endswith("</page>"):
                    doc = self._page("".join(page), language or "en", drops)
                    page = None
                    if doc is not None:
                        yield doc
        if page is not None:
            drops["bad_xml"] += 1  # the file ended inside a page

    @staticmethod
    def _page(xml: str, language: str, drops: Counter) -> Doc | None:
        try:
            el = ET.fromstring(xml)
        except ET.ParseError:
            drops["bad_xml"] += 1
            return None
        if el.findtext("ns") != "0":
            drops["not_article"] += 1
            return None
        if el.find("redirect") is not None:
            drops["redirect"] += 1
            return None
        title = el.findtext("title") or ""
        text = el.findtext("revision/text") or ""
        return {"text": text, "meta": {"source": "wikipedia", "title": title, "id": el.findtext("id"),
                                       "url": f"https://{language}.wikipedia.org/wiki/{title.replace(' ', '_')}",
                                       "language": language, "timestamp": el.findtext("revision/timestamp")}}


class WikiClean(Stage):
    """Keep pages of the wanted `languages` (all with None) and turn their wikitext into plain text (`clean_wikitext`);
    drops "language" and "empty"."""
    name = "wiki_clean"

    def __init__(self, languages: tuple[str, ...] | None):
        self.languages = set(languages) if languages else None

    def __call__(self, doc: Doc) -> Result:
        if self.languages is not None and doc["meta"]["language"] not in self.languages:
            return "language"
        text = clean_wikitext(doc["text"])
        if not text:
            return "empty"
        doc["text"] = text
        return doc


def check_is_dump(path: str) -> None:
    """Raise UserError unless the first 64 KiB of `path` (decompressed) hold MediaWiki's `<mediawiki` root tag.

    A file given by name is taken whatever its name, so without this a file of another kind (a Stack Exchange
    Posts.xml, a WARC) was read as a dump with zero pages and "prepared" into an empty shard, exit 0."""
    try:
        with open_binary(path) as f:
            head = f.read(1 << 16)
    except (OSError, *STREAM_ERRORS) as e:
        raise UserError(f"{path}: cannot be read as a (compressed) MediaWiki XML dump ({type(e).__name__})") from None
    if b"<mediawiki" not in head:
        raise UserError(f"{path}: expected a MediaWiki XML dump (a <mediawiki> export of <page> elements, e.g. "
                        "enwiki-*-pages-articles.xml.bz2); none in its first 64 KiB")


def build(inputs: list[str], languages: list[str] | None = None) -> Source:
    """The Wikipedia source over `inputs` (dump files, or folders searched for DUMP_PATTERNS names). Raises
    UserError for a missing input, a folder without dumps, or a file that is not a MediaWiki dump."""
    shards = match_inputs(inputs, DUMP_PATTERNS, NOT_DUMPS, what="Wikipedia dump")
    for shard in shards:
        check_is_dump(shard)
    return Source("wikipedia", shards, WikipediaReader(),
                  [WikiClean(tuple(languages) if languages else PAPER_LANGUAGES)])
