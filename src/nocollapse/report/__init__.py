"""Reports: plots and a self-contained HTML page for one run or a comparison of several.

``write_report(["runs/a", "runs/b"], "report/")`` (or ``nocollapse report runs/a runs/b --out report/``).
"""

from nocollapse.report.html import write_report
from nocollapse.report.runs import RunRecord, load_run, load_runs

__all__ = ["RunRecord", "load_run", "load_runs", "write_report"]
