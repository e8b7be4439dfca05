"""The fault suite's table: every test carries ``@pytest.mark.case(command, fault)`` and the
session ends with ``command x fault -> handled / LOST DATA`` (a failed case is lost data)."""

from __future__ import annotations

import pytest

_RESULTS: dict[tuple[str, str], list[bool]] = {}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    report = (yield).get_result()
    if report.when == "call" or (report.when == "setup" and not report.passed):
        for mark in item.iter_markers("case"):
            cmds = mark.args[0] if isinstance(mark.args[0], tuple) else (mark.args[0],)
            for cmd in cmds:
                if not report.skipped:
                    _RESULTS.setdefault((cmd, mark.args[1]), []).append(report.passed)


def pytest_terminal_summary(terminalreporter):
    if not _RESULTS:
        return
    faults = sorted({f for _, f in _RESULTS})
    commands = sorted({c for c, _ in _RESULTS})
    tr = terminalreporter
    tr.section("fault suite: command x fault")
    tr.write_line("| command | " + " | ".join(faults) + " |")
    tr.write_line("|---" * (len(faults) + 1) + "|")
    for c in commands:
        cells = []
        for f in faults:
            got = _RESULTS.get((c, f))
            cells.append("-" if got is None else ("handled" if all(got) else "LOST DATA"))
        tr.write_line(f"| {c} | " + " | ".join(cells) + " |")


@pytest.fixture(scope="session")
def pipeline_corpus(tmp_path_factory):
    """A demo-corpus-shaped folder (speech/, music/), four 4-second clips each: long enough for
    the quickstart recipe's 3 s context."""
    import numpy as np

    from whispergpt.audio import save_audio

    root = tmp_path_factory.mktemp("pipeline-corpus")
    rng = np.random.default_rng(0)
    t = np.arange(4 * 24000) / 24000
    for k, m in enumerate(("speech", "music")):
        (root / m).mkdir()
        for i in range(4):
            w = 0.3 * np.sin(2 * np.pi * (200 + 50 * i + 300 * k) * t) + 0.05 * rng.standard_normal(t.size)
            save_audio(root / m / f"{m}{i}.wav", w.astype(np.float32), 24000)
    return root
