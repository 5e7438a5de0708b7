"""Chat formats as token sequences: one renderer for Llama 2, Llama 3 and Jinja `chat_template`s.

A dialog is a list of `{"role": "system" | "user" | "assistant", "content": str}` messages. `ChatFormat.render`
turns it into token ids directly, never into a text that is tokenized afterwards:

- **Control tokens come only from the template.** BOS, EOS and special tokens (`<|start_header_id|>`,
  `<|eot_id|>`, `<|im_start|>` ...) are appended as ids by the format; every message's content is encoded as
  text (`Tokenizer.encode`, special-token splitting off), so `"</s>"` or `"<|eot_id|>"` typed by a user stays
  those characters.
- **Every token knows whether it is part of an assistant answer** (`TokenizedDialog.assistant_mask`): the answer's
  content and the token(s) that end the turn (EOS, `<|eot_id|>`), i.e. what a model is trained to produce when
  finetuned on the dialog (`llamaforge.train.finetune`) and what it generates after the generation prompt.

Formats (`load_chat_format(name, tokenizer)`):

| name      | construction                                                                                      |
|-----------|---------------------------------------------------------------------------------------------------|
| `llama2`  | Meta's Llama-2-chat (`llama/generation.py`, `chat_completion`): a system message goes inside the    |
|           | first user turn as `<<SYS>>\\n...\\n<</SYS>>\\n\\n`; every user/assistant pair is one encode of      |
|           | `"[INST] {user} [/INST] {answer} "` between BOS and EOS; the last user turn is BOS + `"[INST] {user} |
|           | [/INST]"`. Contents are `strip()`ped, as Meta does.                                                 |
| `llama3`  | Meta's Llama 3 `ChatFormat` (`llama/tokenizer.py`): `<|begin_of_text|>`, then per message           |
|           | `<|start_header_id|>` role `<|end_header_id|>` "\\n\\n" content `<|eot_id|>`; the generation prompt    |
|           | is the assistant header. Generation stops at `<|eot_id|>` and `<|end_of_text|>`.                    |
| Jinja     | an HF `chat_template` (a `tokenizer_config.json`, a `.jinja` file or a template string) rendered     |
|           | with jinja2 as transformers renders it (`trim_blocks`, `lstrip_blocks`, sandboxed), see below.      |
| `plain`   | a transcript for base models: BOS, the system text, `User: ...` / `Assistant: ...` lines, ending in |
|           | `Assistant:`; the answer ends at EOS or at the stop string `"\\nUser:"`.                             |
| `chatml`  | `<|im_start|>role\\ncontent<|im_end|>\\n`; needs a tokenizer with those two special tokens.          |
| `auto`    | the Jinja template of a `tokenizer_config.json` beside the tokenizer, else the built-in format it  |
|           | names in `llamaforge_chat_format` (what older `finetune` runs wrote for `llama2`), else `llama3`   |
|           | when the tokenizer has Llama 3's header tokens, else `plain`.                                      |

Every built-in format has a Jinja twin in `ChatFormat.source` (`PLAIN_TEMPLATE`, `CHATML_TEMPLATE`,
`LLAMA2_TEMPLATE`, Llama 3's `formats.hf_tokenizer.LLAMA3_TEMPLATE`): what a finetuned model's tokenizer_config.json
and its HF / GGUF exports carry, rendering the same ids through transformers' `apply_chat_template`. A template
that is exactly one of these sources loads as the built-in format.

**Jinja without injection.** The template is rendered with each message's content replaced by an opaque
placeholder; `trim`, `strip()`, `lstrip()` and `rstrip()` on a placeholder are applied to the real content. The
rendered text is then split: the template's own text is cut at the tokenizer's special-token spellings (those become
control ids), the placeholders become the contents, and each run of text between two control tokens is encoded
once, as transformers' `apply_chat_template` encodes it. A template that inspects the content's characters
(`content.split(...)`, `content | length`) sees the placeholder, not the text.

**The assistant mask inside one encoded run** (Llama 2 encodes `"[INST] q [/INST] answer "` in one call): the answer
starts at the first token that differs from the encoding of the run's text before the answer, and ends likewise.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from llamaforge.errors import UserError
from llamaforge.formats.hf_tokenizer import LLAMA3_TEMPLATE

ROLES = ("system", "user", "assistant")
BUILTIN = ("auto", "plain", "llama2", "llama3", "chatml")


@dataclass(frozen=True)
class TokenizedDialog:
    """A rendered dialog. `ids`: token ids, control tokens included (BOS first when the format has one).
    `assistant_mask`: same length; True on the tokens of assistant answers (content and end-of-turn token), the
    tokens a finetuning loss is computed on. With `add_generation_prompt=True` the ids end with the assistant's
    turn opening (`[/INST]`, the assistant header), ready for generation."""

    ids: list[int]
    assistant_mask: list[bool]


class DialogError(ValueError):
    """A dialog the format cannot render: `field` names the offending part (`messages[2].role`), `reason` says
    why. The server answers it with a 400."""

    def __init__(self, field: str, reason: str):
        super().__init__(f"{field}: {reason}")
        self.field, self.reason = field, reason


# -------------------------------------------------------------------------------------- pieces of a rendering


@dataclass
class _Control:
    id: int
    assistant: bool = False


@dataclass
class _Text:
    """One encode call: text spans, each flagged when it belongs to an assistant answer."""

    spans: list[tuple[str, bool]] = field(default_factory=list)


def _encode_pieces(tokenizer, pieces: Sequence[_Control | _Text]) -> TokenizedDialog:
    ids: list[int] = []
    mask: list[bool] = []
    for piece in pieces:
        if isinstance(piece, _Control):
            ids.append(piece.id)
            mask.append(piece.assistant)
            continue
        text = "".join(s for s, _ in piece.spans)
        if not text:
            continue
        run = tokenizer.encode(text)
        run_mask = [False] * len(run)
        offset = 0
        for s, assistant in piece.spans:
            if assistant and s:
                start = _tokens_before(tokenizer, text, offset, run)
                end = _tokens_before(tokenizer, text, offset + len(s), run) if offset + len(s) < len(text) else len(run)
                for k in range(start, end):
                    run_mask[k] = True
            offset += len(s)
        ids += run
        mask += run_mask
    return TokenizedDialog(ids, mask)


def _tokens_before(tokenizer, text: str, offset: int, run: list[int]) -> int:
    """How many leading tokens of `run` (the encoding of `text`) are the encoding of text[:offset] as well."""
    if offset == 0:
        return 0
    head = tokenizer.encode(text[:offset])
    n = 0
    while n < min(len(head), len(run)) and head[n] == run[n]:
        n += 1
    return n


def _check_messages(messages) -> list[dict]:
    if not isinstance(messages, (list, tuple)) or not messages:
        raise DialogError("messages", "expected a non-empty list of {role, content}")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise DialogError(f"messages[{i}]", "expected an object with role and content")
        if m.get("role") not in ROLES:
            raise DialogError(f"messages[{i}].role", f"expected one of {', '.join(ROLES)}, got {m.get('role')!r}")
        if not isinstance(m.get("content"), str):
            raise DialogError(f"messages[{i}].content", "expected a string")
        out.append({"role": m["role"], "content": m["content"]})
    return out


def _special(tokenizer, name: str, fmt: str) -> int:
    i = tokenizer.special_token_id(name)
    if i is None:
        raise UserError(f"{tokenizer.path}: chat format {fmt!r} needs the special token {name}, which this "
                        "tokenizer does not have")
    return i


# -------------------------------------------------------------------------------------- formats


class ChatFormat:
    """Base of the formats. `stop_ids`: ids that end the assistant's turn in generation; `stop_strings`: text
    that ends it for formats without an end-of-turn token. `name` says which format this is; `source` is the
    format as a Jinja `chat_template` (what HF's tokenizer_config.json and GGUF's `tokenizer.chat_template` carry):
    every built-in format has one that renders the same ids through transformers' `apply_chat_template`."""

    name: str = ""
    source: str | None = None
    stop_ids: frozenset[int] = frozenset()
    stop_strings: list[str] = []

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def render(self, messages: Sequence[dict], add_generation_prompt: bool = True) -> TokenizedDialog:
        """Token ids and assistant mask of `messages`; raises DialogError for a dialog the format cannot hold.
        `add_generation_prompt`: end with the opening of an assistant turn (for generation); False for a
        finished dialog (finetuning)."""
        return _encode_pieces(self.tokenizer, self.pieces(_check_messages(messages), add_generation_prompt))

    def pieces(self, messages: list[dict], add_generation_prompt: bool) -> list[_Control | _Text]:
        """The dialog as a list of control tokens and text pieces, in order; each subclass implements its format.
        Raises DialogError naming the message and what was expected.
        """
        raise NotImplementedError


