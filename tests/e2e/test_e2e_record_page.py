"""The record page in a real headless Chromium: sign in, the demo's Emails related list, the CRM
filter, paging, an email's history, escaping, another org's token, a phone-sized screen.

Selenium drives Debian's chromium through Debian's chromedriver (the same version, from the same
source package), so nothing is downloaded at run time; scripts/system-packages.sh installs both.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.wait import WebDriverWait
from tests.e2e.conftest import Stack

from mailfold.cli.demo import REP, seed_org
from mailfold.cli.dev import DevStack

pytestmark = pytest.mark.timeout(300)

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
XSS_SUBJECT = '<script>window.__xss = 1</script><img src=x onerror="window.__xss = 2">Hi & bye'


@dataclass(frozen=True)
class Demo:
    """A demo-like org on the e2e stack, another org, and where the query API is."""

    org: str
    token: str
    other_org: str
    other_token: str
    query: str
    emails: dict[str, str]


def _org(stack: Stack, name: str) -> str:
    return stack.cli("org", "create", name).stdout.strip()


def _wait_for_list(demo: Demo, record: str, statuses: set[tuple[str, str]]) -> None:
    """Until the record's related list (JSON API) shows these (source, status) pairs."""
    url = f"{demo.query}/v1/orgs/{demo.org}/records/{record}/emails"
    deadline = time.monotonic() + 90
    with httpx.Client(timeout=10) as client:
        while True:
            response = client.get(url, headers={"Authorization": f"Bearer {demo.token}"})
            got = {(i["source"], i["status"]) for i in response.json().get("items", [])}
            if statuses <= got:
                return
            assert time.monotonic() < deadline, got
            time.sleep(0.5)


@pytest.fixture(scope="module")
def demo(stack: Stack) -> Demo:
    """The demo's records and mail for a fresh org, plus an email whose subject is markup."""
    org, other = "uidemo", "uiother"
    token, other_token = _org(stack, org), _org(stack, other)
    runtime = stack.runtime
    dev = DevStack(
        data=stack.data,
        ports={k: int(v) for k, v in dict(runtime["ports"]).items()},  # type: ignore[call-overload]
        nats_url=stack.nats_url,
        database_url=str(runtime["database_url"]),
    )
    emails = seed_org(dev, token, org)
    response = httpx.post(
        f"{stack.ingest}/v1/orgs/{org}/emails",
        json={
            "source": "individual",
            "from": REP,
            "to": ["bob@example.org"],
            "subject": XSS_SUBJECT,
            "text": "markup in a subject is text",
        },
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )
    assert response.status_code == 202, response.text
    emails["markup"] = response.json()["email_id"]
    made = Demo(org, token, other, other_token, stack.query, emails)
    _wait_for_list(
        made,
        "contact-ann",
        {
            ("Individual", "Clicked"),
            ("Mass Email", "Opened"),
            ("BCC Dropbox", "Sent"),
            ("External", "Received"),
        },
    )
    _wait_for_list(made, "lead-bob", {("Individual", "Sent")})
    return made


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    """Headless Chromium with a fresh profile, as root in a container needs it."""
    assert CHROMIUM.exists(), "run `make system-packages` (Debian package chromium)"
    assert CHROMEDRIVER.exists(), "run `make system-packages` (Debian package chromium-driver)"
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-dev-shm-usage",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--window-size=1280,900",
    ):
        options.add_argument(flag)
    service = Service(executable_path=str(CHROMEDRIVER), log_output=str(tmp_path / "driver.log"))
    driver = webdriver.Chrome(options=options, service=service)
    driver.implicitly_wait(0)
    try:
        yield driver
    finally:
        driver.quit()


def _rows(driver: WebDriver) -> list[dict[str, str]]:
    rows = []
    for row in driver.find_elements(By.CSS_SELECTOR, "table.emails tbody tr"):
        cells = {
            cell.get_attribute("data-label") or "": cell.text
            for cell in row.find_elements(By.TAG_NAME, "td")
        }
        cells["id"] = row.get_attribute("data-email-id") or ""
        rows.append(cells)
    return rows


def _follow(driver: WebDriver, element: WebElement, key: str | None = None) -> None:
    """Click `element` (or press `key` on it) and wait until the next page replaced this one."""
    page = driver.find_element(By.TAG_NAME, "html")
    if key is None:
        element.click()
    else:
        element.send_keys(key)
    WebDriverWait(driver, 30).until(expected_conditions.staleness_of(page))


