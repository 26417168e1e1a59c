"""The mv6_domain Jinja test: a domain is MV6's by its parsed metadata element, never by a
text search that a description or a comment would satisfy."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / ".collections"))

from ansible_collections.mv6.transition.plugins.test import domain

NS = "https://mv6.invalid/transition"


def xml(inner: str) -> str:
    return f"<domain type='qemu'><name>g</name>{inner}<devices/></domain>"


@pytest.mark.parametrize(
    ("text", "ours"),
    [
        (xml(f'<metadata><mv6:guest xmlns:mv6="{NS}"><mv6:plan/></mv6:guest></metadata>'), True),
        # the namespace counts, not the prefix libvirt or a user gave it
        (xml(f'<metadata><x:guest xmlns:x="{NS}"/></metadata>'), True),
        # the address of the namespace as text, where a text search found it
        (xml(f'<description>copied from xmlns:mv6="{NS}"</description>'), False),
        (xml(f'<!-- xmlns:mv6="{NS}" --><metadata/>'), False),
        (xml(f'<metadata><other xmlns:mv6="{NS}"/></metadata>'), False),
        # the element, but not under <metadata>
        (xml(f'<description/><mv6:guest xmlns:mv6="{NS}"/>'), False),
        (xml(""), False),
        ("<domain><unclosed></domain>", False),
        ("", False),
        (None, False),
        (42, False),
    ],
)
def test_mv6_domain(text, ours):
    assert domain.mv6_domain(text) is ours


def test_the_test_is_registered():
    assert domain.TestModule().tests() == {"mv6_domain": domain.mv6_domain}
