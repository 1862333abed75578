"""docs/performance.md's table is the newest committed results file's, and that file is a complete run."""

import json

from bench.cases import CASES
from bench.publish import PERFORMANCE_PAGE, newest, readme_block, replace_block
from bench.report import validate


def test_the_performance_table_is_generated_from_the_newest_published_run():
    path = newest()
    doc = json.loads(path.read_text())
    assert validate(doc) == []
    assert set(doc["cases"]) == set(CASES), "a published run holds every case"
    assert not [name for name, case in doc["cases"].items() if "error" in case]
    for key in ("cpu_model", "cores", "load_average_start", "date", "run"):
        assert doc["machine"][key] not in (None, "")
    readme = PERFORMANCE_PAGE.read_text()
    assert replace_block(readme, readme_block(doc, path)) == readme, (
        "docs/performance.md's table differs from " + path.name + ": run `python -m bench.publish " + str(path)
        + "` (or `invoke bench --publish`)")
