"""Models that produce chosen token ids, for testing what the inference surfaces do with them (text, streaming,
logprobs), independently of what a trained model would happen to say."""

from __future__ import annotations

import torch

from llamaforge.model import ModelArgs, Transformer


def bigram_model(vocab_size: int, transitions: dict[int, list[int]], dim: int = 16, max_seq_len: int = 64,
                 rows: int | None = None) -> Transformer:
    """A real one-layer Transformer whose greedy next token depends only on the current one: after token a it
    ranks transitions[a][0] first, transitions[a][1] second, ... (others: id 0). Attention and FFN write nothing
    into the residual stream (wo = w2 = 0), so logits = output(norm(embedding)). rows: embedding rows (>=
    vocab_size, for a padded vocabulary); it is a plain model, saved and loaded like any other."""
    rows = rows or vocab_size
    assert len(transitions) <= dim
    model = Transformer(ModelArgs(dim=dim, n_layers=1, n_heads=2, vocab_size=rows, multiple_of=16,
                                  max_seq_len=max_seq_len))
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.norm.weight.fill_(1.0)
        model.layers[0].attention_norm.weight.fill_(1.0)
        model.layers[0].ffn_norm.weight.fill_(1.0)
        for k, (a, nexts) in enumerate(transitions.items()):
            model.tok_embeddings.weight[a, k] = 1.0
            for rank, b in enumerate(nexts):
                model.output.weight[b, k] = 10.0 - rank
    return model.eval()


class ScriptedModel(Transformer):
    """A tiny real Transformer whose logits are replaced by a script: the token after position p is
    script[p - prompt_len + 1] (clamped to the script), so a request with a prompt of prompt_len tokens generates
    exactly `script`. For the text surfaces only (the engine cannot tell it from a trained model)."""

    def __init__(self, vocab_size: int, script: list[int], prompt_len: int, max_seq_len: int = 256):
        super().__init__(ModelArgs(dim=8, n_layers=1, n_heads=1, vocab_size=vocab_size, multiple_of=8,
                                   max_seq_len=max_seq_len))
        self.script, self.prompt_len = torch.tensor(script), prompt_len

    def forward(self, tokens, input_pos=None):
        logits = super().forward(tokens, input_pos)
        if input_pos is None:
            input_pos = torch.arange(tokens.shape[1]).expand(tokens.shape[0], -1)
        index = (input_pos - self.prompt_len + 1).clamp(0, len(self.script) - 1)
        return torch.zeros_like(logits).scatter_(-1, self.script[index][..., None], 1.0)


class TableModel(ScriptedModel):
    """A ScriptedModel driven by position alone: the token after position p is table[p] (default: `default`).
    Requests whose prompts have different lengths thus get different scripted outputs from one model, in one
    batch."""

    def __init__(self, vocab_size: int, table: dict[int, int], default: int, max_seq_len: int = 2048):
        script = [table.get(p, default) for p in range(max_seq_len)]
        super().__init__(vocab_size, script, prompt_len=1, max_seq_len=max_seq_len)
