"""Messages that worker threads post to the app (post_message is thread-safe); widgets are only touched by
their handlers, on the UI thread."""

from __future__ import annotations

from textual.message import Message

from procguard.core.signals import Progress
from procguard.tui.actions import Done, Kind, Plan
from procguard.tui.model import Model, Row, StatusKey, ViewState


class ModelReady(Message):
    """`rows`: the Processes view's rows for `model`, built by the collector thread for the view state it names
    (None: not built; the app builds them when the state changed since)."""

    def __init__(self, model: Model, rows: tuple[ViewState, list[Row]] | None = None) -> None:
        super().__init__()
        self.model = model
        self.rows = rows


class CollectFailed(Message):
    def __init__(self, reason: str) -> None:
        super().__init__()
        self.reason = reason


class PlanReady(Message):
    """A dry run is done: show the confirm dialog (or act at once)."""

    def __init__(self, plan: Plan) -> None:
        super().__init__()
        self.plan = plan


class ActionProgress(Message):
    """`pids`: every process the action acts on (core's sigkill event can name none: a killpg did it)."""

    def __init__(self, event: Progress, pids: tuple[StatusKey, ...] = ()) -> None:
        super().__init__()
        self.event = event
        self.pids = pids


class ActionDone(Message):
    """`pids`: every process the action was started on (their progress labels go, whatever core reported)."""

    def __init__(self, done: Done, pids: tuple[StatusKey, ...] = ()) -> None:
        super().__init__()
        self.done = done
        self.pids = pids


class ActionFailed(Message):
    """An action could not run at all (a dry run failed, out of scope, flush refused...): the reason."""

    def __init__(self, kind: Kind | str, reason: str, pids: tuple[StatusKey, ...] = ()) -> None:
        super().__init__()
        self.kind = kind
        self.reason = reason
        self.pids = pids  # the processes it had started on, if any (their progress labels go)


class Notice(Message):
    def __init__(self, text: str, severity: str = "information") -> None:
        super().__init__()
        self.text = text
        self.severity = severity
