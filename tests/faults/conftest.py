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