# Meta's Llama-2-chat construction as a Jinja `chat_template`, for the HF and GGUF exports of a model finetuned or
# served with `llama2` (`Llama2Chat` is the token-level original). Same text as `chat_completion`: the system
# message inside the first [INST] between <<SYS>> markers, unstripped; the merged first user turn `.strip()`ped as a
# whole (when the user's text is blank that also eats the "\n\n" after <</SYS>>); every other content stripped;
# user/assistant alternation and "generate after a user message" raise, as Meta asserts. Rendered as text and
# tokenized in one call (transformers' `apply_chat_template`), it gives Llama2Chat's ids because the SentencePiece
# `tokenizer.json` prepends "▁" to the text after every special token, as Meta's per-exchange `encode` does
# (tests/test_train_finetune.py compares them through transformers on the HF export).
LLAMA2_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}"
    "{% set system = '<<SYS>>\\n' + messages[0]['content'] + '\\n<</SYS>>\\n\\n' %}"
    "{% set loop_messages = messages[1:] %}"
    "{% if not loop_messages %}{{ raise_exception('a system message must be followed by a user message') }}"
    "{% endif %}"
    "{% else %}{% set system = '' %}{% set loop_messages = messages %}{% endif %}"
    "{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('user and assistant alternate, after an optional first system message') }}{% endif %}"
    "{% if message['role'] == 'user' %}"
    "{% if loop.first and system and (message['content'] | trim) == '' %}{% set text = system | trim %}"
    "{% elif loop.first and system %}{% set text = system + message['content'].rstrip() %}"
    "{% else %}{% set text = message['content'] | trim %}{% endif %}"
    "{{ bos_token + '[INST] ' + text + ' [/INST]' }}"
    "{% else %}{{ ' ' + (message['content'] | trim) + ' ' + eos_token }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt and loop_messages[-1]['role'] == 'assistant' %}"
    "{{ raise_exception('the llama2 format generates after a user message') }}{% endif %}"
)


