"""SimSettings rejects values that cannot describe a server."""

from __future__ import annotations

import pytest

from router.sim import SimSettings


@pytest.mark.parametrize(
    "field",
    [
        {"ttft_ms": -1},
        {"itl_ms": -0.5},
        {"block_size": 0},
        {"cache_blocks": -1},
        {"output_tokens": -1},
    ],
)
def test_invalid_settings_are_rejected(field: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=next(iter(field))):
        SimSettings(**field)  # type: ignore[arg-type]


def test_settings_are_frozen_and_keyword_only() -> None:
    settings = SimSettings(model="m")
    with pytest.raises(AttributeError):
        settings.model = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        SimSettings("m")  # type: ignore[call-arg]
