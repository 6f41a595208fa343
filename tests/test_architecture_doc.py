"""docs/architecture.md: every section the code and the docs cite exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "architecture.md"


def anchors() -> set[str]:
    """GitHub's anchors of the page's headings: lower case, punctuation dropped, spaces as hyphens."""
    headings = re.findall(r"^#{2,} (.+)$", DOC.read_text(), flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def test_every_cited_section_exists():
    cited = {}
    for folder in ("api", "operator", "runtime", "cli", "tests", "docs", "benchmarks"):
        for path in (ROOT / folder).rglob("*"):
            if path.suffix in (".py", ".md") and path.is_file():
                for anchor in re.findall(r"architecture\.md#([\w-]+)", path.read_text(errors="replace")):
                    cited.setdefault(anchor, path.relative_to(ROOT))
    missing = {a: str(p) for a, p in cited.items() if a not in anchors()}
    assert not missing, f"sections cited but not in docs/architecture.md: {missing}"
