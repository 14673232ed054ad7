"""Progress events of a search. The CLI renders them as a progress bar; the server stores them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal


@dataclass
class SearchEvent:
    """One thing that happened. `kind` says which fields are meaningful.

    - `phase`: a stage started (`phase` = load | baseline | search | compare | finetune | export | done);
    - `episode`: an episode finished; `episode` counts from 1, `record` is the row of episodes.csv;
    - `epoch`: a recovery (fine-tuning) epoch finished; `episode`/`episodes` count epochs, `record`
      holds epoch, loss, holdout_accuracy and seconds;
    - `step`: within a recovery epoch, every few batches; `episode` is the epoch, `record` holds epoch,
      images (done in this epoch), of (the epoch's images), seconds and epoch_eta_seconds;
    - `done`: the search finished; `record` holds the report.
    """

    kind: Literal["phase", "episode", "epoch", "step", "done"]
    phase: str = ""
    message: str = ""
    episode: int = 0
    episodes: int = 0
    record: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


EventSink = Callable[[SearchEvent], None]


def ignore(_: SearchEvent) -> None:
    """The default sink."""
