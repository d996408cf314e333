#!/usr/bin/env python3
"""The operator console in a real browser (Debian's chromium and chromedriver, driven by
selenium from PyPI), against a stack started as `make run` starts it
(scripts/console-test.sh starts it and passes GATEWAY and BOROUGH_ADMIN_TOKEN).

Signs in (by keyboard), creates a tenant, issues a key, saves a config value the schema
refuses (the console's own check, then the server's) and one it accepts, sees a
compare-and-set conflict with the newer value, rolls back, watches a live status change
arrive without a reload, signs out; checks CSRF (a change without the token is refused),
the Content-Security-Policy (an injected inline script does not run), labels on every
control, and a narrow window. Screenshots of each page go to target/console/.
"""

import json
import os
import pathlib
import sys
import time
import urllib.error
import urllib.request
import uuid

from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import Select, WebDriverWait

GATEWAY = os.environ["GATEWAY"]
TOKEN = os.environ["BOROUGH_ADMIN_TOKEN"]
SHOTS = pathlib.Path(os.environ.get("CONSOLE_SHOTS", "target/console"))
started = time.monotonic()


def log(message):
    print(f"console-test [{time.monotonic() - started:5.1f}s] {message}", flush=True)


def api(method, path, body=None, headers=None):
    """The admin API with the token, as curl would call it."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(GATEWAY + path, data=data, method=method)
    request.add_header("Authorization", f"Bearer {TOKEN}")
    request.add_header("Content-Type", "application/json")
    for key, value in (headers or {}).items():
        request.add_header(key, value)
    with urllib.request.urlopen(request, timeout=10) as response:
        text = response.read().decode()
        return response.status, response.headers, json.loads(text) if text else None


def browser():
    options = webdriver.ChromeOptions()
    for argument in ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--window-size=1280,900", "--lang=en-US"]:
        options.add_argument(argument)
    options.binary_location = os.environ.get("CHROMIUM", "/usr/bin/chromium")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = webdriver.ChromeService(executable_path=os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver"))
    return webdriver.Chrome(options=options, service=service)


class Console:
    def __init__(self, driver):
        self.d = driver
        self.wait = WebDriverWait(driver, 10)

    def shot(self, name):
        SHOTS.mkdir(parents=True, exist_ok=True)
        path = SHOTS / f"{name}.png"
        self.d.save_screenshot(str(path))
        log(f"   screenshot {path}")

    def visible(self, css):
        return self.wait.until(EC.visibility_of_element_located((By.CSS_SELECTOR, css)))

    def text_appears(self, css, text, timeout=10):
        WebDriverWait(self.d, timeout).until(EC.text_to_be_present_in_element((By.CSS_SELECTOR, css), text))

    def button(self, label):
        xpath = f"//button[normalize-space()='{label}']"
        return self.wait.until(EC.element_to_be_clickable((By.XPATH, xpath)))

    def field(self, label):
        """The control a visible <label> names (by its text)."""
        labels = [l for l in self.d.find_elements(By.TAG_NAME, "label") if l.text.strip() == label and l.is_displayed()]
        assert labels, f"no visible label {label!r}"
        return self.d.find_element(By.ID, labels[-1].get_attribute("for"))

    def error_text(self):
        errors = [e.text for e in self.d.find_elements(By.CSS_SELECTOR, ".error[role=alert]") if e.is_displayed()]
        return " | ".join(errors)

    def every_control_is_labelled(self):
        unlabelled = self.d.execute_script("""
            return [...document.querySelectorAll('input, select, textarea')]
              .filter(e => e.offsetParent !== null)
              .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label'))
              .map(e => e.outerHTML.slice(0, 80));""")
        assert not unlabelled, f"controls without a label: {unlabelled}"


def main():
    d = browser()
    c = Console(d)
    try:
        run(d, c)
    except Exception:
        c.shot("failure")
        log(f"at {d.current_url}")
        try:
            log("tenants: " + json.dumps(api("GET", "/admin/v1/tenants?limit=100")[2]))
        except Exception as e:  # the failure is what matters
            log(f"tenants: {e}")
        log("console log:\n" + "\n".join(str(e) for e in d.get_log("browser")))
        raise
    finally:
        d.quit()


def run(d, c):
    # ---- headers, sign-in ------------------------------------------------------------
    with urllib.request.urlopen(GATEWAY + "/console", timeout=10) as response:
        csp = response.headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp, csp
        assert response.headers["X-Frame-Options"] == "DENY"
    d.get(GATEWAY + "/console")
    c.visible("#sign-in-form")
    c.every_control_is_labelled()
    c.shot("01-sign-in")
    token = c.field("Admin token")
    token.send_keys("a-wrong-token-of-some-length", Keys.ENTER)
    c.text_appears("#sign-in-error", "not valid")
    log("a wrong token: refused, said so")
    # By keyboard only: the field has focus after the error; Enter submits.
    token.clear()
    token.send_keys(TOKEN, Keys.ENTER)
    c.visible("#nav")
    c.text_appears("#view h1", "Tenants")
    log("signed in (keyboard)")
    cookies = {cookie["name"]: cookie for cookie in d.get_cookies()}
    session = cookies["borough_console"]
    assert session["httpOnly"] and session.get("sameSite") == "Strict", session
    assert d.execute_script("return document.cookie").find("borough_console") < 0, "the cookie is readable by script"

    # ---- tenants ---------------------------------------------------------------------
    name = f"console-{uuid.uuid4().hex[:6]}"
    c.field("Name").send_keys(name)
    placement = Select(c.field("Placement"))
    placement.select_by_value("database")
    url_label = "Database URL (empty: Borough creates the database)"
    assert c.field(url_label).is_displayed(), "a database placement asks for its URL"
    placement.select_by_value("shared")
    assert not [l for l in d.find_elements(By.TAG_NAME, "label") if l.text == url_label and l.is_displayed()]
    c.button("Create tenant").click()
    key = c.visible(".once input.secret").get_attribute("value")
    assert key.startswith("bk_"), key
    log(f"created tenant {name}; its key shown once")
    c.shot("02-tenants")
    # Search finds it.
    search = c.field("Search")
    search.send_keys(name)
    c.text_appears("#view table tbody", name)
    d.find_element(By.LINK_TEXT, name).click()
    c.text_appears("#view h1", name)
    c.every_control_is_labelled()
    c.button("Issue a key").click()
    second = c.visible(".once input.secret").get_attribute("value")
    assert second.startswith("bk_") and second != key
    log("issued a second key")
    # Revoke the first: it stops working.
    prefix = key.split("_")[1]
    d.find_element(By.CSS_SELECTOR, f"button[aria-label='Revoke key {prefix}']").click()
    d.switch_to.alert.accept()
    c.text_appears("#view", "revoked")
    request = urllib.request.Request(GATEWAY + "/api/v1/users?limit=1", headers={"Authorization": f"Bearer {key}"})
    try:
        urllib.request.urlopen(request, timeout=5)
        raise AssertionError("a revoked key still works")
    except urllib.error.HTTPError as e:
        assert e.code == 401, e.code
    log("revoked the first key: 401 with it")
    rps = c.field("Requests per second")
    rps.clear()
    rps.send_keys("250")
    c.button("Save limit").click()
    c.text_appears("#view", "Saved: this tenant's own limit")
    tenant_id = d.current_url.rsplit("/", 1)[1]
    assert api("GET", f"/admin/v1/tenants/{tenant_id}/limits")[2]["requests_per_second"] == 250
    c.shot("03-tenant")

    # ---- configuration ---------------------------------------------------------------
    ns = c.field("Namespace")
    ns.send_keys("app")
    c.button("Open namespace").click()
    c.text_appears("#view h1", f"tenant/{tenant_id}/app")
    c.every_control_is_labelled()
    schema = {"type": "object", "required": ["mode"],
              "properties": {"mode": {"enum": ["light", "dark"]}, "accent": {"type": "string", "pattern": "^#[0-9a-f]{6}$"}}}
    box = c.field("JSON Schema of this namespace (empty: none)")
    box.clear()
    box.send_keys(json.dumps(schema))
    c.button("Save schema").click()
    c.text_appears("#notice", "Schema saved")
    c.field("Key").send_keys("theme")
    value = c.field("Value (JSON)")

    def save(text):
        value.clear()
        value.send_keys(text)
        c.button("Save").click()

    save('{"mode": "dark"')  # not JSON
    c.text_appears("#view form .error", "Not valid JSON")
    save('{"mode": "neon"}')  # the console's own schema check
    c.text_appears("#view form .error", "schema refuses")
    log("refused before saving: " + c.error_text())
    save('{"mode": "dark", "accent": "red"}')  # passes the console's check; the server's 422
    WebDriverWait(d, 10).until(lambda _: "accent" in c.error_text() or "schema" in c.error_text().lower())
    log("refused by the server: " + c.error_text())
    c.shot("04-config-refused")
    save('{"mode": "dark"}')
    c.text_appears("#notice", "Saved theme at revision")
    revision = int(d.find_element(By.ID, "notice").text.rstrip(".").rsplit(" ", 1)[1])
    save('{"mode": "light"}')
    c.text_appears("#notice", f"Saved theme at revision {revision + 1}")
    log(f"saved two accepted values (revisions {revision} and {revision + 1})")
    # Someone else changes it meanwhile: the console's next save is a conflict showing the newer value.
    _, headers, entry = api("GET", f"/admin/v1/tenants/{tenant_id}/config/app/theme")
    api("PUT", f"/admin/v1/tenants/{tenant_id}/config/app/theme", {"mode": "dark", "accent": "#123abc"},
        {"If-Match": headers["ETag"]})
    save('{"mode": "light", "accent": "#ffffff"}')
    c.text_appears("#view", "Changed meanwhile")
    c.text_appears("#view .card.warn pre", "#123abc")
    c.shot("05-config-conflict")
    log("a concurrent change: shown with the newer value")
    c.button("Load the newer value").click()
    # History: diff, then roll back to the first accepted value.
    c.text_appears("#view", "History of theme")
    rows = d.find_elements(By.XPATH, "//h2[starts-with(., 'History of')]/following-sibling::table[1]/tbody/tr")
    assert len(rows) >= 3, len(rows)
    rows[0].find_element(By.XPATH, ".//button[normalize-space()='Diff']").click()
    c.visible("pre.diff .add")
    # Any two revisions: the first accepted value against the newest.
    oldest = rows[-1].find_element(By.TAG_NAME, "td").text
    Select(c.field("From revision")).select_by_value(oldest)
    c.button("Compare").click()
    c.text_appears("pre.diff", '"accent": "#123abc"')
    assert any("dark" in e.text for e in d.find_elements(By.CSS_SELECTOR, "pre.diff .add, pre.diff .same"))
    first = rows[-1]
    first_revision = first.find_element(By.TAG_NAME, "td").text
    first.find_element(By.XPATH, ".//button[normalize-space()='Roll back to this']").click()
    d.switch_to.alert.accept()
    c.text_appears("#notice", f"back to revision {first_revision}")
    assert api("GET", f"/admin/v1/tenants/{tenant_id}/config/app/theme")[2]["value"] == {"mode": "dark"}
    c.shot("06-config-history")
    log(f"rolled back to revision {first_revision}")

    # ---- CSRF and CSP, from the page itself ------------------------------------------------
    status = d.execute_async_script("""
        const done = arguments[arguments.length - 1];
        fetch('/admin/v1/tenants/' + arguments[0] + '/limits', {method: 'PUT', credentials: 'same-origin',
              headers: {'Content-Type': 'application/json'}, body: '{"requests_per_second": 1, "burst": 1}'})
          .then(r => done(r.status), e => done(String(e)));""", tenant_id)
    assert status == 403, f"a change without the CSRF token answered {status}"
    assert api("GET", f"/admin/v1/tenants/{tenant_id}/limits")[2]["requests_per_second"] == 250
    log("a change with the cookie but without the CSRF token: 403, nothing changed")
    ran = d.execute_async_script("""
        const done = arguments[arguments.length - 1];
        let violated = false;
        document.addEventListener('securitypolicyviolation', () => { violated = true; });
        window.injected = false;
        const s = document.createElement('script');
        s.textContent = 'window.injected = true';
        document.body.appendChild(s);
        setTimeout(() => done({injected: window.injected, violated}), 200);""")
    assert ran == {"injected": False, "violated": True}, ran
    log("an injected inline script: blocked by the CSP")

    # ---- live status -------------------------------------------------------------------
    d.find_element(By.LINK_TEXT, "Live status").click()
    c.text_appears("#view", "Updated")
    c.text_appears("#view", "gateway")
    d.execute_script("window.sameDocument = 'yes'")

    def hello_total():
        return d.execute_script("""
            for (const row of document.querySelectorAll('#view table tbody tr')) {
              const cells = [...row.cells].map(c => c.textContent);
              if (cells[0] === 'GET' && cells[1] === '/hello') return Number(cells[6]);
            }
            return 0;""")

    before = hello_total()
    for _ in range(25):
        urllib.request.urlopen(GATEWAY + "/hello", timeout=5).read()
    WebDriverWait(d, 15).until(lambda _: hello_total() >= before + 25)
    assert d.execute_script("return window.sameDocument") == "yes", "the page was reloaded"
    log(f"live status: GET /hello went {before} -> {hello_total()} without a reload")
    # A config change shows up as a new applied revision too.
    c.shot("07-status")

    # ---- a narrow window ------------------------------------------------------------------
    d.set_window_size(420, 900)
    d.find_element(By.LINK_TEXT, "Tenants").click()
    c.text_appears("#view h1", "Tenants")
    time.sleep(0.3)
    overflow = d.execute_script("return document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 1, f"the narrow page scrolls sideways by {overflow}px"
    c.shot("08-narrow")
    d.set_window_size(1280, 900)

    # ---- purge, with the name typed ---------------------------------------------------------
    d.get(f"{GATEWAY}/console#/tenants/{tenant_id}")
    c.text_appears("#view h1", name)
    c.text_appears("#view ul.namespaces", "app — 1 key, with a schema")
    purge = c.button("Suspend tenant")  # present; suspending is part of purging
    confirm_box = c.field(f"Type the tenant's name ({name}) to purge it: data, configuration, record")
    purge_button = d.find_element(By.XPATH, "//button[normalize-space()='Purge tenant']")
    assert not purge_button.is_enabled(), "purge is offered before the name is typed"
    confirm_box.send_keys(name[:-1])
    assert not purge_button.is_enabled()
    confirm_box.send_keys(name[-1])
    assert purge_button.is_enabled()
    purge_button.click()
    c.text_appears("#notice", "was purged")
    try:
        api("GET", f"/admin/v1/tenants/{tenant_id}")
        raise AssertionError("the purged tenant is still there")
    except urllib.error.HTTPError as e:
        assert e.code == 404, e.code
    log("purged the tenant after typing its name")

    # ---- sign out --------------------------------------------------------------------------
    c.button("Sign out").click()
    c.visible("#sign-in-form")
    c.text_appears("#notice", "Signed out")
    status = d.execute_async_script("""
        const done = arguments[arguments.length - 1];
        fetch('/admin/v1/status', {credentials: 'same-origin'}).then(r => done(r.status), e => done(String(e)));""")
    assert status == 401, f"after sign-out the admin API answered {status}"
    c.shot("09-signed-out")
    log("signed out: the session is over")


if __name__ == "__main__":
    try:
        main()
    except (AssertionError, TimeoutException) as e:
        log(f"FAILED: {type(e).__name__}: {e}")
        sys.exit(1)
    log("passed")
