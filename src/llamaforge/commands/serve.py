"""`llamaforge serve MODEL [--tokenizer PATH] [--host 127.0.0.1] [--port 8000]`: an OpenAI-compatible server
(/v1/models, /v1/completions, /v1/chat/completions) with continuous batching."""

from __future__ import annotations

from pathlib import Path

from llamaforge.commands.args import add_chat_template_argument, add_model_arguments, load_engine


def add_arguments(parser) -> None:
    """MODEL and the shared model/engine arguments (`commands.args`), then the server's own."""
    add_model_arguments(parser)
    add_chat_template_argument(parser)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--max-batch", type=int, default=8, help="sequences decoded together")
    parser.add_argument("--model-name", default=None, help="the id /v1/models reports (default: MODEL's name)")


def _check_listen(host: str, port: int) -> None:
    """Raise UserError when `host:port` cannot be listened on (in use, a host name that does not resolve, an
    address not on this machine), before the model is loaded; uvicorn would log it and exit 3 after loading.
    A port taken between this check and uvicorn's bind is still uvicorn's message."""
    import socket

    from llamaforge.errors import UserError

    try:
        with socket.create_server((host, port)):
            pass
    except OSError as e:
        raise UserError(f"--host/--port: cannot listen on {host}:{port} ({e.strerror or e}); expected a free port "
                        "on an address of this machine") from None


def run(args) -> int:
    """Check the flags, the template name and that HOST:PORT can be listened on, then load the engine and the chat
    format and serve until interrupted. Returns 0. Raises UserError, before the model is loaded where it can, for
    --max-batch < 1, a port outside 0..65535, an address that cannot be listened on, or an unusable chat template."""
    from llamaforge.errors import UserError
    from llamaforge.infer.templates import check_name, load_chat_format
    from llamaforge.infer.server import serve

    if args.max_batch < 1:
        raise UserError("--max-batch: expected at least 1")
    if not 0 <= args.port < 65536:
        raise UserError("--port: expected 0..65535")
    check_name(args.chat_template, "--chat-template")  # fail before loading the model
    _check_listen(args.host, args.port)
    engine = load_engine(args, args.max_batch)
    load_chat_format(args.chat_template, engine.tokenizer)  # a bad template fails here, before the server starts
    name = args.model_name or Path(args.model).name
    serve(engine, host=args.host, port=args.port, model_name=name, chat_template=args.chat_template,
          model_root=args.model)
    return 0
