"""Instruction finetuning data (the paper's Section 4, LLaMA-I): read examples, render them with a chat
template into token ids plus a loss mask, and serve them to the one training loop (`train.trainer`).

A pipeline of named steps, each counting what it dropped and why:
1. read: Alpaca JSON (a list) or JSONL ({"instruction", "input", "output"}), chat JSONL
   ({"messages": [{"role", "content"}, ...]}, OpenAI's and HF's form) or prompt/completion JSONL; each record
   becomes a list of messages. A record of none of these shapes is a one-line `FILE:LINE: expected ...` error.
2. no_response: an example with no (or an empty) assistant turn has nothing to learn from: dropped, counted.
3. render: the chat format (`infer.templates`, the server's) turns the messages into token ids and a mask that is
   True exactly on the tokens of the assistant turns and their end-of-turn tokens; prompt and template tokens are
   masked (target -100). A dialog the format cannot hold (e.g. llama2 without user/assistant alternation) is a
   one-line error naming the record.
4. overflow: an example longer than the context (data.seq_len + 1 tokens) has its response truncated or the
   example dropped (`finetune.overflow`); one whose prompt alone fills the context is always dropped.

Batches: no packing. Each row is one example, right-padded to the longest row of its micro-batch, with target
-100 on padding; causal attention never lets a position see the padding after it, so examples never attend to
each other and the result does not depend on the batch's padding (hence not on the number of processes).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from llamaforge.errors import UserError

IGNORE = -100  # target id that cross_entropy ignores


# ---------------------------------------------------------------------------------------------- 1. read


def _messages(obj, where: str) -> list[dict] | None:
    """The messages of one record; None when its response is empty; UserError when its shape is unknown."""
    if not isinstance(obj, dict):
        raise UserError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    if "messages" in obj:  # chat
        msgs = obj["messages"]
        if not isinstance(msgs, list) or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in msgs
        ):
            raise UserError(f"{where}: messages: expected a list of {{\"role\": str, \"content\": str}}")
        for m in msgs:
            if m["role"] not in ("system", "user", "assistant"):
                raise UserError(f"{where}: messages: role {m['role']!r}: expected system, user or assistant")
        if not any(m["role"] == "assistant" and m["content"].strip() for m in msgs):
            return None
        return [{"role": m["role"], "content": m["content"]} for m in msgs]
    if "instruction" in obj and "output" in obj:  # Alpaca
        inp = obj.get("input") or ""
        if not all(isinstance(v, str) for v in (obj["instruction"], obj["output"], inp)):
            raise UserError(f"{where}: instruction, input, output: expected strings")
        if not obj["output"].strip():
            return None
        user = obj["instruction"] + (f"\n\n{inp}" if inp.strip() else "")  # Alpaca's input follows its instruction
        return [{"role": "user", "content": user}, {"role": "assistant", "content": obj["output"]}]
    if "prompt" in obj and "completion" in obj:  # prompt/completion pairs
        if not (isinstance(obj["prompt"], str) and isinstance(obj["completion"], str)):
            raise UserError(f"{where}: prompt, completion: expected strings")
        if not obj["completion"].strip():
            return None
        return [{"role": "user", "content": obj["prompt"]}, {"role": "assistant", "content": obj["completion"]}]
    raise UserError(f"{where}: expected {{\"messages\": [...]}}, {{\"instruction\", \"input\", \"output\"}} or "
                    f"{{\"prompt\", \"completion\"}}, got keys {sorted(obj)[:6]}")


def read_records(path) -> list[tuple[str, object]]:
    """(location 'FILE:LINE' or 'FILE[i]', record) for every record of a JSON list (Alpaca's alpaca_data.json) or
    a JSONL file, plain or gzip. JSONL goes through the project's one reader (`llamaforge.io.read_jsonl`: a line
    that is not a JSON object is a `FILE:LINE` UserError); an unreadable file, a binary one ("found binary data at
    byte N", `io.read_text`) or a JSON list that does not parse is a UserError too."""
    from llamaforge.io import STREAM_ERRORS, open_binary, read_jsonl, read_text

    path = Path(path)
    try:
        with open_binary(path) as f:
            is_list = f.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"[")
    except STREAM_ERRORS as e:
        raise UserError(f"{path}: cannot read ({e})") from None
    if is_list:
        text = read_text(path).removeprefix("\ufeff")  # the one text reader: binary refused at byte N; BOM dropped
        try:
            records = json.loads(text)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{e.lineno}: not valid JSON ({e})") from None
        return [(f"{path}[{i}]", r) for i, r in enumerate(records)]
    out = [(f"{path}:{lineno}", obj) for lineno, obj in read_jsonl(path)]
    if not out:
        raise UserError(f"{path}: no examples")
    return out


