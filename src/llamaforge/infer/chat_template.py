"""Chat templates: how a list of {role, content} messages becomes one prompt (Jinja, like HF's `chat_template`).

A base LLaMA was never trained on a chat format, so the default is a plain transcript ("User: ... Assistant:")
that a base model continues sensibly; "chatml" and "llama2" are the common fine-tuned formats. Each template
comes with the stop strings that end the assistant's turn.
"""

from __future__ import annotations

from pathlib import Path

import jinja2

from llamaforge.errors import UserError

TEMPLATES = {
    "plain": (
        "{% for m in messages %}{% if m.role == 'system' %}{{ m.content }}\n\n"
        "{% elif m.role == 'user' %}User: {{ m.content }}\n{% else %}Assistant: {{ m.content }}\n{% endif %}"
        "{% endfor %}Assistant:"
    ),
    "chatml": (
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
        "<|im_start|>assistant\n"
    ),
    "llama2": (
        "{% for m in messages %}{% if m.role == 'system' %}<<SYS>>\n{{ m.content }}\n<</SYS>>\n\n"
        "{% elif m.role == 'user' %}[INST] {{ m.content }} [/INST]{% else %} {{ m.content }} </s>{% endif %}"
        "{% endfor %}"
    ),
}
STOPS = {"plain": ["\nUser:"], "chatml": ["<|im_end|>"], "llama2": ["[INST]"]}


class ChatTemplate:
    """`name`: one of TEMPLATES, a path to a Jinja file, or a Jinja template string."""

    def __init__(self, name: str = "plain"):
        if name in TEMPLATES:
            self.source, self.stops = TEMPLATES[name], STOPS[name]
        elif Path(name).is_file():
            self.source, self.stops = Path(name).read_text(), []
        elif "{{" in name or "{%" in name:
            self.source, self.stops = name, []
        else:
            raise UserError(f"chat template {name!r}: expected one of {', '.join(TEMPLATES)}, a Jinja file or a "
                            "Jinja template string")
        try:
            self._template = jinja2.Environment(undefined=jinja2.StrictUndefined).from_string(self.source)
        except jinja2.TemplateError as e:
            raise UserError(f"chat template: not a valid Jinja template ({e})") from None

    def render(self, messages: list[dict]) -> str:
        """The prompt text; raises ValueError when the template fails on these messages."""
        try:
            return self._template.render(messages=messages)
        except jinja2.TemplateError as e:
            raise ValueError(f"the chat template failed: {e}") from None