class Llama2Chat(ChatFormat):
    """Meta's Llama-2-chat construction (see the module docstring); BOS/EOS are the tokenizer's. `source` is the
    same format as a Jinja template (`LLAMA2_TEMPLATE`), what the exports carry."""

    name = "llama2"
    source = LLAMA2_TEMPLATE
    B_INST, E_INST = "[INST]", "[/INST]"
    B_SYS, E_SYS = "<<SYS>>\n", "\n<</SYS>>\n\n"

    def __init__(self, tokenizer):
        super().__init__(tokenizer)
        if tokenizer.bos_id < 0 or tokenizer.eos_id < 0:
            raise UserError(f"{tokenizer.path}: chat format 'llama2' needs BOS and EOS tokens")
        self.stop_ids = frozenset({tokenizer.eos_id})

    def pieces(self, messages, add_generation_prompt):
        """Meta's Llama 2 chat layout: [INST] ... [/INST] turns, the system prompt inside the first one (<<SYS>>),
        BOS/EOS around each exchange.
        """
        if messages[0]["role"] == "system":
            if len(messages) < 2 or messages[1]["role"] != "user":
                raise DialogError("messages[1].role", "a system message must be followed by a user message")
            merged = self.B_SYS + messages[0]["content"] + self.E_SYS + messages[1]["content"]
            messages = [{"role": "user", "content": merged}] + messages[2:]
        for i, m in enumerate(messages):
            want = "user" if i % 2 == 0 else "assistant"
            if m["role"] != want:  # Meta asserts user/assistant alternation after the optional system message
                raise DialogError(f"messages[{i}].role", f"expected {want!r} (user and assistant alternate, "
                                  "after an optional first system message)")
        bos, eos = self.tokenizer.bos_id, self.tokenizer.eos_id
        out: list[_Control | _Text] = []
        for k in range(0, len(messages) - 1, 2):
            user, answer = messages[k]["content"].strip(), messages[k + 1]["content"].strip()
            out += [_Control(bos),
                    _Text([(f"{self.B_INST} {user} {self.E_INST} ", False), (answer, True), (" ", True)]),
                    _Control(eos, assistant=True)]
        if len(messages) % 2 == 1:
            out += [_Control(bos), _Text([(f"{self.B_INST} {messages[-1]['content'].strip()} {self.E_INST}", False)])]
        elif add_generation_prompt:
            raise DialogError(f"messages[{len(messages) - 1}].role",
                              "the llama2 format generates after a user message; the last message is the assistant's")
        return out