# ---------------------------------------------------------------------------------------------- 3. render


def render(fmt, messages: list[dict], where: str = "example") -> tuple[list[int], list[bool]]:
    """Token ids of a finished dialog and its loss mask, through the chat format the server uses
    (`llamaforge.infer.templates`, control tokens only from the format): the mask is True on the assistant turns'
    tokens and their end-of-turn tokens. A format whose assistant turn ends in text rather than a control token
    (`plain`: the server stops at EOS or at "\nUser:") gets an EOS after the last answer, trained too, so the
    model learns to end its turn. A dialog the format cannot hold is a UserError naming `where`."""
    from llamaforge.infer.templates import DialogError

    try:
        dialog = fmt.render(messages, add_generation_prompt=False)
    except DialogError as e:
        raise UserError(f"{where}: {e}") from None
    ids, mask = list(dialog.ids), list(dialog.assistant_mask)
    eos = fmt.tokenizer.eos_id
    if messages[-1]["role"] == "assistant" and ids and ids[-1] not in fmt.stop_ids and eos >= 0:
        ids.append(eos)
        mask.append(True)
    return ids, mask


# ---------------------------------------------------------------------------------------------- the pipeline


@dataclass
class Examples:
    """Rendered examples and what each step dropped: counts, and the first location of each kind of drop."""

    ids: list[list[int]] = field(default_factory=list)
    masks: list[list[bool]] = field(default_factory=list)
    read: int = 0
    dropped: dict = field(default_factory=dict)  # reason -> count
    first: dict = field(default_factory=dict)  # reason -> location of the first one
    truncated: int = 0
    pad_id: int = 0  # input id of padding positions (their targets are -100): the tokenizer's EOS

    def drop(self, reason: str, where: str) -> None:
        """Count one example dropped for `reason`; `where` (FILE:LINE) is kept for the first drop of each reason."""
        self.dropped[reason] = self.dropped.get(reason, 0) + 1
        self.first.setdefault(reason, where)

    def summary(self, path, seq_len: int) -> list[str]:
        """One line per fact: how many read and kept, then each kind of drop / truncation."""
        lines = [f"{path}: {self.read} examples read, {len(self.ids)} kept"]
        for reason, n in self.dropped.items():
            lines.append(f"{path}: dropped {n} {reason} (first: {self.first[reason]})")
        if self.truncated:
            lines.append(f"{path}: truncated the response of {self.truncated} examples longer than the context "
                         f"({seq_len + 1} tokens)")
        return lines


def build_examples(path, fmt, seq_len: int, overflow: str = "truncate", max_examples: int = 0) -> Examples:
    """Run the pipeline over a file: read, drop empty responses, render with the chat format `fmt`
    (`infer.templates.load_chat_format`), fit to seq_len + 1 tokens."""
    out = Examples(pad_id=max(fmt.tokenizer.eos_id, 0))
    records = read_records(path)
    if max_examples:
        records = records[:max_examples]
    for where, obj in records:
        out.read += 1
        msgs = _messages(obj, where)
        if msgs is None:
            out.drop("with no response", where)
            continue
        ids, mask = render(fmt, msgs, where)
        if len(ids) > seq_len + 1:
            first_trained = mask.index(True)
            if overflow == "drop" or first_trained >= seq_len + 1:  # nothing of the response would be left
                out.drop("longer than the context" if overflow == "drop" else "whose prompt fills the context", where)
                continue
            ids, mask = ids[: seq_len + 1], mask[: seq_len + 1]
            out.truncated += 1
        out.ids.append(ids)
        out.masks.append(mask)
    if not out.ids:
        why = ", ".join(f"{n} {r}" for r, n in out.dropped.items()) or "the file holds no examples"
        raise UserError(f"{path}: no usable examples ({why}); expected Alpaca records, chat JSONL or "
                        "prompt/completion JSONL")
    return out


def show_example(tokenizer, ids: list[int], mask: list[bool]) -> str:
    """One example's tokens, the masked spans (no loss) in [[...]] and the trained spans plain, then the counts."""
    out, i = [], 0
    while i < len(ids):
        j = i
        while j < len(ids) and mask[j] == mask[i]:
            j += 1
        pieces = "".join(tokenizer.id_to_piece(t) for t in ids[i:j]).replace("\u2581", " ")
        out.append(pieces if mask[i] else f"[[{pieces}]]")
        i = j
    n = sum(mask)
    return (f"{''.join(out)}\n-- {len(ids)} tokens: {len(ids) - n} masked (in [[ ]]: prompt and template), "
            f"{n} trained (response)")


