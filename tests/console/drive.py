"""Drives the real console in a headless browser (Chromium or Firefox) against a real Quarry
server.

Run by tests/console.rs, once per browser, which starts the server, fills two collections (a
generation and its successor), writes the eval files and passes everything as JSON on stdin:
  {"base": "http://127.0.0.1:PORT", "admin_key": ..., "read_key": ..., "collection": ...,
   "other": ..., "query": ..., "bad_filter": ..., "queries_file": ..., "qrels_file": ...,
   "job_path": ..., "screenshots": DIR, "browser": "chromium" | "firefox",
   "binary": PATH, "driver": PATH}
Prints one line per check and the load time of each page; exits non-zero on the first
failure. No host but the server can be reached (Chromium: other names do not resolve;
Firefox: every other host goes through a proxy that does not exist), and every page's
resource timings are read back: a request to any host but the server fails the run (in
Chromium, its network log is checked too).
"""

import json
import os
import sys
import time

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import Select, WebDriverWait

cfg = json.load(sys.stdin)
base = cfg["base"]
shots = cfg["screenshots"]
os.makedirs(shots, exist_ok=True)


def log(message):
    print(message, flush=True)


CHROMIUM = cfg["browser"] == "chromium"
if CHROMIUM:
    options = webdriver.ChromeOptions()
    options.binary_location = cfg["binary"]
    for arg in [
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1280,800",
        # No host but the server's address resolves: a page that fetched from a CDN would break.
        "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
    ]:
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(cfg["driver"]))
else:
    from selenium.webdriver.firefox.service import Service as GeckoService
    options = webdriver.FirefoxOptions()
    options.binary_location = cfg["binary"]
    options.add_argument("-headless")
    # Every host but the loopback server goes to a proxy on a closed port: a page that
    # fetched from a CDN would break. Firefox's own background traffic is off.
    for name, value in [
        ("network.proxy.type", 1),
        ("network.proxy.http", "127.0.0.1"),
        ("network.proxy.http_port", 9),
        ("network.proxy.ssl", "127.0.0.1"),
        ("network.proxy.ssl_port", 9),
        ("network.proxy.allow_hijacking_localhost", False),
        ("app.update.auto", False),
        ("browser.safebrowsing.malware.enabled", False),
        ("browser.safebrowsing.phishing.enabled", False),
        ("datareporting.policy.dataSubmissionEnabled", False),
        ("toolkit.telemetry.enabled", False),
    ]:
        options.set_preference(name, value)
    driver = webdriver.Firefox(options=options, service=GeckoService(cfg["driver"]))
    driver.set_window_size(1280, 800)
log(f"browser: {cfg['browser']} {driver.capabilities.get('browserVersion', '?')}")
# Hosts of every resource each page loaded (read from the page's resource timings).
resource_hosts = set()
# Polled every 20 ms (the default, 500 ms, would be most of what the page times measure).
wait = WebDriverWait(driver, 60, poll_frequency=0.02)


def find(css):
    return wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, css)))


def visible(css):
    return wait.until(EC.visibility_of_element_located((By.CSS_SELECTOR, css)))


def page(name, query=""):
    """Opens a page and waits until it has rendered; returns its load time in ms."""
    target = f"{base}/console#/{name}{query}"
    if driver.current_url == target:
        # The same hash would not navigate (and a reload would forget the key): step aside.
        driver.get(f"{base}/console#/elsewhere")
        find("main[data-loaded]")
    started = time.monotonic()
    driver.execute_script("document.getElementById('main').removeAttribute('data-loaded')")
    driver.get(target)
    find(f"main[data-loaded='{name}']")
    ms = (time.monotonic() - started) * 1000
    inside = driver.find_element(By.ID, "main").get_attribute("data-load-ms")
    log(f"page {name}: rendered in {ms:.0f} ms (its API calls {inside} ms)")
    note_resources()
    return ms


def note_resources():
    for url in driver.execute_script(
            "return performance.getEntriesByType('resource').concat(performance.getEntriesByType('navigation')).map(e => e.name)"):
        if not url.startswith(("data:", "blob:")):
            resource_hosts.add(url.split("/")[2] if "://" in url else url)


def shot(name):
    path = os.path.join(shots, f"{name}.png")
    driver.save_screenshot(path)
    log(f"screenshot {path}")


