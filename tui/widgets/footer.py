"""The footer (key hints): Textual's, rebuilt only when the keys it shows change."""

from __future__ import annotations

from collections.abc import Hashable

from textual.screen import Screen
from textual.widgets import Footer


class AppFooter(Footer):
    """Textual's Footer recomposes (unmounts and mounts a widget per key) on every bindings signal: a focus
    change, a view switch, each `refresh_bindings`: several times per view switch, most of them for the same
    keys. This one recomposes only when what it would show differs from what it shows."""

    def __init__(self, **kw: object) -> None:
        super().__init__(**kw)  # type: ignore[arg-type]
        self._shown: Hashable | None = None

    def bindings_changed(self, screen: Screen[object]) -> None:
        self._bindings_ready = True
        if not screen.app.app_focus:
            return
        if self.is_attached and screen is self.screen:
            self.call_after_refresh(self._recompose_if_changed)

    def _keys_shown(self) -> Hashable:
        """What compose() would draw: every shown binding, its display, whether it is enabled, its tooltip."""
        app = self.app
        return tuple(
            (b.key, b.action, b.description, b.group, enabled, tooltip, app.get_key_display(b))
            for (_, b, enabled, tooltip) in self.screen.active_bindings.values()
            if b.show
        )

    async def _recompose_if_changed(self) -> None:
        if not self.is_attached:
            return
        shown = self._keys_shown()
        if shown == self._shown:
            return
        self._shown = shown
        await self.recompose()