class Llama3Chat(ChatFormat):
    """Meta's Llama 3 ChatFormat (see the module docstring); `source`: the same as a Jinja template
    (`formats.hf_tokenizer.LLAMA3_TEMPLATE`), what the exports carry."""

    name = "llama3"
    source = LLAMA3_TEMPLATE

    def __init__(self, tokenizer):
        super().__init__(tokenizer)
        self.begin = _special(tokenizer, "<|begin_of_text|>", self.name)
        self.start_header = _special(tokenizer, "<|start_header_id|>", self.name)
        self.end_header = _special(tokenizer, "<|end_header_id|>", self.name)
        self.eot = _special(tokenizer, "<|eot_id|>", self.name)
        self.stop_ids = frozenset({self.eot, _special(tokenizer, "<|end_of_text|>", self.name)})

    def _header(self, role: str) -> list[_Control | _Text]:
        # Meta encodes the role and "\n\n" in separate calls
        return [_Control(self.start_header), _Text([(role, False)]), _Control(self.end_header), _Text([("\n\n", False)])]

    def pieces(self, messages, add_generation_prompt):
        """Meta's Llama 3 layout: <|begin_of_text|>, then per message a header
        (<|start_header_id|>role<|end_header_id|>\n\n), the stripped content and <|eot_id|>.
        """
        out: list[_Control | _Text] = [_Control(self.begin)]
        for m in messages:
            answer = m["role"] == "assistant"
            out += self._header(m["role"])
            out += [_Text([(m["content"].strip(), answer)]), _Control(self.eot, assistant=answer)]
        if add_generation_prompt:
            out += self._header("assistant")
        return out


# -------------------------------------------------------------------------------------- Jinja

PLAIN_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{% if m.role == 'system' %}{{ m.content }}\n\n"
    "{% elif m.role == 'user' %}User: {{ m.content }}\n{% else %}Assistant: {{ m.content }}\n{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}"
)
CHATML_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_OPEN, _CLOSE = "\ue000", "\ue001"  # private-use characters around a placeholder's number
_PLACEHOLDER = re.compile(f"{_OPEN}(\\d+){_CLOSE}")


class _Content(str):
    """A message's content as the template sees it: its placeholder. Stripping strips the real content."""

    def __new__(cls, registry: list, text: str, role: str):
        obj = super().__new__(cls, f"{_OPEN}{len(registry)}{_CLOSE}")
        registry.append((text, role))
        obj.registry, obj.text, obj.role = registry, text, role
        return obj

    def strip(self, chars=None):
        return _Content(self.registry, self.text.strip(chars), self.role)

    def lstrip(self, chars=None):
        return _Content(self.registry, self.text.lstrip(chars), self.role)

    def rstrip(self, chars=None):
        return _Content(self.registry, self.text.rstrip(chars), self.role)


def _trim(value, chars=None):
    return value.strip(chars) if isinstance(value, _Content) else str(value).strip(chars)


