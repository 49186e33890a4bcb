"""Reports: plots and a self-contained HTML page for one run, a comparison of several, or a sweep's runs grouped by seed.

``write_report(["runs/a", "runs/b"], "report/")`` (or ``nocollapse report runs/a runs/b --out report/``; a sweep's
directory stands for its runs).
"""

from nocollapse.report.html import write_report
from nocollapse.report.runs import RunRecord, load_run, load_runs

__all__ = ["RunRecord", "load_run", "load_runs", "write_report"]
