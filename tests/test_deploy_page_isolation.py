"""Pushed pages share the deploy page's origin; in a real Chromium, through the real frontend (HAProxy with
its cache) and serve.py, none of their scripts can read the token the owner types there: not by a service
worker with scope "/", not by framing /_site/, not by opening it in a window. The page itself still works
under its strict CSP (it asks for the token, then shows the owner's deploy data; the rollback form sends
the token). Through the frontend, from loopback too, the deploy data needs the token."""

from __future__ import annotations

import ipaddress
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from container.frontend import Server, Service, render_haproxy_conf
from tests.helpers import REPO_ROOT, Process, chromium, free_port, python_env, wait_for

pytestmark = pytest.mark.system  # Chromium, serve.py on ports

SECRET = "webhook-secret-typed-by-the-owner"
TYPED = "what-the-owner-typed"
OLDER, LIVE = "20260101T000000Z-aaaaaaaaaaaa", "20260102T000000Z-bbbbbbbbbbbb"
EMBARGO = "Embargo: Initech deal (do not leak)"  # a commit subject: the owner's

# What a hostile commit can push: pages whose scripts go after the token field.
PLAIN = "<!doctype html><title>plain</title><p>An ordinary page with a field.</p><input id=token>"
SERVICE_WORKER = """\
self.addEventListener('fetch', function (event) {
  event.respondWith(new Response('<input id=token>', {headers: {'Content-Type': 'text/html'}}));
});
"""
SW_ATTACK = """<!doctype html><title>sw</title><script>
fetch('/sw.js')  // a plain GET first: the frontend's cache now holds the file
  .then(function () { return navigator.serviceWorker.register('/sw.js', {scope: '/'}); })
  .then(function () { document.title = 'registered'; },
        function (error) { document.title = 'refused: ' + error.message; });
</script>"""
# Each spy reads the token field of a target every 100 ms; the control target is an ordinary pushed page,
# which shows that the same technique does read a field where nothing stops it.
SPY = """
window.seen = {};
function spy(name, getDocument) {
  setInterval(function () {
    var out;
    try {
      var doc = getDocument();
      var field = doc && doc.getElementById('token');
      out = field ? 'token:' + field.value : (doc ? 'document:' + doc.URL : 'no document');
    } catch (error) { out = 'error:' + error.name; }
    window.seen[name] = out;
  }, 100);
}
"""
FRAME_ATTACK = f"""<!doctype html><title>frame</title>
<iframe id=admin src="/_site/"></iframe><iframe id=control src="/plain.html"></iframe><script>{SPY}
spy('admin', function () {{ return document.getElementById('admin').contentDocument; }});
spy('control', function () {{ return document.getElementById('control').contentDocument; }});
</script>"""
OPEN_ATTACK = f"""<!doctype html><title>open</title><script>{SPY}
var admin = window.open('/_site/', 'admin'), control = window.open('/plain.html', 'control');
spy('admin', function () {{ return admin.document; }});
spy('control', function () {{ return control.document; }});
</script>"""


@dataclass
class Frontend:
    base: str
    data: Path


@pytest.fixture
def frontend(tmp_path: Path) -> Iterator[Frontend]:
    data = tmp_path / "data"
    for release in (OLDER, LIVE):
        (data / "releases" / release).mkdir(parents=True)
        (data / "releases" / release / "index.html").write_text(f"<!doctype html><title>{release}</title>")
    pushed = data / "releases" / LIVE
    for name, text in (("plain.html", PLAIN), ("sw.js", SERVICE_WORKER), ("sw-attack.html", SW_ATTACK),
                       ("frame-attack.html", FRAME_ATTACK), ("open-attack.html", OPEN_ATTACK)):
        (pushed / name).write_text(text)
    (data / "current").symlink_to(f"releases/{LIVE}")
    (data / "status.json").write_text(json.dumps({"builds": [
        {"commit": "b" * 40, "subject": EMBARGO, "author": "Owner", "result": "success", "release": LIVE}]}))
    backend, port = free_port(), free_port()
    serve = Process([sys.executable, str(REPO_ROOT / "serve.py"), str(data / "current"), "--host", "::1",
                     "--port", str(backend)], python_env(WEBHOOK_SECRET=SECRET), tmp_path / "serve.log")
    config = tmp_path / "haproxy.cfg"
    config.write_text(render_haproxy_conf(
        (Service("site", ipaddress.IPv4Address("127.0.0.1"), port, "/_site/health",
                 (Server("s1", ipaddress.IPv6Address("::1"), backend),)),), tmp_path))
    haproxy = Process(["haproxy", "-W", "-f", str(config)], python_env(), tmp_path / "haproxy.log")
    base = f"http://127.0.0.1:{port}"  # a secure context, so service workers are allowed at all
    try:
        wait_for("the site through HAProxy", lambda: requests.get(base + "/_site/health", timeout=5).ok, 30)
        yield Frontend(base, data)
    finally:
        haproxy.stop()
        serve.stop()


def live_release(data: Path) -> str:
    return (data / "current").readlink().name


def test_admin_answers_forbid_framing_openers_and_foreign_scripts(frontend: Frontend) -> None:
    for path in ("/_site/", "/_site/status", "/_site/nothing"):
        headers = requests.get(frontend.base + path, timeout=5).headers
        assert headers["Cross-Origin-Opener-Policy"] == "same-origin" and headers["X-Frame-Options"] == "DENY"
        csp = headers["Content-Security-Policy"]
        assert "frame-ancestors 'none'" in csp and "default-src 'none'" in csp and "unsafe-inline" not in csp
    answer = requests.post(frontend.base + "/_site/rollback", data={"release": OLDER}, timeout=5)
    assert answer.status_code == 401 and "frame-ancestors 'none'" in answer.headers["Content-Security-Policy"]
    assert "Content-Security-Policy" not in requests.get(frontend.base + "/plain.html", timeout=5).headers


