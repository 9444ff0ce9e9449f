"""The playground page in a real headless Chromium (Debian's ``chromium``, driven by Playwright)
against the real service on the session's Ray cluster: methods listed from the API, kept spans
highlighted inside the right passage exactly as ``/v1/compress`` returns them, tokens saved,
the reader's answers from the full and the compressed context, and an API error shown."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.redis]

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
QUERY = "Which function returns an OS-level handle to a temporary file?"
PASSAGES = [
    "The Eiffel tower is in Paris. It was finished in 1889 for the World's Fair. Millions of people visit it "
    "every year.",
    "The tempfile module creates temporary files and directories. mkstemp returns an OS-level handle and an "
    "absolute path to a new temporary file. Cats sleep for most of the day.",
]


def _chromium() -> str:
    """Debian's chromium; installed here the way `make setup` does when missing, else a skip."""
    if not Path(CHROMIUM).exists():
        cmd = "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-dejavu-core"
        for argv in (["sh", "-c", cmd], ["sudo", "-n", "sh", "-c", cmd]):
            if shutil.which(argv[0]) and subprocess.run(argv, capture_output=True).returncode == 0:
                break
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing and `apt-get install chromium` failed here (no root, no sudo?)")
    return CHROMIUM


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install 'playwright>=1.40' (the dev extra)")
    executable = _chromium()
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=executable, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        yield b
        b.close()


@pytest.fixture
def page(browser, service, ray_cluster):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = context.new_page()
    console_errors: list[str] = []
    pg.on("pageerror", lambda exc: console_errors.append(str(exc)))
    pg.goto(f"{ray_cluster}/playground")
    yield pg
    context.close()
    assert not console_errors, f"JavaScript errors on the page: {console_errors}"


def test_assets_are_served_and_unknown_ones_are_typed_404s(service):
    html = service.get("/playground")
    assert html.status_code == 200 and html.headers["content-type"].startswith("text/html")
    assert "playground/playground.js" in html.text
    js = service.get("/playground/playground.js")
    assert js.status_code == 200 and "javascript" in js.headers["content-type"]
    assert service.get("/playground/playground.css").headers["content-type"].startswith("text/css")
    missing = service.get("/playground/..%2Fapi.py")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "http_404"
    assert "/playground" not in service.get("/openapi.json").json()["paths"]


def test_compress_highlights_spans_and_shows_both_answers(page, service):
    from playwright.sync_api import expect

    expect(page).to_have_title("ragpress playground")
    methods = page.locator('input[name="method"]')
    expect(methods).to_have_count(2)
    assert sorted(methods.evaluate_all("els => els.map(e => e.value)")) == ["embed-sentences", "truncate"]
    expect(page.locator('input[name="method"][value="embed-sentences"]')).to_be_checked()  # the default

    page.get_by_label("Question").fill(QUERY)
    page.get_by_label("Passages").fill("\n\n".join(PASSAGES))
    page.get_by_label("Budget mode").select_option("ratio")
    page.get_by_label("Budget value").fill("0.5")
    page.locator('input[name="method"][value="truncate"]').check()  # a second method, side by side
    page.get_by_role("button", name="Compress").click()

    card = page.locator('.card[data-method="embed-sentences"]')
    page.wait_for_selector('.card[data-method="embed-sentences"]:not([aria-busy])', timeout=240_000)
    page.wait_for_selector('.card[data-method="truncate"]:not([aria-busy])', timeout=240_000)
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "playground.png"
    page.screenshot(path=str(shot), full_page=True)
    print(f"\nplayground screenshot: {shot}")
    assert card.locator(":scope > .card-error").count() == 0, card.locator(".card-error").all_inner_texts()

    # the highlights are exactly the API's spans, each inside its own passage
    api = service.post("/v1/compress", json={"query": QUERY, "method": "embed-sentences", "budget": {"ratio": 0.5},
                                             "passages": [{"id": f"p{i + 1}", "text": t}
                                                          for i, t in enumerate(PASSAGES)]}).json()
    assert api["spans"], api
    for pid in ("p1", "p2"):
        want = [s["text"] for s in sorted(api["spans"], key=lambda s: s["start"]) if s["passage_id"] == pid]
        marks = card.locator(f'.passage[data-passage-id="{pid}"] mark')
        assert marks.all_text_contents() == want, pid
    answer_sentence = "mkstemp returns an OS-level handle and an absolute path to a new temporary file."
    assert answer_sentence in card.locator('.passage[data-passage-id="p2"] mark').all_text_contents()
    first = card.locator("mark").first
    assert first.get_attribute("title").startswith("kept · score ")
    expect(card.locator(".score").first).to_be_visible()

    saved = card.locator(".stat-saved dd")
    expect(saved).to_contain_text(f"{api['tokens_saved']:,}")
    assert api["tokens_saved"] > 0
    expect(card.locator(".stat-tokens dd")).to_have_text(f"{api['tokens_before']:,} → {api['tokens_after']:,}")

    # the reader's answers, from the full and from the compressed context, for both methods
    for method in ("embed-sentences", "truncate"):
        for kind in ("full", "compressed"):
            box = page.locator(f'.card[data-method="{method}"] .answer[data-kind="{kind}"]')
            assert box.locator('[role="alert"]').count() == 0, (method, kind, box.inner_text())
            text = box.locator(".answer-text").inner_text().strip()
            assert text and text not in {"reading…", "(the reader wrote nothing)"} and "no reader" not in text, \
                (method, kind, text)
            expect(box.locator(".meta")).to_contain_text("tokens in")


def test_api_error_is_shown(page):
    from playwright.sync_api import expect

    expect(page.locator('input[name="method"]')).to_have_count(2)
    page.get_by_role("button", name="Compress").click()  # no question, no passages: the API says 422
    alert = page.locator('.card[data-method="embed-sentences"] [role="alert"]')
    expect(alert).to_be_visible(timeout=60_000)
    expect(alert).to_contain_text("422 invalid_request")
    expect(alert).to_contain_text("query")
    expect(page.get_by_role("button", name="Compress")).to_be_enabled()


def test_without_passages_the_index_is_asked_and_its_hits_highlighted(page):
    from playwright.sync_api import expect

    expect(page.locator('input[name="method"]')).to_have_count(2)
    page.get_by_label("Question").fill("How do I create a temporary file?")
    page.get_by_label("Ask the reader (full and compressed context)").uncheck()
    page.get_by_role("button", name="Compress").click()
    page.wait_for_selector('.card[data-method="embed-sentences"]:not([aria-busy])', timeout=120_000)
    card = page.locator('.card[data-method="embed-sentences"]')
    assert card.locator(".card-error").count() == 0, card.locator(".card-error").all_inner_texts()
    passages = card.locator(".passage")
    assert passages.count() == 5  # the default k
    expect(passages.first).to_contain_text("retrieved #1")
    assert card.locator(".passage mark").count() > 0
    assert card.locator(".answer").count() == 0  # not asked
