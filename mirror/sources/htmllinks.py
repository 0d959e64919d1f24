"""Links of an HTML index page that the quick regular expression in ``httpindex`` cannot read
(Apache, Caddy, hand-written pages), read by the standard library's HTML parser."""

from __future__ import annotations

from html.parser import HTMLParser


class _Links(HTMLParser):
    """The <a href> links of an index page, each with the text right after its </a>."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.links: list[tuple[str, str]] = []  # (href, text after the link up to the next tag)
        self._in_a = False
        self._after: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            href = dict(attrs).get("href")
            if href is not None:
                self.links.append((href, ""))
                self._in_a = True
            self._after = None
        elif self._after is not None and tag not in ("br",):
            self._after = None

    def handle_endtag(self, tag: str) -> None:
        if tag == "a" and self._in_a:
            self._in_a = False
            self._after = []

    def handle_data(self, data: str) -> None:
        if self._after is not None and self.links:
            self._after.append(data)
            href, _ = self.links[-1]
            self.links[-1] = (href, "".join(self._after))


def links(text: str) -> list[tuple[str, str]]:
    """(href, text after the link up to the next tag) of every <a href> on the page."""
    parser = _Links()
    parser.feed(text)
    parser.close()
    return parser.links