def test_the_deploy_data_needs_the_token_through_the_frontend_also_from_loopback(frontend: Frontend) -> None:
    for path in ("/_site/", "/_site/status"):
        assert EMBARGO not in requests.get(frontend.base + path, timeout=5).text, path
        owner = requests.get(frontend.base + path, headers={"Authorization": f"Bearer {SECRET}"}, timeout=5)
        assert owner.status_code == 200 and EMBARGO in owner.text, path
        wrong = requests.get(frontend.base + path, headers={"Authorization": "Bearer guess"}, timeout=5)
        assert wrong.status_code == 403 and EMBARGO not in wrong.text
    # The owner's answer is not kept by the frontend's cache for anyone else.
    assert EMBARGO not in requests.get(frontend.base + "/_site/status", timeout=5).text


def test_a_service_worker_script_is_refused_also_when_the_cache_holds_it(frontend: Frontend) -> None:
    url = frontend.base + "/sw.js"
    assert requests.get(url, timeout=5).status_code == 200
    assert "Age" in requests.get(url, timeout=5).headers  # the frontend answered from its cache
    refused = requests.get(url, headers={"Service-Worker": "script"}, timeout=5)
    assert refused.status_code == 403 and "application/javascript" not in refused.headers.get("Content-Type", "")
    assert requests.get(url, timeout=5).status_code == 200  # a plain GET still works


def test_pushed_scripts_cannot_read_the_token_field_in_chromium(frontend: Frontend, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    driver = chromium(tmp_path)
    try:
        # 1. A service worker with scope "/" would answer every request, /_site/ included.
        driver.get(frontend.base + "/sw-attack.html")
        title = wait_for("the registration to settle", lambda: driver.title if driver.title != "sw" else None, 15)
        assert title.startswith("refused:") and "(403)" in title, title
        registrations = driver.execute_async_script(
            "var done = arguments[arguments.length - 1];"
            "navigator.serviceWorker.getRegistrations().then(function (r) { done(r.length); });")
        assert registrations == 0

        # 2. A frame: the control frame's field is read; /_site/ does not load inside the pushed page.
        driver.get(frontend.base + "/frame-attack.html")
        seen = wait_for("the spies", lambda: (lambda s: s if len(s) == 2 and s["control"].startswith("token:")
                                              else None)(driver.execute_script("return window.seen")), 15)
        driver.switch_to.frame(driver.find_element(By.ID, "control"))
        driver.find_element(By.ID, "token").send_keys(TYPED)
        driver.switch_to.default_content()
        wait_for("the control frame's field read",
                 lambda: driver.execute_script("return window.seen.control") == "token:" + TYPED, 5)
        seen = driver.execute_script("return window.seen")
        assert not seen["admin"].startswith("token:"), seen

        # 3. A window: the pushed page opens /_site/ and the owner types the token there.
        driver.get(frontend.base + "/open-attack.html")
        attacker = driver.current_window_handle
        handles = wait_for("both windows", lambda: set(driver.window_handles) - {attacker}
                           if len(driver.window_handles) == 3 else None, 15)
        windows = {}
        for handle in handles:
            driver.switch_to.window(handle)
            wait_for("a token field", lambda: driver.find_elements(By.ID, "token"), 15)
            windows["admin" if driver.current_url.endswith("/_site/") else "control"] = handle
            driver.find_element(By.ID, "token").send_keys(TYPED)
        driver.switch_to.window(attacker)
        wait_for("the control window's field read",
                 lambda: driver.execute_script("return window.seen.control") == "token:" + TYPED, 5)
        seen = driver.execute_script("return window.seen")
        assert TYPED not in json.dumps(seen["admin"]) and not seen["admin"].startswith("token:"), seen

        # The deploy page in that window works: its own style applies; it shows the owner's part only
        # for the token, and the form sends the token.
        driver.switch_to.window(windows["admin"])
        assert driver.execute_script("return getComputedStyle(document.body).maxWidth") == "960px"
        body = driver.find_element(By.TAG_NAME, "body").text
        assert LIVE in body and EMBARGO not in body and not driver.find_elements(By.CSS_SELECTOR, "form.rollback")
        token = driver.find_element(By.ID, "token")
        token.clear()
        token.send_keys(SECRET)
        driver.find_element(By.CSS_SELECTOR, "#unlock button").click()
        wait_for("the owner's part", lambda: driver.find_elements(By.CSS_SELECTOR, "form.rollback"), 10)
        assert EMBARGO in driver.find_element(By.TAG_NAME, "body").text
        assert live_release(frontend.data) == LIVE
        driver.find_element(By.CSS_SELECTOR, "form.rollback button").click()
        alert = WebDriverWait(driver, 10).until(expected_conditions.alert_is_present())
        assert f"{OLDER} is live until the next push" in alert.text
        alert.accept()
        assert live_release(frontend.data) == OLDER
        # "clean build and publish": the page sends the token; the watcher finds the request in DATA_DIR/rebuild.
        wait_for("the refreshed owner's part", lambda: driver.find_elements(By.CSS_SELECTOR, "form.rebuild button"), 10)
        driver.find_element(By.CSS_SELECTOR, "form.rebuild button").click()
        alert = WebDriverWait(driver, 10).until(expected_conditions.alert_is_present())
        assert "a clean build of the branch's head starts now" in alert.text
        alert.accept()
        assert (frontend.data / "rebuild").is_file()
    finally:
        driver.quit()
