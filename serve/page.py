"""The web page at `/`: one self-contained HTML file, served with a policy that runs its own code only."""

from __future__ import annotations

import base64
import functools
import hashlib
import re
from importlib import resources

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response


async def page(request: Request) -> Response:
    html, headers = page_and_headers()
    return HTMLResponse(html, headers=headers)


@functools.cache
def page_and_headers() -> tuple[str, dict[str, str]]:
    """The web page and its headers: a Content-Security-Policy that lets only the page's own inline script
    and style run (by their hashes) and its requests go only to this server."""
    html = resources.files("edgeqa.serve").joinpath("page.html").read_text(encoding="utf-8")

    def digest(tag: str) -> str:
        [inline] = re.findall(f"<{tag}>(.*?)</{tag}>", html, flags=re.DOTALL)
        return "'sha256-" + base64.b64encode(hashlib.sha256(inline.encode()).digest()).decode() + "'"

    policy = (
        f"default-src 'none'; script-src {digest('script')}; style-src {digest('style')}; connect-src 'self'; "
        "img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
    headers = {
        "Cache-Control": "no-store",
        "Content-Security-Policy": policy,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
    }
    return html, headers