def _token_text(value) -> str | None:
    """bos_token / eos_token of a tokenizer_config.json: a string or {"content": ...}."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


class JinjaChat(ChatFormat):
    """An HF `chat_template`, rendered with control tokens only from the template (module docstring).

    `bos_token`/`eos_token` (template variables) come from the tokenizer_config.json when given, else from the
    tokenizer's BOS/EOS. The end-of-turn token is found by rendering a probe dialog: the control token that follows
    the assistant's content; generation stops at it and at EOS."""

    def __init__(self, tokenizer, source: str, name: str = "jinja", config: dict | None = None):
        import jinja2
        import jinja2.ext
        import jinja2.sandbox

        super().__init__(tokenizer)
        self.name, self.source = name, source
        names = {v: k for k, v in tokenizer.specials.items()}
        config = config or {}
        self.variables = {
            "bos_token": _token_text(config.get("bos_token")) or names.get(tokenizer.bos_id, ""),
            "eos_token": _token_text(config.get("eos_token")) or names.get(tokenizer.eos_id, ""),
        }
        # transformers' settings (chat_template_utils): sandboxed, trim_blocks, lstrip_blocks, loop controls.
        env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                                           extensions=[jinja2.ext.loopcontrols])
        env.filters["trim"] = _trim
        env.filters["tojson"] = lambda x, indent=None: json.dumps(x, ensure_ascii=False, indent=indent)

        def raise_exception(message):
            raise jinja2.exceptions.TemplateError(message)

        env.globals["raise_exception"] = raise_exception
        try:
            self._template = env.from_string(source)
        except jinja2.TemplateError as e:
            raise UserError(f"chat template {name}: not a valid Jinja template ({e})") from None
        specials = sorted(tokenizer.specials, key=len, reverse=True)  # longest spelling first
        self._split = re.compile("(" + "|".join(map(re.escape, specials)) + ")") if specials else None
        stops = {tokenizer.eos_id} if tokenizer.eos_id >= 0 else set()
        eos = tokenizer.special_token_id(self.variables["eos_token"])
        if eos is not None:
            stops.add(eos)
        try:
            probe = self.pieces([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], False)
        except DialogError:
            probe = []
        for k, piece in enumerate(probe):
            if isinstance(piece, _Text) and any(a for _, a in piece.spans) and k + 1 < len(probe):
                if isinstance(probe[k + 1], _Control):
                    stops.add(probe[k + 1].id)
                break
        self.stop_ids = frozenset(stops)
        self.stop_strings = []

    def pieces(self, messages, add_generation_prompt):
        """The tokenizer's own Jinja `chat_template` rendered with the messages, content kept as text pieces so that
        nothing a user wrote can become a control token.
        """
        import jinja2

        registry: list[tuple[str, str]] = []
        shown = [{"role": m["role"], "content": _Content(registry, m["content"], m["role"])} for m in messages]
        try:
            text = self._template.render(messages=shown, add_generation_prompt=add_generation_prompt,
                                         **self.variables)
        except jinja2.TemplateError as e:
            raise DialogError("messages", f"the chat template refused this dialog ({e})") from None
        out: list[_Control | _Text] = []
        current = _Text()
        pending_end = False  # inside template text that follows an assistant answer, before the next control
        for k, part in enumerate(_PLACEHOLDER.split(text)):
            if k % 2 == 1:  # a placeholder: a message's content, encoded as text
                content, role = registry[int(part)]
                current.spans.append((content, role == "assistant"))
                pending_end = role == "assistant"
                continue
            for j, chunk in enumerate(self._split.split(part) if self._split else [part]):
                if j % 2 == 1:  # the template's own special token
                    if current.spans:
                        out.append(current)
                        current = _Text()
                    out.append(_Control(self.tokenizer.specials[chunk], assistant=pending_end))
                    pending_end = False
                elif chunk:
                    # whitespace between an answer and its end-of-turn token belongs to the answer
                    current.spans.append((chunk, pending_end and not chunk.strip()))
                    pending_end = pending_end and not chunk.strip()
        if current.spans:
            out.append(current)
        return out


def _config_template(path: Path) -> tuple[str, dict]:
    """(chat_template, the whole config) of a tokenizer_config.json, read by the formats' one reader."""
    from llamaforge.formats import chat_template_in, read_tokenizer_config

    config = read_tokenizer_config(path)
    template = chat_template_in(config, path)
    if template is None:
        raise UserError(f"{path}: chat_template: expected a Jinja template string; the file has none")
    return template, config


