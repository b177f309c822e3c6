"""What a page shows as Markdown, read from Streamlit's AppTest: every text body and label.

Streamlit renders these strings as GitHub-flavoured Markdown with its own directives
(``:red[...]``, ``:material/icon:``); ``dashboard.state.plain`` escapes every character that
could start one. ``as_shown`` undoes exactly that escaping (what a reader sees), and
``live_markup`` finds what would render as markup rather than text, including what the
frontend links or replaces after parsing, where escapes do not reach (remark-gfm's bare
"https://", "www." and e-mail links; ":material/" icons).
"""

from __future__ import annotations

import re

#: fragments that, left unescaped, make a link, a coloured directive or a script URL
MARKUP = ("](", ":red[", ":blue[", "javascript:", "evil.example")


#: what the frontend makes a link or an icon in the parsed text (remark-gfm's autolink-literal
#: expressions, Streamlit's icon prefix), escaped or not
AFTER_PARSING = re.compile(
    r"(?i)https?://|www(?=\.)|[-.\w+]+@[-\w]+(?:\.[-\w]+)+|:material/|:streamlit:"
)


def as_shown(body: str) -> str:
    """``body`` with Markdown's backslash escapes undone and zero-width spaces dropped: the
    text a reader sees."""
    return re.sub(r"\\(.)", r"\1", body).replace("\u200b", "")


def live_markup(body: str) -> list[str]:
    """The fragments of ``body`` that would render as markup: ``MARKUP`` left unescaped, and
    links or icons the frontend finds in the parsed text."""
    bare = re.sub(r"\\.", "", body)  # an escaped character is text, whatever it is
    parsed = re.sub(r"\\(.)", r"\1", body)  # the text node, as remark-gfm searches it
    return [m for m in MARKUP if m in bare] + AFTER_PARSING.findall(parsed)


def page_texts(at) -> list[str]:
    """Every Markdown string of the page: bodies of text elements and alerts, toasts, labels
    of expanders, buttons and metrics, metric values, progress texts and image captions.
    (Select and multiselect options are shown as plain text by Streamlit, so they are left out.)"""
    texts = []
    for kind in ("markdown", "caption", "error", "warning", "info", "success", "toast",
                 "title", "header", "subheader"):  # fmt: skip
        texts += [e.value for e in at.get(kind)]
    texts += [e.label for e in at.get("expander")]
    texts += [e.proto.label for e in at.get("button")]
    texts += [e.proto.label for e in at.get("download_button")]
    texts += [t for m in at.get("metric") for t in (m.label, m.value)]
    texts += [e.text for e in at.get("progress")]
    texts += [img.caption for e in at.get("image") for img in e.proto.imgs]
    return [t for t in texts if t]


def assert_plain(at, *hostile: str) -> None:
    """Each ``hostile`` string is on the page as text (escaped), and nothing on the page
    renders as a link, a directive or a script URL."""
    texts = page_texts(at)
    live = {t: live_markup(t) for t in texts if live_markup(t)}
    assert not live, f"rendered as Markdown markup: {live}"
    for text in hostile:
        assert any(text in as_shown(t) for t in texts), f"{text!r} not shown; page: {texts}"
