"""Planning a training run before paying for it.

- `flops`: FLOPs per token, total training FLOPs, device-hours and wall-clock for a model and hardware;
- `memory`: per-device memory of a parallel layout (FSDP, tensor parallel, activation checkpointing);
- `scaling`: the parametric loss L(N, D), compute-optimal and inference-aware (N, D), fitting the law;
- `sweep`: IsoFLOP and learning-rate sweeps of small pretraining runs, fitted to the user's own law.
"""
