"""The progress bar of `data prepare`: documents, tokens, MB/s of text and ETA."""

from __future__ import annotations

import time


class PrepareProgress:
    """Advanced once per completed shard; silent when disabled. The ETA needs the source's size estimate."""

    def __init__(self, expected_bytes: int | None, *, enabled: bool):
        self.expected_bytes, self.enabled = expected_bytes, enabled
        self.documents = self.tokens = self.text_bytes = 0
        self._started = time.perf_counter()
        self._progress = None

    def __enter__(self) -> PrepareProgress:
        if self.enabled:
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            self._progress = Progress(TextColumn("prepare"), BarColumn(), TextColumn("{task.fields[status]}"),
                                      TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn())
            self._task = self._progress.add_task("prepare", total=self.expected_bytes, status="")
            self._progress.start()
        return self

    def advance(self, record: dict) -> None:
        self.documents += sum(record["documents"].values())
        self.tokens += sum(record["tokens"].values())
        self.text_bytes += record["text_bytes"]
        if self._progress is None:
            return
        total = max(self.expected_bytes or 0, self.text_bytes) if self.expected_bytes else None
        self._progress.update(self._task, completed=self.text_bytes, total=total, status=self.status())

    def status(self) -> str:
        return f"{self.documents:,} docs  {self.tokens:,} tokens  {self.mb_per_s():.2f} MB/s"

    def mb_per_s(self) -> float:
        return self.text_bytes / 1e6 / max(time.perf_counter() - self._started, 1e-9)

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.stop()
