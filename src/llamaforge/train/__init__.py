"""Pretraining: config and recipes (`config`), the loop (`trainer`), AdamW and its schedule (`optim`),
FSDP2 / tensor parallelism (`parallel`), whole-state checkpoints (`checkpoint`) and metrics (`metrics`)."""

from llamaforge.train.config import TrainConfig, load_config


def train(cfg: TrainConfig, out_dir, resume=None) -> dict:
    from llamaforge.train.trainer import (
        train as _train,  # torch.distributed imports only when training
    )

    return _train(cfg, out_dir, resume)


__all__ = ["TrainConfig", "load_config", "train"]
