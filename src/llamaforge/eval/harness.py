"""An lm-evaluation-harness (0.4.x) backend: any llamaforge checkpoint as the `llamaforge` model.

lm-eval finds models only in its own registry (it reads no entry points), so the backend registers itself when
this module is imported, after lm-eval's own models (`hf`, `vllm`, ...): lm-eval fills its registry with them only
when it finds the registry empty, so registering first would hide every built-in model. Two ways in:

    python -m llamaforge.eval.harness --model llamaforge --model_args path=CKPT,tokenizer=TOK \\
        --tasks hellaswag --include_path my_tasks/            # lm-eval's own command line, with the model added

    import llamaforge.eval.harness, lm_eval
    lm_eval.simple_evaluate(model="llamaforge", model_args="path=CKPT", tasks=[...])

model_args: path (a checkpoint in any format), tokenizer (default: the one in the checkpoint folder), device,
dtype (float32 / bfloat16 / float16), batch_size, max_length (default: the model's max_seq_len).

The three request types run on llamaforge's own code: `loglikelihood` on `Scorer` (contexts run once per item),
`loglikelihood_rolling` on `perplexity.document_nll` with disjoint windows (the harness's own rolling windows,
conditioned on BOS), `generate_until` on `Scorer.generate_many` (requests with the same settings batched together).
"""

from __future__ import annotations

import sys

import torch
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model

from llamaforge.eval.perplexity import document_nll
from llamaforge.eval.scoring import Scorer, encode_pair

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class LlamaforgeLM(TemplateLM):
    """lm-evaluation-harness's `llamaforge` model (`lm_eval --model llamaforge --model_args path=...`): a
    TemplateLM whose log-likelihoods, rolling perplexities and generations come from our Scorer, so lm-eval's own
    models stay untouched. model_args: path, tokenizer, device, dtype (float32 / bfloat16 / float16), batch_size,
    max_length (default: the model's max_seq_len).
    """
    def __init__(self, path=None, tokenizer=None, device=None, dtype="float32", batch_size=16, max_length=None,
                 model=None, **unused):
        """From a checkpoint `path`, or from an in-memory `model` and tokenizer object (as in tests)."""
        super().__init__()
        from llamaforge.formats import load_model_and_tokenizer
        from llamaforge.tokenizer import load_tokenizer

        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if model is None:
            model, tokenizer = load_model_and_tokenizer(path, tokenizer, device=device, dtype=DTYPES[str(dtype)])
        elif isinstance(tokenizer, str):
            tokenizer = load_tokenizer(tokenizer)
        batch_size = 16 if str(batch_size).startswith("auto") else int(batch_size)
        self.scorer = Scorer(model, tokenizer, batch_size=batch_size,
                             max_seq_len=int(max_length) if max_length else None)
        self.tok = tokenizer

    @property
    def eot_token_id(self) -> int:
        """The end-of-sequence id (lm-eval stops generation and scores rolling windows with it)."""
        return self.tok.eos_id

    @property
    def prefix_token_id(self) -> int:
        """BOS: an empty context is conditioned on it, as lm-eval's HF backend does for LLaMA."""
        return self.tok.bos_id  # an empty context is conditioned on BOS, as the HF backend does for LLaMA

    @property
    def max_length(self) -> int:
        """The context length in tokens that requests are truncated to (the scorer's max_seq_len)."""
        return self.scorer.max_seq_len

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        """Token ids of `string`, with BOS unless add_special_tokens is False (lm-eval's convention)."""
        return self.tok.encode(string, bos=add_special_tokens is not False)

    def tok_decode(self, tokens, **kwargs) -> str:
        """The text of `tokens`."""
        return self.tok.decode(tokens)

    def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """lm-eval's split, except where a token spans the boundary: re-split there (see `encode_pair`)."""
        return encode_pair(self.tok, context, continuation)

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs):
        return self.scorer.loglikelihood_tokens([(ctx, cont) for _, ctx, cont in requests])

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """The log-likelihood (nats) of each request's whole text, scored in windows of max_length tokens conditioned
        on BOS (the perplexity tasks, e.g. wikitext).
        """
        out = []
        for (text,) in [r.args for r in requests]:
            ids = self.tok.encode(text, bos=False)
            nll = document_nll(self.scorer.model, ids, self.prefix_token_id, self.max_length, self.max_length,
                               self.scorer.batch_size) if ids else 0.0
            out.append(-nll)
        return out

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Greedy (or sampled, with do_sample) continuations of each request's context, cut at its `until` strings
        and limited to max_gen_toks (default 256); requests with the same settings run as one batch, answers come back
        in request order.
        """
        # Requests with the same settings are generated together (batched); answers go back in request order.
        groups: dict[tuple, list[int]] = {}
        prompts = []
        for i, (context, gen_kwargs) in enumerate(r.args for r in requests):
            kwargs = dict(gen_kwargs)
            until = kwargs.get("until") or []
            until = (until,) if isinstance(until, str) else tuple(until)
            temperature = float(kwargs.get("temperature", 0.0)) if kwargs.get("do_sample", False) else 0.0
            settings = (until, int(kwargs.get("max_gen_toks", 256)), temperature, float(kwargs.get("top_p", 1.0)))
            groups.setdefault(settings, []).append(i)
            prompts.append(self.tok_encode(context))
        out = [""] * len(prompts)
        for settings, indices in groups.items():
            for i, (text,) in zip(indices, self.scorer.generate_many([prompts[i] for i in indices], *settings)):
                out[i] = text
        return out


def main() -> None:
    """lm-eval's command line with the `llamaforge` model registered."""
    from lm_eval.__main__ import cli_evaluate

    sys.argv[0] = "lm_eval"
    cli_evaluate()


if __name__ == "__main__":
    # Run under the module's real name, so that the class registered below is the one lm-eval instantiates.
    from llamaforge.eval.harness import main as registered_main

    registered_main()
else:
    import lm_eval.models  # noqa: F401  (lm-eval's built-in models go into the registry first; see the docstring)

    register_model("llamaforge")(LlamaforgeLM)
