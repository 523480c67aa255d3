"""The worker: `python -m adagc_repro.worker <run_dir>`, under torchrun or alone (one job of a sweep).

Joins the process group (if torchrun made one), trains from the run's frozen config.yaml (Hydra is
never imported here) and leaves the summary for the parent, which alone writes DONE or FAILED. A
traceback goes to the error.json named by TORCHELASTIC_ERROR_FILE (`@record`); a graceful stop
(SIGTERM/SIGINT) exits with INTERRUPTED.
"""

from __future__ import annotations

import sys
from pathlib import Path

from torch.distributed.elastic.multiprocessing.errors import record

from adagc_repro import config as config_lib
from adagc_repro.atomic import write_json
from adagc_repro.distributed import collectives

SUMMARY = "worker-summary.json"
ERROR_REPORT = "worker-error.json"  # where a worker started without torchrun records its traceback
INTERRUPTED = 130


@record
def main(run_dir: str) -> int:
    from adagc_repro.train import TrainingInterrupted, train

    folder = Path(run_dir)
    cfg = config_lib.load_frozen(folder)
    collectives.init_from_env(str(cfg.train.device))
    writes_summary = collectives.is_main()
    try:
        summary = train(cfg, folder)
    except TrainingInterrupted:
        return INTERRUPTED
    finally:
        collectives.shutdown()
    if writes_summary:
        write_json(folder / SUMMARY, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