def template_choices(sep: str = ", ") -> str:
    """What a chat-template name may be, for help texts and errors: the `BUILTIN` names joined by `sep`, then the
    files and strings `load_chat_format` reads (the one list: a new built-in shows up in every --help)."""
    return f"{sep.join(BUILTIN)}, a tokenizer_config.json, a Jinja file or a Jinja template string"


def check_name(name: str, flag: str | None = None) -> None:
    """Refuse (UserError) a chat-format name that cannot be one, before anything is loaded; the message names `flag`
    (`--template`, `--chat-template`, `finetune.template`) when given."""
    if name not in BUILTIN and not Path(name).is_file() and "{{" not in name and "{%" not in name:
        where = f"{flag}: " if flag else ""
        raise UserError(f"{where}chat template {name!r}: expected one of {template_choices()} (no such file)")


def load_chat_format(name: str, tokenizer) -> ChatFormat:
    """The chat format `name` for `tokenizer`: one of `BUILTIN`, a `tokenizer_config.json` (its `chat_template`),
    a `.jinja` file, or a Jinja template string. Raises UserError (one line) for an unknown name, a broken
    template, or a tokenizer that lacks the format's special tokens."""
    folder = Path(getattr(tokenizer, "path", ".")).parent
    if name == "auto":
        from llamaforge.formats import TOKENIZER_CONFIG, chat_template_in, read_tokenizer_config

        config = folder / TOKENIZER_CONFIG
        settings = read_tokenizer_config(config) if config.is_file() else {}
        template = chat_template_in(settings, config)
        if template is not None:
            return _jinja_or_builtin(tokenizer, template, str(config), settings)
        if "llamaforge_chat_format" in settings:  # a built-in recorded by name (finetune before it wrote Jinja)
            recorded = settings["llamaforge_chat_format"]
            if recorded not in BUILTIN or recorded == "auto":
                raise UserError(f"{config}: llamaforge_chat_format: expected one of "
                                f"{', '.join(b for b in BUILTIN if b != 'auto')}, got {recorded!r}")
            return load_chat_format(recorded, tokenizer)
        if tokenizer.special_token_id("<|start_header_id|>") is not None:
            return Llama3Chat(tokenizer)
        name = "plain"
    if name == "llama2":
        return Llama2Chat(tokenizer)
    if name == "llama3":
        return Llama3Chat(tokenizer)
    if name == "plain":
        fmt = JinjaChat(tokenizer, PLAIN_TEMPLATE, name="plain")
        fmt.stop_strings = ["\nUser:"]
        return fmt
    if name == "chatml":
        for special in ("<|im_start|>", "<|im_end|>"):
            _special(tokenizer, special, "chatml")
        return JinjaChat(tokenizer, CHATML_TEMPLATE, name="chatml")
    path = Path(name)
    if path.suffix == ".json" and path.is_file():
        source, config = _config_template(path)
        return _jinja_or_builtin(tokenizer, source, str(path), config)
    if path.is_file():
        from llamaforge.formats import TOKENIZER_CONFIG, read_tokenizer_config

        config_path = path.parent / TOKENIZER_CONFIG
        config = read_tokenizer_config(config_path) if config_path.is_file() else {}
        from llamaforge.io import read_text

        return _jinja_or_builtin(tokenizer, read_text(path), str(path), config)
    check_name(name)
    return _jinja_or_builtin(tokenizer, name, "template string", {})


def _jinja_or_builtin(tokenizer, source: str, name: str, config: dict) -> ChatFormat:
    """A Jinja template as a `JinjaChat`; one that is exactly a built-in format's `source` (our own export:
    finetune's final/, an HF or GGUF export) as that built-in: the token-level original (llama2's blank first user
    turn after a system prompt, which a placeholder cannot see) with its stop strings (plain's "\\nUser:")."""
    known = {PLAIN_TEMPLATE: "plain", CHATML_TEMPLATE: "chatml", LLAMA2_TEMPLATE: "llama2",
             LLAMA3_TEMPLATE: "llama3"}
    if source in known:
        return load_chat_format(known[source], tokenizer)
    return JinjaChat(tokenizer, source, name=name, config=config)
