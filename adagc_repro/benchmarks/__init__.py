"""Benchmarks: the training step against a plain compiled loop (`bench step`) and every clipper against
`clip_grad_norm_` (`bench clip`, in clipping/bench.py because it needs only torch)."""
