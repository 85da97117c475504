"""The web page under the server's Content-Security-Policy, in a real browser.

A reply made of markup is shown as text and runs nothing; the page needs no inline code (no
CSP violation, no script error); the API key stays in the tab unless the user asks to
remember it; thumbs are drawn icons that record feedback; a conversation can be deleted;
a handed-off conversation shows a banner and a person's replies, then the bot's again.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import httpx
import pytest

from chattune.chat.engine import ChatEngine
from chattune.serve.app import PAGE_HEADERS, STATIC, build_app
from chattune.serve.schema import owner_of
from chattune.serve.store import Store
from tests.conftest import FakeBackend, live_server

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
CSP = PAGE_HEADERS["Content-Security-Policy"]
XSS = ['<img src=x onerror="window.__xss=1">', " and <script>window.__xss=2</script>"]
REPLY = "".join(XSS)
# Installed before any page script runs (Playwright injects it outside the page's CSP).
WATCH_CSP = """
window.__csp = [];
document.addEventListener("securitypolicyviolation",
    (e) => window.__csp.push(e.violatedDirective + " " + e.blockedURI));
"""


@pytest.fixture(scope="module")
def browser() -> Iterator:
    chromium = shutil.which("chromium")
    if chromium is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is missing: .ci/run must install Debian's chromium")
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def watched_page(browser, problems: list[str]):
    """A page in a fresh context (its own storage) that reports CSP and script errors."""
    page = browser.new_context().new_page()
    page.add_init_script(WATCH_CSP)

    def on_console(message) -> None:
        if "Content Security Policy" in message.text:
            problems.append(f"console: {message.text}")

    page.on("console", on_console)
    page.on("pageerror", lambda e: problems.append(f"uncaught: {e}"))
    return page


def assert_no_csp_violation(page, problems: list[str]) -> None:
    assert problems == []
    assert page.evaluate("window.__csp") == []


def assert_reply_shown_as_text(page) -> None:
    assert page.locator(".msg.assistant .text").last.text_content() == REPLY
    assert page.locator("#messages img, #messages script").count() == 0
    assert page.evaluate("typeof window.__xss") == "undefined"


def stored_key(page) -> tuple[str | None, str | None]:
    """The saved API key as (sessionStorage, localStorage)."""
    both = "[sessionStorage, localStorage].map((s) => s.getItem('chattune-key'))"
    return tuple(page.evaluate(both))


def test_page_has_no_inline_code() -> None:
    """Cheap and browser-free: the CSP would block any of these."""

    class Inline(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.found: list[str] = []

        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            names = dict(attrs)
            if tag == "style" or (tag == "script" and "src" not in names):
                self.found.append(f"inline <{tag}>")
            self.found += [f"{tag} {a}=" for a in names if a == "style" or a.startswith("on")]
            if any((v or "").strip().lower().startswith("javascript:") for v in names.values()):
                self.found.append(f"{tag} javascript: URL")

    parser = Inline()
    parser.feed((STATIC / "index.html").read_text())
    assert parser.found == []
    script = (STATIC / "app.js").read_text()
    for risky in ("eval(", "new Function", "innerHTML", "outerHTML", "insertAdjacentHTML",
                  "document.write", "setTimeout(\"", "javascript:"):  # fmt: skip
        assert risky not in script, risky


def test_page_and_its_files_carry_the_security_headers(tokenizer, tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    store = Store(str(tmp_path / "chat.db"))
    client = TestClient(build_app(ChatEngine(FakeBackend(tokenizer, [])), store, "tiny", ["k"]))
    for path, media in [
        ("/", {"text/html"}),
        ("/static/app.js", {"text/javascript", "application/javascript"}),
        ("/static/app.css", {"text/css"}),
    ]:
        r = client.get(path)
        assert r.status_code == 200, path
        assert r.headers["content-type"].split(";")[0] in media, path
        assert r.headers["content-security-policy"] == CSP, path
        assert r.headers["x-frame-options"] == "DENY", path
        assert r.headers.get("x-content-type-options") == "nosniff", path
    assert client.get("/static/../app.py").status_code == 404


def test_markup_reply_is_text_feedback_and_delete_work_under_the_csp(
    browser, tokenizer, tmp_path: Path
) -> None:
    store = Store(str(tmp_path / "chat.db"))
    app = build_app(ChatEngine(FakeBackend(tokenizer, XSS)), store, "tiny", ["web-key"])
    problems: list[str] = []
    with live_server(app) as url:
        page = watched_page(browser, problems)
        assert page.goto(url).headers["content-security-policy"] == CSP
        page.fill("#api-key", "web-key")
        page.click("#save-key")
        page.click("#new-chat")
        page.fill("#input", "Say something tricky")
        page.keyboard.press("Enter")
        page.wait_for_selector(".msg.assistant .feedback", timeout=10_000)
        assert_reply_shown_as_text(page)

        for rating in ("up", "down"):  # drawn icons, not emoji a machine may lack a font for
            thumb = page.get_by_role("button", name=f"thumbs {rating}")
            assert thumb.locator("svg path").count() == 1 and thumb.text_content() == ""
            box = thumb.locator("svg").bounding_box()
            assert box is not None and box["width"] >= 12 and box["height"] >= 12
        page.get_by_role("button", name="thumbs up").click()
        page.wait_for_selector(".feedback button.chosen", timeout=5_000)
        (example,) = store.feedback_conversations()
        assert example["messages"][-1] == {"role": "assistant", "content": REPLY}
        page.screenshot(path="/tmp/chattune-page.png")

        # The stored reply, shown again by the other path (opening a saved conversation).
        conversation = page.get_attribute("#conversations li.active", "data-id")
        page.reload()
        page.click(f'#conversations li[data-id="{conversation}"]')
        page.wait_for_selector(".msg.assistant .feedback", timeout=5_000)
        assert_reply_shown_as_text(page)

        page.once("dialog", lambda dialog: dialog.accept())  # "Delete ... for good?"
        page.click("#delete-chat")
        page.wait_for_selector("#conversations li", state="detached", timeout=5_000)
        assert page.is_disabled("#delete-chat") and page.locator(".msg").count() == 0
        auth = {"Authorization": "Bearer web-key"}
        assert httpx.get(f"{url}/v1/conversations/{conversation}", headers=auth).status_code == 404
        assert_no_csp_violation(page, problems)

        # The watcher is not blind: an inline script added now is blocked and reported.
        page.evaluate(
            "() => { const s = document.createElement('script');"
            " s.textContent = 'window.__inline = 1'; document.body.append(s); }"
        )
        page.wait_for_function("() => window.__csp.length === 1", timeout=5_000)
        assert page.evaluate("typeof window.__inline") == "undefined"


def test_api_key_stays_in_the_tab_unless_remembered(browser, tokenizer, tmp_path: Path) -> None:
    store = Store(str(tmp_path / "chat.db"))
    app = build_app(ChatEngine(FakeBackend(tokenizer, ["Hi."])), store, "tiny", ["web-key"])
    problems: list[str] = []
    with live_server(app) as url:
        page = watched_page(browser, problems)
        page.goto(url)
        assert not page.is_checked("#remember-key")
        page.fill("#api-key", "web-key")
        page.click("#save-key")
        assert stored_key(page) == ("web-key", None)
        page.check("#remember-key")
        assert stored_key(page) == (None, "web-key")
        page.reload()
        assert page.input_value("#api-key") == "web-key" and page.is_checked("#remember-key")
        page.uncheck("#remember-key")
        assert stored_key(page) == ("web-key", None)
        assert_no_csp_violation(page, problems)

        # A key an older page saved in localStorage keeps working (new context: no session key).
        old = watched_page(browser, problems)
        old.goto(url)
        old.evaluate("localStorage.setItem('chattune-key', 'web-key')")
        old.reload()
        assert old.input_value("#api-key") == "web-key" and old.is_checked("#remember-key")
        old.click("#new-chat")
        old.wait_for_selector("#conversations li", timeout=5_000)
        assert old.text_content("#error") == ""
        assert_no_csp_violation(old, problems)


def test_a_handed_off_conversation_shows_the_banner_and_a_persons_replies(
    browser, tokenizer, tmp_path: Path
) -> None:
    """A furious message is handed off (banner); an agent answers through the API and the
    page shows it as a person's; once released, the bot answers again."""
    from chattune.chat.profile import BotProfile
    from chattune.chat.routing import HANDOFF_MESSAGE
    from chattune.nlu.router import Route

    profile = BotProfile(routes=[Route(sentiment_below=-0.5, action="handoff"),
                                 Route(default="llm")])  # fmt: skip
    engine = ChatEngine(FakeBackend(tokenizer, ["Happy ", "to help."]), profile)
    store = Store(str(tmp_path / "chat.db"))
    app = build_app(engine, store, "tiny", ["web-key"], ["agent-key"])
    agent = {"Authorization": "Bearer agent-key"}
    problems: list[str] = []
    with live_server(app) as url:
        page = watched_page(browser, problems)
        page.goto(url)
        page.fill("#api-key", "web-key")
        page.click("#save-key")
        page.click("#new-chat")
        page.wait_for_selector("#conversations li.active", timeout=5_000)
        assert page.is_hidden("#handoff")
        page.fill("#input", "This is useless, I am furious!")
        page.keyboard.press("Enter")
        page.wait_for_selector("#handoff:not([hidden])", timeout=10_000)
        assert "A person from our team will answer you here" in page.text_content("#handoff")
        notice = page.locator(".msg.assistant").last
        assert notice.locator(".text").text_content() == HANDOFF_MESSAGE
        assert notice.locator(".decision").text_content().startswith("route: handoff")
        assert "sentiment -0." in notice.locator(".decision").text_content()
        assert page.is_disabled("#ask-person")

        (waiting,) = httpx.get(f"{url}/v1/handoffs", headers=agent).json()["data"]
        said = {"content": "Hi, I'm Sam <b>from support</b>.", "agent": "Sam"}
        r = httpx.post(f"{url}/v1/handoffs/{waiting['id']}/messages", headers=agent, json=said)
        assert r.status_code == 201
        page.wait_for_selector(".msg.agent", timeout=10_000)  # polled, not reloaded
        reply = page.locator(".msg.agent")
        assert reply.locator(".text").text_content() == "Hi, I'm Sam <b>from support</b>."
        assert reply.locator(".author").text_content() == "Sam · from our team"
        assert reply.locator(".feedback, b").count() == 0
        page.wait_for_function(
            "() => document.getElementById('handoff-detail').textContent.includes('Sam')",
            timeout=10_000,
        )

        assert httpx.post(f"{url}/v1/handoffs/{waiting['id']}/release",
                          headers=agent).status_code == 200  # fmt: skip
        page.wait_for_selector("#handoff", state="hidden", timeout=10_000)
        page.fill("#input", "Thanks, that is great!")
        page.keyboard.press("Enter")
        page.wait_for_function(
            "() => [...document.querySelectorAll('.msg.assistant .text')].pop().textContent"
            " === 'Happy to help.'",
            timeout=10_000,
        )
        last = page.locator(".msg.assistant").last
        assert last.locator(".decision").text_content().startswith("route: llm")
        assert last.locator(".feedback").count() == 1
        page.screenshot(path="/tmp/chattune-handoff.png")
        assert_no_csp_violation(page, problems)
    stored = store.get_conversation(owner_of("web-key"), waiting["id"])
    assert [m.get("author", m["role"]) for m in stored["messages"]] == [
        "user", "assistant", "agent", "user", "assistant",
    ]  # fmt: skip
