"""llamaforge: LLaMA end to end (data, tokenizer, pretraining, evaluation, inference, interop).

Public API: `load_model`, `save_model`, `load_tokenizer`, `load_model_and_tokenizer`, `generate`; the model itself is `llamaforge.model`.
"""

__version__ = "0.1.0"

__all__ = ["load_model", "save_model", "load_tokenizer", "load_model_and_tokenizer", "generate", "__version__"]

# Eager (generate.py imports torch lazily): a lazy attribute would be shadowed by the `llamaforge.generate`
# submodule as soon as anything imports it.
from llamaforge.generate import generate  # noqa: E402


def __getattr__(name):
    # Imported on first use, so `import llamaforge` stays cheap for the CLI and for worker processes.
    if name in ("load_model", "save_model", "load_model_and_tokenizer"):
        from llamaforge import formats

        return getattr(formats, name)
    if name == "load_tokenizer":
        from llamaforge.tokenizer import load_tokenizer

        return load_tokenizer
    raise AttributeError(f"module 'llamaforge' has no attribute {name!r}")
