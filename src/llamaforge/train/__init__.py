"""Pretraining: config and recipes (`config`), the loop (`trainer`), the data interface (`loader`), AdamW and its
schedule (`optim`), FSDP2 / tensor parallelism (`parallel`), whole-state checkpoints (`checkpoint`) and metrics
(`metrics`)."""

from llamaforge.train.config import TrainConfig, load_config


def train(cfg: TrainConfig, out_dir, resume=None, trust_checkpoint: bool = False, on_eval=None, examples=None):
    """`llamaforge.train.trainer.train`: train per `cfg` under `out_dir`; returns a `TrainSummary`. `on_eval`:
    the optional evaluation callback (see the trainer's docstring); `examples`: the rendered instruction examples
    of a finetuning run (`llamaforge.train.finetune.build_examples`)."""
    from llamaforge.train.trainer import (
        train as _train,  # torch.distributed imports only when training
    )

    return _train(cfg, out_dir, resume, trust_checkpoint=trust_checkpoint, on_eval=on_eval, examples=examples)


def __getattr__(name):
    if name == "TrainSummary":  # lives beside the loop, which imports torch.distributed
        from llamaforge.train.trainer import TrainSummary

        return TrainSummary
    raise AttributeError(f"module 'llamaforge.train' has no attribute {name!r}")


__all__ = ["TrainConfig", "TrainSummary", "load_config", "train"]
