"""pytest plugin for mutant runs: one failing Hypothesis example kills, so skip the shrinking.

Shrinking a failure can take longer than the whole run (and then look like a timeout). Loaded in
pytest_configure, before test modules build their `settings(...)` from the default profile.
"""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    try:
        from hypothesis import Phase, settings
    except ImportError:
        return
    phases = [Phase.explicit, Phase.reuse, Phase.generate, Phase.target]
    settings.register_profile("mutation", phases=phases)
    settings.load_profile("mutation")
