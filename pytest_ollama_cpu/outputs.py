"""What a run leaves behind once its tests are done: the JSON file of samples,
the saved run for later baselines, the comparison with a baseline, and the
HTML report of it all.

``prepare`` runs at start-up, so a bad baseline or an unwritable path stops the
run before anything is measured; ``finish`` runs at the end, on the controller
only, and returns what to print and the exit status it calls for.
"""

from __future__ import annotations

import datetime as _dt
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from . import __version__, html_report
from .comparison import Comparison, compare
from .options import HTML, Settings
from .records import RecordedSweep
from .report import Line, comparison_markdown, comparison_report, summary_lines
from .results_file import OutputFileError, check_writable, results_document, write_json_atomic
from .saved_runs import (
    NoSavedRuns,
    SavedRun,
    SavedRunError,
    autosave_name,
    check_name,
    check_storage,
    find,
    load_file,
    run_name,
    run_number,
    save,
    saved_run_document,
    saved_under,
)


@dataclass
class Outputs:
    settings: Settings
    baseline: SavedRun | None = None
    json_written: Path | None = None
    html_written: Path | None = None
    #: the report's size in bytes and the seconds it took to draw and write
    html_bytes: int = 0
    html_seconds: float = 0.0
    saved: Path | None = None
    comparison: Comparison | None = None
    errors: list[str] = field(default_factory=list)
    #: said in the summary, but no reason to fail
    notices: list[str] = field(default_factory=list)
    #: set on a pipeline's first run: no saved run of this machine to compare with yet
    first_run: NoSavedRuns | None = None

    def terminal_lines(self, sweeps: list[RecordedSweep], warnings: list[str]) -> list[Line]:
        """The end of pytest's output: the sweeps' tables and warnings, what was written
        where, the comparison with the baseline, and what went wrong."""
        if not sweeps:
            return [Line(f"ollama-cpu: {error}", "yellow") for error in self.errors]
        lines = [Line("ollama-cpu: thread sweeps", heading=True)]
        lines += [Line(line) for line in summary_lines(sweeps)]
        lines += [Line(f"WARNING {warning}", "yellow") for warning in warnings]
        if self.json_written is not None:
            lines.append(Line(f"ollama-cpu: samples written to {self.json_written}"))
        if self.html_written is not None:
            lines.append(
                Line(
                    f"ollama-cpu: report written to {self.html_written} "
                    f"({self.html_bytes / 1000:.0f} kB, drawn in {self.html_seconds:.1f} s)"
                )
            )
        if self.saved is not None:
            lines.append(Line(f"ollama-cpu: run saved as {self.saved}"))
        lines += [Line(f"ollama-cpu: {notice}", "yellow") for notice in self.notices]
        if self.comparison is not None:
            lines.append(Line("ollama-cpu: comparison with the baseline", heading=True))
            lines += comparison_report(self.comparison)
        lines += [Line(f"ollama-cpu: ERROR: {error}", "red") for error in self.errors]
        return lines

    def prepare(self) -> None:
        """Check paths and load the baseline; raise ``pytest.UsageError`` on a problem."""
        s = self.settings
        try:
            if s.save is not None:
                check_name(s.save)
            if s.enabled and (s.save or s.autosave):
                check_storage(s.storage)
            if s.json_path is not None:
                check_writable(s.json_path)
            if s.enabled and s.html_path is not None:
                missing = html_report.matplotlib_missing(HTML.flag)
                if missing is not None:
                    raise pytest.UsageError(missing)
                check_writable(s.html_path, html_report.HTML_FILE)
            if s.compare is not None:
                self.baseline = load_file(find(s.storage, s.compare))
        except NoSavedRuns as exc:
            # A pipeline's first run: nothing to compare with yet, and this run
            # becomes the baseline of the next. Not when runs of other machines
            # are there (a new Python, another storage folder): that gate would
            # pass without comparing anything, so the user must choose.
            if not (s.compare == "latest" and (s.save or s.autosave)):
                raise pytest.UsageError(str(exc)) from None
            if exc.elsewhere:
                raise pytest.UsageError(
                    f"no run of this machine is saved in {exc.folder} to compare with"
                    f"{exc.elsewhere}; or, to start this machine's baselines afresh, run once "
                    "without --ollama-cpu-compare"
                ) from None
            self.first_run = exc
        except (OutputFileError, SavedRunError) as exc:
            raise pytest.UsageError(str(exc)) from None

    def load_baseline_quietly(self) -> None:
        """Load the baseline where ``prepare`` runs elsewhere (a pytest-xdist worker):
        a worker that cannot read it samples without it, and the controller, which
        can, says what is wrong."""
        s = self.settings
        if s.compare is None:
            return
        try:
            self.baseline = load_file(find(s.storage, s.compare))
        except (OutputFileError, SavedRunError, OSError):
            self.baseline = None

    def finish(self, sweeps: list[RecordedSweep], settings_dict: dict[str, object]) -> int | None:
        """Write, save, compare and draw the report; the exit status this calls for, or
        None for no change."""
        status = self._write_save_compare(sweeps, settings_dict)
        if sweeps and self.settings.html_path is not None:
            drawn = self._write_report(sweeps, self.settings.html_path)
            status = status if status is not None else drawn
        return status

    def _write_report(self, sweeps: list[RecordedSweep], path: Path) -> int | None:
        """The HTML report, last: it shows the comparison, and a failure to write it
        loses nothing else."""
        started = time.perf_counter()
        facts = html_report.PageFacts(
            created=_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            plugin_version=__version__,
            settings=self.settings.describe(),
        )
        page = html_report.render(sweeps, facts, self.comparison)
        try:
            html_report.write(path, page)
        except OutputFileError as exc:
            self.errors.append(str(exc))  # it names the file and what to do
            return pytest.ExitCode.INTERNAL_ERROR
        self.html_written = path
        self.html_bytes = len(page.encode("utf-8"))
        self.html_seconds = time.perf_counter() - started
        return None

    def _write_save_compare(
        self, sweeps: list[RecordedSweep], settings_dict: dict[str, object]
    ) -> int | None:
        s = self.settings
        status: int | None = None
        if not sweeps:
            if s.compare is not None or s.save or s.autosave:
                self.errors.append("nothing was measured, so nothing was saved or compared")
            return None
        if s.json_path is not None:
            try:
                write_json_atomic(s.json_path, results_document(sweeps, __version__, settings_dict))
                self.json_written = s.json_path
            except OutputFileError as exc:
                self.errors.append(str(exc))  # it names the file and what to do
                status = pytest.ExitCode.INTERNAL_ERROR
            except OSError as exc:
                self.errors.append(f"could not write {s.json_path}: {exc}")
                status = pytest.ExitCode.INTERNAL_ERROR
        if not (s.save or s.autosave or self.baseline is not None):
            return status
        document = saved_run_document(sweeps)
        if s.save or s.autosave:
            name = s.save or autosave_name(document["commit_info"])
            try:
                earlier = saved_under(s.storage, name) if s.save else []
                self.saved = save(document, s.storage, name)
            except (SavedRunError, OSError) as exc:
                self.errors.append(f"could not save this run: {exc}")
                status = pytest.ExitCode.INTERNAL_ERROR
            else:
                cleaned = run_name(self.saved)
                if s.save and cleaned != s.save:
                    self.notices.append(
                        f"the name {s.save!r} was saved as {cleaned!r}: file names keep "
                        "letters, digits, '.', '_' and '-'; --ollama-cpu-compare finds the run "
                        "by either"
                    )
                if earlier:
                    self.notices.append(
                        f"the name {cleaned!r} was saved before ({earlier[-1].name}, kept): "
                        f"--ollama-cpu-compare={cleaned} now means this run, "
                        f"={run_number(earlier[-1])} the earlier one"
                    )
        if self.first_run is not None:
            outcome = (
                f"This run is saved as the first baseline: {self.saved}."
                if self.saved is not None
                else "This run could not be saved either (see the error below)."
            )
            notice = (
                f"nothing compared: no run of this machine is saved in "
                f"{self.first_run.folder} yet. {outcome}"
            )
            self.notices.insert(0, notice)
            if s.compare_markdown is not None:
                self._append_markdown(f"### pytest-ollama-cpu: no baseline yet\n\n{notice}\n")
        if self.baseline is not None:
            now = SavedRun(self.saved, document)
            self.comparison = compare(self.baseline, now, s.compare_fail, s.thresholds.alpha)
            if self.comparison.differences and s.compare_strict:
                self.errors.append(
                    "the baseline comes from another machine (--ollama-cpu-compare-strict): "
                    + "; ".join(self.comparison.differences)
                )
                status = status or pytest.ExitCode.USAGE_ERROR
            if self.comparison.regressions:
                status = status or pytest.ExitCode.TESTS_FAILED
            status = self._busy_rows(self.comparison, status)
            if s.compare_markdown is not None:
                self._append_markdown(comparison_markdown(self.comparison))
        return status

    def _busy_rows(self, comparison: Comparison, status: int | None) -> int | None:
        """Rows a busy machine left undecided follow --ollama-cpu-inconclusive."""
        busy = {(row.test, row.threads) for row in comparison.busy}
        if not busy:
            return status
        text = (
            f"{len(busy)} comparison row(s) inconclusive because the machine was busy "
            "(see the notes under the comparison)"
        )
        if self.settings.inconclusive == "fail":
            self.errors.append(f"{text}; --ollama-cpu-inconclusive=fail makes that a failure")
            return status or pytest.ExitCode.TESTS_FAILED
        self.notices.append(f"WARNING {text}: nothing was judged on samples taken under load")
        return status

    def _append_markdown(self, text: str) -> None:
        path = self.settings.compare_markdown
        assert path is not None
        try:
            # appended: a CI job summary collects several steps' output
            with open(path, "a", encoding="utf-8") as handle:
                handle.write(text)
        except OSError as exc:
            self.errors.append(f"could not write {path}: {exc}")