# ---------------------------------------------------------------------------------------------- the loader


def to_pair(ids: list[int], mask: list[bool]) -> tuple[list[int], list[int]]:
    """(inputs, targets) of one example: targets are the next tokens where the next token is trained, else -100."""
    return ids[:-1], [t if m else IGNORE for t, m in zip(ids[1:], mask[1:])]


def collate(pairs: list[tuple[list[int], list[int]]], pad_id: int,
            multiple: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad a micro-batch to its longest row, rounded up to a multiple of `multiple` (the tensor-parallel
    degree: sequence parallelism splits every sequence evenly across its ranks): inputs [B, T] (pad_id), targets
    [B, T] (-100 on padding)."""
    width = -(-max(len(x) for x, _ in pairs) // multiple) * multiple
    x = torch.full((len(pairs), width), pad_id, dtype=torch.long)
    y = torch.full((len(pairs), width), IGNORE, dtype=torch.long)
    for r, (xi, yi) in enumerate(pairs):
        x[r, : len(xi)] = torch.tensor(xi)
        y[r, : len(yi)] = torch.tensor(yi)
    return x, y


class InstructionLoader:
    """Masked examples in the trainer's loader interface (`next_batch`, `val_batches`, state, stats).

    The examples are split once (seeded) into train and held-out sets. Training order: a fresh seeded
    permutation per epoch; global example k of the run is the k-th of that order, and process `rank` of
    `world_size` takes its block of each global batch (as `SyntheticLoader` does), so the position is one global
    counter and any layout sees the same examples per step."""

    def __init__(self, examples: Examples, batch_size: int, seed: int, val_examples: int, pad_id: int,
                 rank: int = 0, world_size: int = 1, width_multiple: int = 1):
        n = len(examples.ids)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
        n_val = min(val_examples, n // 2)
        pairs = [to_pair(examples.ids[i], examples.masks[i]) for i in order]
        self.val, self.train = pairs[:n_val], pairs[n_val:]
        self.batch_size, self.seed, self.pad_id = batch_size, seed, pad_id
        self.rank, self.world_size = rank, world_size
        self.width_multiple = width_multiple  # batch widths a multiple of this (the tensor-parallel degree)
        self.seq_index = 0
        self._perm_epoch, self._perm = -1, []

    def _example(self, k: int):
        epoch, i = divmod(k, len(self.train))
        if epoch != self._perm_epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch + 1)
            self._perm, self._perm_epoch = torch.randperm(len(self.train), generator=g).tolist(), epoch
        return self.train[self._perm[i]]

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's block of the next global batch: (inputs, targets) LongTensor[batch_size, T], right-padded to
        the longest row, targets -100 on prompt, template and padding positions.
        """
        first = self.seq_index + self.rank * self.batch_size
        batch = collate([self._example(k) for k in range(first, first + self.batch_size)], self.pad_id,
                        self.width_multiple)
        self.seq_index += self.batch_size * self.world_size
        return batch

    def val_batches(self, n: int):
        """Batches of `batch_size` covering the whole held-out set (`finetune.val_examples` examples; `n`, the
        pretraining `metrics.val_batches`, is not used), the same on every process (not sharded, as
        `Loader.val_batches` asks), so the validation loss does not depend on the layout."""
        for first in range(0, len(self.val), self.batch_size):
            yield collate(self.val[first:first + self.batch_size], self.pad_id, self.width_multiple)

    def val_bytes_per_token(self) -> None:
        """None: the loss is over response tokens only, so bits per byte of the text would not mean what it says."""

    def state_dict(self) -> dict:
        """The position: global examples consumed so far (the epoch's permutation follows from the seed)."""
        return {"seq_index": self.seq_index}

    def load_state_dict(self, state: dict) -> None:
        """Resume at a position from `state_dict`."""
        self.seq_index = int(state["seq_index"])

    def stats(self) -> dict:
        """{"instructions": share 1.0, epochs so far, training and held-out example counts} (data_stats.json)."""
        return {"instructions": {"share": 1.0, "epochs": self.seq_index / max(len(self.train), 1),
                                 "examples": len(self.train), "held_out": len(self.val)}}
