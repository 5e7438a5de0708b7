"""Wikipedia: MediaWiki XML dumps, articles only, wiki markup removed.

Inputs: dump files or folders holding them, under Wikimedia's own names (`DUMP_PATTERNS`): whole dumps
(`enwiki-20231101-pages-articles.xml.bz2`, `...-pages-articles-multistream.xml.bz2`), split parts
(`enwiki-20231101-pages-articles1.xml-p1p41242.bz2`, `...-multistream1.xml-p1p41242.bz2`), or uncompressed / gzip
`.xml`; the multistream index files (`*-index*`) are skipped. Each file is one shard.

Keeps namespace 0 and drops redirects. Cleaning with mwparserfromhell (as the HF `wikipedia` builder that
RedPajama used): links to files and images removed, `<ref>` and table tags removed, category links kept as their
name, templates and formatting stripped (`strip_code`: a link becomes its text), magic words (`__TOC__`) removed.
File and image links (nested links in captions, localised names) are cut before parsing by bracket depth, and what
the parser leaves as text where it gives up on a stretch (quote runs like `Iliad'''s`, `<blockquote>` tags) after.
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
# `[[File:` / `[[Image:` / `[[Datei:` ... (every spelling in MEDIA_PREFIXES, any case)
MEDIA_LINK_OPEN = re.compile(r"\[\[\s*(?:" + "|".join(re.escape(p) for p in MEDIA_PREFIXES) + r")\s*:", re.IGNORECASE)
# HTML tags MediaWiki accepts in wikitext (its Sanitizer's list) and the extension tags of Wikipedia's articles:
# where mwparserfromhell gives up on a stretch (unbalanced quotes inside a <ref>), they are left as text
HTML_TAG = re.compile(r"</?(?:abbr|b|bdi|bdo|big|blockquote|br|caption|center|cite|code|data|dd|del|dfn|div|dl|dt|"
                      r"em|font|gallery|h[1-6]|hr|i|includeonly|ins|kbd|li|mark|math|noinclude|nowiki|ol|onlyinclude|"
                      r"p|poem|pre|q|rb|references|ref|rp|rt|rtc|ruby|s|samp|small|span|strike|strong|sub|sup|"
                      r"syntaxhighlight|source|table|td|templatestyles|th|time|tr|tt|u|ul|var|wbr)"
                      r"(?:\s[^<>]*)?/?>", re.IGNORECASE)
QUOTE_RUN = re.compile(r"'{2,}")  # MediaWiki's italic (2 apostrophes), bold (3) and bold italic (5) markup


def strip_media_links(wikitext: str) -> str:
    """Wikitext without its file and image links (`[[File:x.svg|thumb|caption with [[nested]] links]]`, in every
    spelling of MEDIA_PREFIXES), removed before parsing by matching `[[`/`]]` depth.

    mwparserfromhell drops such a link only when it parses it as one; a caption with unbalanced quotes or `<br />`
    makes it give up, and the link was kept as text (`[[File:Structural analysis ...|thumb|...`). A link that never
    closes is removed to the end of its line (MediaWiki shows it as text; it is still not prose)."""
    out, pos = [], 0
    for m in MEDIA_LINK_OPEN.finditer(wikitext):
        if m.start() < pos:  # inside a link already removed
            continue
        out.append(wikitext[pos:m.start()])
        depth, i = 1, m.end()
        while depth and i < len(wikitext):
            if wikitext.startswith("[[", i):
                depth, i = depth + 1, i + 2
            elif wikitext.startswith("]]", i):
                depth, i = depth - 1, i + 2
            else:
                i += 1
        if depth:  # never closed: up to the end of the line
            end = wikitext.find("\n", m.end())
            i = len(wikitext) if end < 0 else end
        pos = i
    out.append(wikitext[pos:])
    return "".join(out)


def _quote_run(m: re.Match) -> str:
    """A run of apostrophes left after parsing is markup, except the apostrophes MediaWiki shows (doQuotes in its
    Parser.php): of 4, one (then bold); of more than 5, the extra ones; and 3 inside a word (italic title + `'s`, as
    in `Iliad` + 3 apostrophes + `s`: the italic close after a possessive apostrophe) are that apostrophe."""
    run, text, i = m.group(), m.string, m.start()
    if len(run) == 3:
        inside_word = i > 0 and text[i - 1].isalnum() and m.end() < len(text) and text[m.end()].isalpha()
        return "'" if inside_word else ""
    if len(run) == 4:
        return "'"
    return "'" * max(0, len(run) - 5)


def strip_leftover_markup(plain: str) -> str:
    """What mwparserfromhell leaves as text where it gives up on a stretch of a page (an unbalanced italic in a ref
    turns the rest of that stretch into text): apostrophe runs (`_quote_run`) and HTML tags (`<blockquote>`)."""
    return HTML_TAG.sub("", QUOTE_RUN.sub(_quote_run, plain))


def clean_wikitext(text: str) -> str:
    """Plain text of an article's wikitext: tables and file/image links removed first (`strip_tables`,
    `strip_media_links`), then mwparserfromhell's `strip_code`, then what it left as text (`strip_leftover_markup`)."""
    import mwparserfromhell

    code = mwparserfromhell.parse(strip_media_links(strip_tables(text)))
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
    plain = strip_leftover_markup(LEFTOVER_REF.sub("", plain))
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
