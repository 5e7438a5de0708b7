"""`llamaforge serve MODEL [--tokenizer PATH] [--host 127.0.0.1] [--port 8000]`: an OpenAI-compatible server
(/v1/models, /v1/completions, /v1/chat/completions) with continuous batching."""

from __future__ import annotations

from pathlib import Path


def add_model_arguments(parser) -> None:
    """Arguments shared by `generate`, `serve` and `chat`: which model, on what device, how it runs."""
    parser.add_argument("model", help="a checkpoint in any format (native / HF folder, Meta folder, .bin, .gguf)")
    parser.add_argument("--tokenizer", default=None,
                        help="tokenizer file (default: the one in the model folder, or inside a .gguf)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--quantize", default=None, choices=["int8", "int4"], help="weight-only quantization")
    parser.add_argument("--max-seq-len", type=int, default=None, help="KV cache length (default: the model's)")
    parser.add_argument("--compile", action="store_true", default=None,
                        help="compile the decode step (default: on for CUDA; on a CPU ~3x faster per token after "
                             "15-45 s of compiling)")


def add_chat_template_argument(parser) -> None:
    parser.add_argument("--chat-template", default="auto",
                        help="auto | plain | llama2 | llama3 | chatml, a tokenizer_config.json, a Jinja file or a "
                             "Jinja string (default auto: the tokenizer folder's tokenizer_config.json template, "
                             "llama3 for a Llama 3 tokenizer, else plain)")


def load_engine(args, max_batch: int):
    """Model + tokenizer (`formats.load_model_and_tokenizer`) + engine from the shared arguments (user mistakes
    raise UserError). A model with more embedding rows than the tokenizer has tokens is said in one line on
    stderr (those ids are never sampled)."""
    import sys

    import torch

    from llamaforge.errors import UserError
    from llamaforge.formats import load_model_and_tokenizer
    from llamaforge.infer import Engine
    from llamaforge.infer.quantize import quantize

    if args.max_seq_len is not None and args.max_seq_len < 2:
        raise UserError("--max-seq-len: expected at least 2")
    model, tokenizer = load_model_and_tokenizer(args.model, args.tokenizer, device=args.device,
                                                dtype=getattr(torch, args.dtype))
    if args.quantize:
        quantize(model, args.quantize)
    engine = Engine(model, tokenizer, max_batch=max_batch, max_seq_len=args.max_seq_len, compile=args.compile)
    if engine.extra_rows:
        print(f"note: {args.model}: the model has {engine.extra_rows} embedding rows more than the tokenizer has "
              f"tokens ({model.args.vocab_size} vs {engine.n_tokens}); those ids are never sampled",
              file=sys.stderr, flush=True)
    return engine


def add_arguments(parser) -> None:
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
    from llamaforge.errors import UserError
    from llamaforge.infer.templates import check_name, load_chat_format
    from llamaforge.infer.server import serve

    if args.max_batch < 1:
        raise UserError("--max-batch: expected at least 1")
    if not 0 <= args.port < 65536:
        raise UserError("--port: expected 0..65535")
    check_name(args.chat_template)  # fail before loading the model
    _check_listen(args.host, args.port)
    engine = load_engine(args, args.max_batch)
    load_chat_format(args.chat_template, engine.tokenizer)  # a bad template fails here, before the server starts
    name = args.model_name or Path(args.model).name
    serve(engine, host=args.host, port=args.port, model_name=name, chat_template=args.chat_template,
          model_root=args.model)
    return 0
