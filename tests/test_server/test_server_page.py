"""The search page in a real headless browser: type a query, see ranked results."""

from __future__ import annotations

import os
import shutil

import pytest
from server_fakes import WordHashEncoder, serve_in_thread

from server.app import create_app
from server.settings import Settings

CHROMIUM = os.environ.get("BINSEARCH_CHROMIUM", "/usr/bin/chromium")
LAUNCH_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
if not (os.path.isfile(CHROMIUM) or shutil.which(CHROMIUM)):
    pytest.skip(
        f"no chromium at {CHROMIUM}: install Debian's package (apt-get install chromium) "
        "or point BINSEARCH_CHROMIUM at a chromium binary",
        allow_module_level=True,
    )


@pytest.fixture
def server_url(tmp_path):
    app = create_app(Settings(collection_dir=tmp_path / "index"), encoder=WordHashEncoder())
    with serve_in_thread(app) as url:
        docs = [
            {"id": "wing", "title": "Flutter of swept wings", "text": "wind tunnel flutter tests"},
            {
                "id": "heat",
                "title": "Heat transfer to blunt bodies",
                "text": "hypersonic heat flow",
            },
            {
                "id": "plate",
                "title": "Boundary layer on a flat plate",
                "text": "transition of flow",
            },
        ]
        app.state.store.upsert(
            [{**d, "metadata": None} for d in docs],
            WordHashEncoder().encode([f"{d['title']} {d['text']}" for d in docs]),
        )
        yield f"{url}/"


def test_typing_a_query_shows_ranked_results(server_url):
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS, headless=True)
        try:
            page = browser.new_page()
            page.set_default_timeout(15_000)
            page.goto(server_url)
            page.fill("#q", "hypersonic heat transfer")
            page.press("#q", "Enter")
            page.wait_for_selector("li.hit")
            titles = page.locator("li.hit .title").all_inner_texts()
            assert titles[0] == "Heat transfer to blunt bodies"
            assert len(titles) == 3
            assert "results in" in page.inner_text("#status")
            scores = [float(s) for s in page.locator("li.hit .score").all_inner_texts()]
            assert scores == sorted(scores, reverse=True)
            # An error from the API shows as a message, not as a broken page.
            page.fill("#k", "5")
            page.fill("#q", "   ")
            page.click("#go")
            assert "Type a query" in page.inner_text("#status")
        finally:
            browser.close()
