"""Peer-side adapters shared by the parity tests and bench/eval_mc.py (not part of the package: only comparisons
against peers need them)."""

from __future__ import annotations


def hf_tokenizer(tok):
    """One of our tokenizers behind transformers' tokenizer API, for lm-eval's HF backend on an HF export whose
    tokenizer transformers cannot read (e.g. llama2.c's tokenizer.bin). Tokens are spelled "<id>", BOS / EOS
    "<s>" / "</s>" (lm-eval adds no BOS to a string that starts with BOS's text, so that text must not be empty)."""
    import transformers

    class TokenizerForHF(transformers.PreTrainedTokenizer):
        def __init__(self, **kwargs):
            self.tok = tok
            super().__init__(bos_token="<s>", eos_token="</s>", **kwargs)

        @property
        def vocab_size(self):
            return tok.vocab_size

        def get_vocab(self):
            return {self._convert_id_to_token(i): i for i in range(tok.vocab_size)}

        def _tokenize(self, text, **kwargs):
            return [self._convert_id_to_token(i) for i in tok.encode(text)]

        def _convert_token_to_id(self, token):
            return {"<s>": tok.bos_id, "</s>": tok.eos_id}.get(token) or int(token[1:-1])

        def _convert_id_to_token(self, i):
            return {tok.bos_id: "<s>", tok.eos_id: "</s>"}.get(i, f"<{i}>")

        def convert_tokens_to_string(self, tokens):
            text, run = "", []
            for t in [*tokens, None]:
                if t in ("<s>", "</s>", None):  # special tokens are spelled out, the rest decoded run by run
                    text += tok.decode(run) + (t or "")
                    run = []
                else:
                    run.append(self._convert_token_to_id(t))
            return text

        def build_inputs_with_special_tokens(self, ids, ids_b=None):
            return [tok.bos_id] + ids + (ids_b or [])

    return TokenizerForHF()