def _sign_in(driver: WebDriver, url: str, token: str) -> None:
    driver.get(url)
    field = driver.find_element(By.ID, "token")
    label = driver.find_element(By.CSS_SELECTOR, "label[for='token']")
    assert label.text == "API token of the org"
    field.send_keys(token)
    _follow(driver, field, Keys.ENTER)


def _resources(driver: WebDriver) -> list[str]:
    names = driver.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)"
    )
    return [str(n) for n in names]


def test_the_record_page_shows_the_demo_records_emails_filter_history_and_paging(
    demo: Demo, browser: WebDriver, tmp_path: Path
) -> None:
    page = f"{demo.query}/ui/orgs/{demo.org}/records/contact-ann"
    _sign_in(browser, page, demo.token)

    assert browser.current_url == page  # back on the page, the token in no URL
    rows = _rows(browser)
    assert {(r["Source"], r["Status"]) for r in rows} == {
        ("Individual", "Clicked"),
        ("Mass Email", "Opened"),
        ("BCC Dropbox", "Sent"),
        ("External", "Received"),
    }
    tracked = next(r for r in rows if r["Status"] == "Clicked")
    assert tracked["Subject"] == "Our pricing"
    assert tracked["Direction"] == "Outgoing"
    assert tracked["Opens (human / machine)"].startswith("1 /")
    assert tracked["Clicks (human / machine)"].startswith("1 /")
    assert next(r for r in rows if r["Source"] == "External")["Direction"] == "Incoming"
    badge = browser.find_element(By.CSS_SELECTOR, "tr[data-status='Clicked'] .badge")
    assert "badge-clicked" in (badge.get_attribute("class") or "")
    browser.save_screenshot(str(tmp_path / "record-page.png"))

    # The session cookie: for this org's pages only, not readable by scripts, gone with the browser.
    (cookie,) = browser.get_cookies()
    assert cookie["httpOnly"] is True
    assert cookie["sameSite"] == "Strict"
    assert "expiry" not in cookie
    assert cookie["path"] == f"/ui/orgs/{demo.org}/"
    assert cookie["value"] == demo.token
    assert demo.token not in browser.page_source
    assert browser.execute_script("return document.cookie") == ""

    # Every request went to the query API itself.
    assert all(name.startswith(demo.query + "/") for name in _resources(browser))

    # The filter, by keyboard: Tab to "Sent from CRM", Enter.
    body = browser.find_element(By.TAG_NAME, "body")
    body.send_keys(Keys.TAB)
    for _ in range(20):
        active = browser.switch_to.active_element
        if active.text == "Sent from CRM":
            break
        active.send_keys(Keys.TAB)
    assert browser.switch_to.active_element.text == "Sent from CRM"
    _follow(browser, browser.switch_to.active_element, Keys.ENTER)
    crm = _rows(browser)
    assert {(r["Source"], r["Status"]) for r in crm} == {
        ("Individual", "Clicked"),
        ("Mass Email", "Opened"),
    }
    current = browser.find_element(By.CSS_SELECTOR, ".filter a[aria-current='page']")
    assert current.text == "Sent from CRM"

    # An email's history on click: each event with its decision.
    _follow(browser, browser.find_element(By.LINK_TEXT, "Our pricing"))
    history = browser.find_element(By.ID, "history")
    events = history.find_elements(By.CSS_SELECTOR, "tbody tr")
    types = [e.find_element(By.CSS_SELECTOR, "td[data-label='Event']").text for e in events]
    assert types[0] == "email_composed"
    assert {"email_sent", "email_delivered", "email_opened", "email_clicked"} <= set(types)
    decisions = {e.find_element(By.CSS_SELECTOR, ".decision").text for e in events}
    assert decisions == {"applied"}
    assert "Clicked" in history.find_element(By.CSS_SELECTOR, ".summary").text
    browser.save_screenshot(str(tmp_path / "record-page-history.png"))

    # Paging: two at a time, newest first, the same four emails over two pages.
    browser.get(f"{page}?limit=2")
    first = [r["id"] for r in _rows(browser)]
    _follow(browser, browser.find_element(By.LINK_TEXT, "Older emails"))
    second = [r["id"] for r in _rows(browser)]
    assert len(first) == 2
    assert len(second) == 2
    assert {*first, *second} == {r["id"] for r in rows}
    assert browser.find_elements(By.LINK_TEXT, "Older emails") == []
    _follow(browser, browser.find_element(By.LINK_TEXT, "Newest"))
    assert [r["id"] for r in _rows(browser)] == first