def use_key(key, role):
    field = find("#key")
    field.clear()
    field.send_keys(key)
    field.send_keys(Keys.ENTER)
    wait.until(lambda d: role in d.find_element(By.ID, "who").text)
    log(f"key accepted: {driver.find_element(By.ID, 'who').text}")


def check(condition, message):
    if not condition:
        raise AssertionError(message)
    log(f"ok: {message}")


try:
    # The page first, with no key: it loads, and says a key is needed.
    driver.get(f"{base}/console")
    find("main[data-loaded]")
    use_key(cfg["admin_key"], "admin")
    check(driver.execute_script("return document.cookie") == "", "no cookie holds the key")
    check(cfg["admin_key"] not in driver.current_url, "the key is not in the URL")

    # Collections: counts, model, aliases.
    times = {}
    times["collections"] = page("collections")
    table = find("main table").text
    check(cfg["collection"] in table and cfg["other"] in table, "both collections are listed")
    check(find("main").text.count("Create a collection") == 1, "an admin key sees the create form")
    check("proposed: weighted 0.80 / 0.20, 40 candidates" in table,
          "the collection's adopted and proposed search settings are shown")
    shot("collections")

    # Documents: a filter with a syntax error points at its column; a document's chunks.
    times["documents"] = page("documents", f"?c={cfg['collection']}")
    rows = driver.find_elements(By.CSS_SELECTOR, "main tbody tr")
    check(len(rows) > 0, f"documents are listed ({len(rows)})")
    where = find("input[name=where]")
    where.send_keys(cfg["bad_filter"])
    where.send_keys(Keys.ENTER)
    caret = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, ".caret").text)
    check("^" in caret and "column" in caret, f"the filter's error points at its column: {caret!r}")
    where.clear()
    where.send_keys(Keys.ENTER)
    wait.until(lambda d: not d.find_element(By.CSS_SELECTOR, ".caret").text)
    find("main tbody tr button").click()
    chunks = find("tr[id^=chunk-]")
    check(".." in chunks.text, "a document's chunks show their byte offsets")
    shot("documents")

    # Search: hits, and each hit's explanation as a chart.
    times["search"] = page("search")
    box = find("input[name=query]")
    box.send_keys(cfg["query"])
    box.send_keys(Keys.ENTER)
    hit = find(".hit")
    hits = driver.find_elements(By.CSS_SELECTOR, ".hit")
    check(len(hits) > 0, f"the search returns hits ({len(hits)}): {hit.text.splitlines()[0]!r}")
    check(len(driver.find_elements(By.CSS_SELECTOR, ".hit a.chunk-link")) == len(hits),
          "every hit links to its chunk")
    hit.find_element(By.TAG_NAME, "summary").click()
    chart = hit.find_element(By.CSS_SELECTOR, "svg.chart")
    label = chart.get_attribute("aria-label")
    check("rank" in label, f"the explanation chart shows each retriever's rank: {label!r}")
    shot("search")

    # Ask, answered by the real router: the grounded answer, each citation linked to its
    # source, each source to its chunk, and the contract's repairs (model calls) shown.
    times["ask"] = page("ask")
    q = find("input[name=question]")
    q.send_keys(cfg["ask"])
    q.send_keys(Keys.ENTER)
    WebDriverWait(driver, 300).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, "main .hit, main .error"))
    text = find("main").text
    check(not driver.find_elements(By.CSS_SELECTOR, "main .error"),
          f"the router answered without an error: {text[-300:]!r}")
    check("Answer" in text and "Sources" in text, "the page shows the answer and its sources")
    check("model call(s)" in text, "the page shows the model calls (a repair would be marked)")
    cites = driver.execute_script(
        "return [...document.querySelectorAll('main a.cite')].map(a => [a.getAttribute('href'), !!document.querySelector(a.getAttribute('href'))])")
    check(cites and all(ok for _, ok in cites), f"the answer's citations link to listed sources ({cites})")
    sources = driver.find_elements(By.CSS_SELECTOR, "main li.hit a.chunk-link")
    check(len(sources) > 0, f"every source links to its chunk ({len(sources)})")
    shot("ask")
    href = sources[0].get_attribute("href")
    chunk_id = href.split("chunk=")[1].split("&")[0]
    sources[0].click()
    target = find("tr.target")
    check(target.get_attribute("id") == f"chunk-{chunk_id}",
          f"a source's link opens its document with chunk {chunk_id} marked")

    # Jobs: one runs (live progress over server-sent events), one waits behind it and is
    # cancelled while queued.
    times["jobs"] = page("jobs")
    # Into a collection of their own, so the notes never reach the other pages' answers.
    Select(find("select[name=collection]")).select_by_value(cfg["jobs_collection"])
    path = find("input[name=path]")
    for _ in range(2):
        path.clear()
        path.send_keys(cfg["job_path"])
        path.send_keys(Keys.ENTER)
        time.sleep(0.3)
    # Rows are replaced as the watches report changes: read them in one script each time.
    def job_states():
        return dict(driver.execute_script(
            "return [...document.querySelectorAll('tr[id^=job-]')].map(r => [r.id, r.dataset.state])"))
    states = wait.until(lambda d: job_states() if len(job_states()) >= 2 else None)
    log(f"jobs: {states}")
    queued = [i for i, st in states.items() if st in ("queued", "running")]
    check(queued, "a job is still queued or running")
    job_id = queued[0]  # the newest first: the one waiting behind the other
    for _ in range(5):
        try:
            driver.find_element(By.CSS_SELECTOR, f"#{job_id} button").click()
            break
        except Exception:  # the row was replaced between finding and clicking: find it again
            time.sleep(0.1)
    wait.until(lambda d: job_states().get(job_id) == "cancelled")
    check(True, f"{job_id} was cancelled")
    other = [i for i in states if i != job_id][0]
    seen = set()
    def finished(_):
        st = job_states().get(other)
        seen.add(st)
        return st in ("succeeded", "cancelled", "failed")
    WebDriverWait(driver, 300).until(finished)
    state = job_states()[other]
    check(state == "succeeded", f"{other} succeeded, followed live through states {sorted(seen)}")
    shot("jobs")
    page("documents", f"?c={cfg['collection']}")  # back to the fixture collection

    # Eval: the same runs on both generations, compared (deltas with intervals, wins and
    # losses) as charts.
    times["eval"] = page("eval")
    find("input[name=queries]").send_keys(cfg["queries_file"])
    find("input[name=qrels]").send_keys(cfg["qrels_file"])
    Select(find("select[name=compare_with]")).select_by_value(cfg["other"])
    find("main form button[type=submit]").click()
    section = WebDriverWait(driver, 600).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, "main .results section svg.chart"))
    check(len(section) >= 1, f"{len(section)} comparison chart(s) rendered")
    marks = driver.execute_script(
        "return document.querySelectorAll('main .results section svg.chart circle').length")
    check(marks == 5 * len(section), f"each comparison chart marks its 5 metrics ({marks})")
    bars = driver.execute_script("return document.querySelectorAll('main .results svg.chart rect').length")
    check(bars >= 6, f"the runs chart draws a bar per run ({bars})")
    text = find("main .results").text
    check("95% interval" in text and "wins" in text, "the comparison shows intervals, wins and losses")
    driver.execute_script("document.querySelector('main .results section').scrollIntoView()")
    shot("eval")
    # The same on the split attached to the collection: no files.
    page("eval")
    Select(find("select[name=split]")).select_by_value("test")
    Select(find("select[name=compare_with]")).select_by_value(cfg["other"])
    find("main form button[type=submit]").click()
    attached = WebDriverWait(driver, 600).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, "main .results section svg.chart"))
    check(len(attached) >= 1, "an eval on the attached split renders its comparison without files")
    # Settings: the proposal against the adopted settings, on the attached split.
    page("eval")
    Select(find("select[name=split]")).select_by_value("test")
    Select(find("select[name=compare_with]")).select_by_value("@proposed")
    find("main form button[type=submit]").click()
    WebDriverWait(driver, 600).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, "main .results section svg.chart"))
    heading = find("main .results section h3").text
    check(heading.startswith("proposed against adopted"), f"the settings comparison renders: {heading!r}")
    # The decisions recorded with the collection, each comparison as a chart.
    decision = find("main .decisions details[open]")
    summary = decision.find_element(By.TAG_NAME, "summary").text
    check(" adopt " in f" {summary} " and "settings" in summary, f"the last decision is the settings adoption: {summary!r}")
    circles = decision.find_elements(By.CSS_SELECTOR, "svg.chart circle")
    check(len(circles) == 5, f"the decision's comparison is charted ({len(circles)} metrics)")
    driver.execute_script("document.querySelector('main .decisions').scrollIntoView()")
    shot("eval-settings")

    # A read-only key: no write controls anywhere, and the API refuses a write anyway.
    use_key(cfg["read_key"], "read")
    page("collections")
    body = find("main").text
    check("Create a collection" not in body and not driver.find_elements(By.CSS_SELECTOR, "main button.danger"),
          "a read-only key sees no create or delete controls")
    page("jobs")
    check(not driver.find_elements(By.CSS_SELECTOR, "input[name=path]"), "a read-only key sees no job form")
    page("documents", f"?c={cfg['collection']}")
    find("main tbody tr button").click()
    find("tr[id^=chunk-]")
    check(not driver.find_elements(By.CSS_SELECTOR, "main button.danger"), "a read-only key sees no delete button")
    status = driver.execute_async_script(
        """const done = arguments[arguments.length - 1];
        fetch('/v1/collections', {method: 'POST', headers: {'Authorization': 'Bearer ' + arguments[0],
          'Content-Type': 'application/json'}, body: JSON.stringify({name: 'sneaky'})})
          .then(r => done(r.status), e => done(String(e)));""", cfg["read_key"])
    check(status == 403, f"the API refuses a read-only key's write ({status})")

    # Keyboard: the first Tab reaches the skip link, and every page is a link in the nav.
    driver.get(f"{base}/console")
    find("main[data-loaded]")
    driver.find_element(By.TAG_NAME, "body").send_keys(Keys.TAB)
    focused = driver.switch_to.active_element
    check(focused.get_attribute("class") == "skip", "Tab reaches the skip link first")
    nav = [a.text for a in driver.find_elements(By.CSS_SELECTOR, "nav a")]
    check(nav == ["Collections", "Documents", "Search", "Ask", "Jobs", "Eval"], f"every page is in the nav: {nav}")
    unlabelled = driver.execute_script(
        """return [...document.querySelectorAll('input, select, textarea')]
             .filter(e => e.type !== 'hidden' && !(e.labels && e.labels.length) && !e.getAttribute('aria-label'))
             .map(e => e.name || e.id);""")
    check(not unlabelled, f"every control has a label ({unlabelled})")

    # A phone's width: nothing wider than the screen.
    driver.set_window_size(390, 844)
    use_key(cfg["admin_key"], "admin")
    page("collections")
    overflow = driver.execute_script("return document.documentElement.scrollWidth - window.innerWidth")
    check(overflow <= 1, f"no horizontal scrolling at a phone's width ({overflow} px)")
    shot("collections-phone")

    # Page loads on SciFact (5,183 documents): each page rendered with its API calls, and a
    # search from its submission to its hits on the page.
    if cfg.get("scifact"):
        loads = {}
        for name, query in [("collections", ""), ("documents", "?c=scifact"), ("search", ""),
                            ("ask", ""), ("jobs", ""), ("eval", "")]:
            loads[name] = page(name, query)
        page("search")
        Select(find("select[name=collection]")).select_by_value("scifact")
        box = find("input[name=query]")
        box.send_keys("ALDH1 expression is associated with poorer prognosis for breast cancer")
        started = time.monotonic()
        box.send_keys(Keys.ENTER)
        find(".hit")
        loads["search hits"] = (time.monotonic() - started) * 1000
        shot("search-scifact")
        log("SciFact page load times (ms): " + ", ".join(f"{k} {v:.0f}" for k, v in loads.items()))

    # Nothing came from anywhere but the server.
    server = base.split("/")[2]
    check(resource_hosts == {server}, f"every page's resources came from the server ({sorted(resource_hosts)})")
    if CHROMIUM:
        hosts = set()
        for entry in driver.get_log("performance"):
            message = json.loads(entry["message"])["message"]
            if message.get("method") == "Network.requestWillBeSent":
                url = message["params"]["request"]["url"]
                if not url.startswith(("data:", "blob:")):
                    hosts.add(url.split("/")[2] if "://" in url else url)
        check(hosts == {server}, f"every request went to the server ({sorted(hosts)})")
    log("page load times (ms): " + ", ".join(f"{k} {v:.0f}" for k, v in times.items()))
except Exception:
    shot("failure")
    if CHROMIUM:
        for entry in driver.get_log("browser"):
            log(f"browser console: {entry}")
    raise
finally:
    driver.quit()
