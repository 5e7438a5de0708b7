"""`llamaforge chat MODEL [--tokenizer PATH]`: an interactive chat in the terminal.

Each turn renders the whole conversation with the chat template and streams the reply as it is generated.
Commands: /reset forgets the conversation, /exit (or end of input) quits."""

from __future__ import annotations

import sys

from llamaforge.commands.args import (
    add_chat_template_argument,
    add_model_arguments,
    add_sampling_arguments,
    check_sampling,
    load_engine,
)


def add_arguments(parser) -> None:
    """MODEL and the shared model/engine arguments (`commands.args`), --chat-template, then the chat's own: --system,
    --max-new-tokens (256), --temperature (0.7; 0 is greedy), --top-k (0: off), --top-p (0.9), --seed."""
    add_model_arguments(parser)
    add_chat_template_argument(parser)
    parser.add_argument("--system", default=None, help="a system message to start the conversation with")
    add_sampling_arguments(parser, max_new_tokens=256, temperature=0.7, top_p=0.9)


def run(args) -> int:
    """The chat loop: one user message per stdin line until `/exit` or end of input (`/reset` forgets the turns), the
    whole conversation rendered by the chat template each turn, the oldest turns dropped when the prompt no longer
    fits the context, the reply streamed to stdout. Returns 0. Raises UserError for bad sampling flags, an unknown
    template (before the model is loaded), or one message longer than the whole context."""
    from llamaforge.errors import UserError
    from llamaforge.infer import Request, SamplingParams
    from llamaforge.infer.templates import check_name, load_chat_format

    check_sampling(args, min_new_tokens=1)
    check_name(args.chat_template, "--chat-template")
    engine = load_engine(args, max_batch=1)
    tok = engine.tokenizer
    template = load_chat_format(args.chat_template, tok)
    start = [{"role": "system", "content": args.system}] if args.system else []
    messages = list(start)

    def show(_, piece: str) -> None:
        sys.stdout.write(piece)
        sys.stdout.flush()

    interactive = sys.stdin.isatty()
    while True:
        if interactive:
            sys.stdout.write("> ")
            sys.stdout.flush()
        line = sys.stdin.readline()
        if not line or line.strip() == "/exit":
            return 0
        if line.strip() == "/reset":
            messages = list(start)
            continue
        if not line.strip():
            continue
        messages.append({"role": "user", "content": line.rstrip("\n")})
        prompt = template.render(messages).ids
        room = engine.max_seq_len - len(prompt)
        while room < 1 and len(messages) > len(start) + 1:  # forget the oldest turns that no longer fit
            messages.pop(len(start))
            prompt = template.render(messages).ids
            room = engine.max_seq_len - len(prompt)
        if room < 1:
            raise UserError(f"message of {len(prompt)} tokens does not fit the context ({engine.max_seq_len})")
        params = SamplingParams(max_new_tokens=min(args.max_new_tokens, room), temperature=args.temperature,
                                top_k=args.top_k, top_p=args.top_p, seed=args.seed, stop=template.stop_strings,
                                stop_token_ids=sorted(template.stop_ids))
        request = engine.submit(Request(prompt, params, on_update=show))
        while not request.done.is_set():
            engine.step()
        sys.stdout.write("\n")
        messages.append({"role": "assistant", "content": request.text.strip()})