def test_a_violation_shows_in_the_history_and_markup_in_a_subject_stays_text(
    demo: Demo, browser: WebDriver, tmp_path: Path
) -> None:
    page = f"{demo.query}/ui/orgs/{demo.org}/records/lead-bob"
    _sign_in(browser, page, demo.token)
    rows = _rows(browser)
    markup = next(r for r in rows if r["id"] == demo.emails["markup"])
    assert markup["Subject"] == XSS_SUBJECT
    assert browser.execute_script("return window.__xss === undefined") is True
    assert browser.find_elements(By.CSS_SELECTOR, "table.emails script, table.emails img") == []
    # The mailbox email (sent through the rep's own server) reaches Sent at most.
    mailbox = next(r for r in rows if r["id"] == demo.emails["mailbox"])
    assert mailbox["Status"] == "Sent"
    _follow(browser, browser.find_element(By.LINK_TEXT, XSS_SUBJECT))
    heading = browser.find_element(By.ID, "history-heading").text
    assert XSS_SUBJECT in heading
    assert browser.execute_script("return window.__xss === undefined") is True


def test_another_orgs_token_sees_nothing(demo: Demo, browser: WebDriver) -> None:
    page = f"{demo.query}/ui/orgs/{demo.org}/records/contact-ann"
    _sign_in(browser, page, demo.other_token)
    assert (
        "That token is not valid for this org." in browser.find_element(By.ID, "sign-in-error").text
    )
    assert _rows(browser) == []
    assert browser.get_cookies() == []

    # Signed in to its own org, the same record id shows none of the demo's mail.
    own = f"{demo.query}/ui/orgs/{demo.other_org}/records/contact-ann"
    _sign_in(browser, own, demo.other_token)
    assert _rows(browser) == []
    assert "No emails on this record." in browser.find_element(By.CSS_SELECTOR, ".empty").text
    # And its cookie does not open the demo org's page.
    browser.get(page)
    assert browser.find_elements(By.ID, "token")
    assert _rows(browser) == []


def test_the_page_reads_on_a_phone_sized_screen(
    demo: Demo, browser: WebDriver, tmp_path: Path
) -> None:
    browser.set_window_size(390, 844)
    page = f"{demo.query}/ui/orgs/{demo.org}/records/contact-ann"
    _sign_in(browser, page, demo.token)
    assert len(_rows(browser)) == 4
    width = browser.execute_script("return document.documentElement.scrollWidth")
    viewport = browser.execute_script("return window.innerWidth")
    assert width <= viewport  # no sideways scrolling: each email is a card of labelled lines
    display = browser.execute_script(
        "return getComputedStyle(document.querySelector('table.emails td')).display"
    )
    assert display == "grid"
    browser.save_screenshot(str(tmp_path / "record-page-phone.png"))


# The WCAG contrast ratio of each text element against the first opaque background behind it.
_CONTRAST_JS = """
const lum = (rgb) => {
  const [r, g, b] = rgb.map((v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; });
  return 0.2126 * r + 0.7152 * g + 0.0722 * b;
};
const parse = (c) => c.match(/[\\d.]+/g).map(Number);
const background = (el) => {
  for (; el; el = el.parentElement) {
    const c = parse(getComputedStyle(el).backgroundColor);
    if (c.length < 4 || c[3] > 0) return c.slice(0, 3);
  }
  return [255, 255, 255];
};
return [...document.querySelectorAll(arguments[0])].filter((el) => el.innerText.trim()).map((el) => {
  const a = lum(parse(getComputedStyle(el).color).slice(0, 3)), b = lum(background(el));
  return [el.innerText.trim().slice(0, 30), (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05)];
});
"""


def test_every_text_on_the_page_meets_the_aa_contrast_ratio(demo: Demo, browser: WebDriver) -> None:
    page = f"{demo.query}/ui/orgs/{demo.org}/records/contact-ann"
    _sign_in(browser, page, demo.token)
    _follow(browser, browser.find_element(By.LINK_TEXT, "Our pricing"))
    selector = "h1, h2, th, td, a, .badge, .decision, .summary, button, .brand, .org"
    ratios = browser.execute_script(_CONTRAST_JS, selector)
    assert len(ratios) > 40
    low = [(text, round(ratio, 2)) for text, ratio in ratios if ratio < 4.5]
    assert low == []
