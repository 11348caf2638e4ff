"""Speed of the web console in Debian's Chromium (Playwright): the first
load of the page (cold cache, then warm), and the instance list over many
instances: the first page, and flipping through every page.

Environment: GUMTREE_CONSOLE_URL, GUMTREE_CHROMIUM, GUMTREE_PASSWORD (of
eucalyptus/admin), GUMTREE_INSTANCES (how many the account has).
"""

import os
import statistics

from playwright.sync_api import expect, sync_playwright

URL = os.environ["GUMTREE_CONSOLE_URL"]
TOTAL = int(os.environ["GUMTREE_INSTANCES"])
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def med_max(v):
    return f"median {statistics.median(v):.0f} ms, max {max(v):.0f} ms"


LOADED = """() => {
    const nav = performance.getEntriesByType('navigation')[0];
    const res = performance.getEntriesByType('resource');
    return {ready: performance.now(), dcl: nav.domContentLoadedEventEnd, load: nav.loadEventEnd,
            page: nav.transferSize, assets: res.reduce((n, r) => n + r.transferSize, 0),
            decoded: res.reduce((n, r) => n + r.decodedBodySize, 0) + nav.decodedBodySize, files: res.length};
}"""

with sync_playwright() as pw:
    browser = pw.chromium.launch(executable_path=os.environ["GUMTREE_CHROMIUM"], headless=True, args=ARGS)
    cold, warm = [], []
    for _ in range(5):
        ctx = browser.new_context(ignore_https_errors=True)
        page = ctx.new_page()
        page.goto(URL, wait_until="load")
        expect(page.locator("#signin")).to_be_visible()
        cold.append(page.evaluate(LOADED))
        page.reload(wait_until="load")
        expect(page.locator("#signin")).to_be_visible()
        warm.append(page.evaluate(LOADED))
        ctx.close()
    c = cold[-1]
    print(f"first load, cold cache: sign-in page ready {med_max([x['ready'] for x in cold])} "
          f"(load event {statistics.median([x['load'] for x in cold]):.0f} ms); "
          f"{c['files'] + 1} files, {(c['page'] + c['assets']) / 1024:.0f} KiB over the wire "
          f"for {c['decoded'] / 1024:.0f} KiB (gzip)")
    w = warm[-1]
    print(f"load again, warm cache: ready {med_max([x['ready'] for x in warm])}; "
          f"{(w['page'] + w['assets']) / 1024:.1f} KiB over the wire (assets from cache, the page revalidated)")

    ctx = browser.new_context(ignore_https_errors=True, viewport={"width": 1360, "height": 900})
    page = ctx.new_page()
    page.goto(URL)
    page.locator("#account").fill("eucalyptus")
    page.locator("#user").fill("admin")
    page.locator("#password").fill(os.environ["GUMTREE_PASSWORD"])
    page.locator("#signin-button").click()
    expect(page.locator("#whoami")).to_be_visible()
    for size in (50, 200):
        firsts, flips = [], []
        for _ in range(3):
            page.goto(URL + "#/dashboard")
            expect(page.locator(".cards")).to_be_visible(timeout=60_000)
            t = page.evaluate("""async (size) => {
                const t0 = performance.now();
                location.hash = '#/instances';
                const until = (f) => new Promise(res => { const tick = () => f() ? res() : requestAnimationFrame(tick); tick(); });
                await until(() => document.querySelector('#page-size'));
                const sel = document.querySelector('#page-size');
                if (Number(sel.value) !== size) { sel.value = String(size); sel.dispatchEvent(new Event('change')); }
                await until(() => { const l = document.querySelector('#instance-list'); return l && Number(l.dataset.rows) === size; });
                return performance.now() - t0;
            }""", size)
            firsts.append(t)
        pages = (TOTAL + size - 1) // size
        for n in range(2, pages + 1):
            t = page.evaluate("""async (n) => {
                const info = document.querySelector('#page-info');
                const t0 = performance.now();
                document.querySelector('#next-page').click();
                await new Promise(res => { const tick = () => info.textContent === 'page ' + n && document.querySelector('#instance-list').dataset.rows ? res() : requestAnimationFrame(tick); tick(); });
                return performance.now() - t0;
            }""", n)
            flips.append(t)
        rows = int(page.locator("#instance-list").get_attribute("data-rows"))
        assert page.locator("#next-page").is_disabled(), "the last page has no next"
        assert rows == TOTAL - (pages - 1) * size, f"the last page has {rows} rows"
        print(f"instance list, {TOTAL} instances, {size} a page: first page {med_max(firsts)}; "
              f"next page ({len(flips)} flips to the last) {med_max(flips)}")
    browser.close()
