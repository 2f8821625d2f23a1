"""Every reference links out (issue 13): each references.bib entry has a DOI, an arXiv id or a
URL, which the bibliography page renders as a link (tests/browser checks the built page)."""

import re
from pathlib import Path

import pytest
from pybtex.database import parse_file

ROOT = Path(__file__).resolve().parents[1]
ENTRIES = parse_file(str(ROOT / "references.bib")).entries
ARXIV_ID = re.compile(r"\d{4}\.\d{4,5}(v\d+)?")
DOI = re.compile(r"10\.\d{4,9}/\S+")


@pytest.mark.parametrize("key", sorted(ENTRIES))
def test_every_reference_has_a_doi_an_arxiv_id_or_a_url(key):
    fields = {name.lower(): value for name, value in ENTRIES[key].fields.items()}
    assert {"doi", "eprint", "url"} & set(fields), (
        f"{key}: add doi = {{...}}, or eprint = {{arXiv id}} with archiveprefix = {{arXiv}}, "
        "or url = {...} (look the identifier up; never guess one)"
    )
    if "doi" in fields:
        assert DOI.fullmatch(fields["doi"]), f"{key}: {fields['doi']!r} is not a DOI"
    if "eprint" in fields:
        assert fields.get("archiveprefix", "").lower() == "arxiv", (
            f"{key}: eprint needs archiveprefix = {{arXiv}}"
        )
        assert ARXIV_ID.fullmatch(fields["eprint"]), (
            f"{key}: {fields['eprint']!r} is not an arXiv id"
        )
    if "url" in fields:
        assert fields["url"].startswith("https://"), f"{key}: {fields['url']!r}"
