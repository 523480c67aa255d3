"""Scaling out on PyTorch's own engine: process group and rank helpers (`collectives`), DDP/FSDP2 and
activation checkpointing (`parallelize`), where a rank's shard sits (`sharding`), the torchrun command
line (`torchrun`). Nothing here imports Hydra: workers read only the run's frozen config.yaml.
"""
