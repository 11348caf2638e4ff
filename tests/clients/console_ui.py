"""The web console in Debian's Chromium, driven by Playwright.

A user signs in with a password (after failed tries that slow sign-in
down), launches the tiny guest from the wizard, watches it reach running,
sees its boot marker in the live console log, types into the serial
console and sees the shell answer, sees a CPU chart with datapoints, stops
and terminates it; uploads a file with the progress bar and downloads it
back identical (and through a presigned link). The administrator sees the
nodes, sets the user's quota, and the user's next launch is refused in the
page. A second account sees none of the first's resources; a forged
request without the CSRF token is refused. Every page is saved as a
screenshot in GUMTREE_ARTEFACTS.

Environment: GUMTREE_CONSOLE_URL, GUMTREE_CHROMIUM, GUMTREE_AMI,
GUMTREE_CA_FILE, GUMTREE_ARTEFACTS, and the passwords GUMTREE_USER_PASSWORD
(account webuser, user admin), GUMTREE_ADMIN_PASSWORD (the system account
eucalyptus) and GUMTREE_OTHER_PASSWORD (account stranger).
"""

import hashlib
import json
import os
import re
import ssl
import sys
import time
import urllib.error
import urllib.request

from playwright.sync_api import expect, sync_playwright

URL = os.environ["GUMTREE_CONSOLE_URL"]
AMI = os.environ["GUMTREE_AMI"]
ART = os.environ["GUMTREE_ARTEFACTS"]
CA = os.environ["GUMTREE_CA_FILE"]
os.makedirs(ART, exist_ok=True)
LONG = 180_000


def say(*a):
    print(*a, flush=True)


def shot(page, name):
    page.wait_for_timeout(300)
    page.screenshot(path=os.path.join(ART, name + ".png"), full_page=True)
    say("screenshot", name)


def sign_in(page, account, user, password, expect_ok=True):
    page.goto(URL)
    page.locator("#account").fill(account)
    page.locator("#user").fill(user)
    page.locator("#password").fill(password)
    page.locator("#signin-button").click()
    if expect_ok:
        expect(page.locator("#whoami")).to_contain_text(f"{user} @ {account}", timeout=30_000)


def goto(page, hash_):
    page.goto(URL + hash_)


def launch_wizard(page):
    """The launch wizard opened on the instances page, the tiny guest's
    image and m1.small chosen."""
    goto(page, "#/instances")
    page.locator("#launch").click()
    dialog = page.locator("form.dialog")
    dialog.locator("select[name=image]").select_option(AMI)
    dialog.locator("select[name=type]").select_option("m1.small")
    return dialog


def check(cond, what):
    if not cond:
        raise AssertionError(what)
    say("ok:", what)


PAGES = []


def run(pw):
    browser = pw.chromium.launch(
        executable_path=os.environ["GUMTREE_CHROMIUM"],
        headless=True,
        args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
              "--disable-background-networking", "--disable-component-update", "--disable-sync"],
    )
    user_ctx = browser.new_context(ignore_https_errors=True, accept_downloads=True,
                                   viewport={"width": 1360, "height": 900})
    page = user_ctx.new_page()
    PAGES.append(page)
    page.on("dialog", lambda d: d.accept())
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))

    # --- sign-in: the page loads, wrong passwords slow it down ---
    page.goto(URL)
    expect(page.locator("#signin")).to_be_visible(timeout=30_000)
    shot(page, "01-sign-in")
    for _ in range(3):
        sign_in(page, "webuser", "admin", "not the password", expect_ok=False)
        expect(page.locator(".error")).to_contain_text("not right", timeout=10_000)
    sign_in(page, "webuser", "admin", os.environ["GUMTREE_USER_PASSWORD"], expect_ok=False)
    expect(page.locator(".error")).to_contain_text("too many failed sign-ins", timeout=10_000)
    check(True, "a fourth try, even with the right password, waits")
    shot(page, "02-sign-in-throttled")
    time.sleep(2.5)
    sign_in(page, "webuser", "admin", os.environ["GUMTREE_USER_PASSWORD"])
    cookies = {c["name"]: c for c in user_ctx.cookies()}
    c = cookies["gumtree_session"]
    check(c["httpOnly"] and c["secure"] and c["sameSite"] == "Strict",
          "the session cookie is HttpOnly, Secure and SameSite=Strict")
    check(page.evaluate("document.cookie").find("gumtree_session") < 0, "scripts cannot read the session cookie")
    expect(page.locator(".cards")).to_be_visible()
    expect(page.locator("#quota")).to_contain_text("Instances (not terminated)")
    shot(page, "03-dashboard")

    # --- a forged request without the CSRF token is refused ---
    forged = page.evaluate("""async () => {
        const r = await fetch('/api/ec2', {method: 'POST', headers: {'Content-Type': 'application/x-www-form-urlencoded'},
                                           body: 'Action=CreateKeyPair&KeyName=forged'});
        return [r.status, await r.text()];
    }""")
    check(forged[0] == 403 and "InvalidCsrfToken" in forged[1], f"a request without the CSRF token is refused: {forged}")
    other_site = page.evaluate("""async () => {
        const r = await fetch('/api/ec2', {method: 'POST', headers: {'Content-Type': 'application/x-www-form-urlencoded',
                                           'X-CSRF-Token': 'guessed'}, body: 'Action=CreateKeyPair&KeyName=forged'});
        return [r.status, await r.text()];
    }""")
    check(other_site[0] == 403, f"a guessed CSRF token is refused: {other_site}")
    goto(page, "#/keypairs")
    expect(page.locator("h1")).to_have_text("Key pairs")
    check("forged" not in page.locator("main").inner_text(), "the forged key pair was not made")

    # --- key pair: made in the page, its private key downloaded once ---
    page.locator("#create-key-pair").click()
    page.locator("form.dialog input[name=name]").fill("web-key")
    page.locator("form.dialog button[type=submit]").click()
    with page.expect_download() as dl:
        page.locator("#download-private-key").click()
    pem = open(dl.value.path()).read()
    check("PRIVATE KEY" in pem, "the new key pair's private key downloads")
    page.locator("form.dialog button[type=submit]").click()
    expect(page.locator("#keypairs")).to_contain_text("web-key")
    shot(page, "04-key-pairs")

    # --- launch the tiny guest from the wizard ---
    dialog = launch_wizard(page)
    dialog.locator("select[name=key]").select_option("web-key")
    dialog.locator("textarea[name=userData]").fill("console test user-data")
    dialog.locator("select[name=monitoring]").select_option("true")
    shot(page, "05-launch-wizard")
    dialog.locator("button[type=submit]").click()
    expect(page.locator("#instances tbody tr")).to_have_count(1, timeout=30_000)
    iid = page.locator("#instances tbody tr").first.get_attribute("data-id")
    check(iid.startswith("i-"), f"the wizard launched {iid}")
    shot(page, "06-instances")
    page.locator(f"#instances a[href='#/instances/{iid}']").click()
    expect(page.locator("#facts .state")).to_have_text("running", timeout=LONG)
    check(True, f"{iid} reached running, as the page shows")
    # The console log follows live until the boot marker shows.
    expect(page.locator("#console-log")).to_contain_text("GUMTREE-BOOT-OK", timeout=LONG)
    expect(page.locator("#console-log")).to_contain_text("console test user-data", timeout=LONG)
    check(True, "the live console log shows the boot marker and the user-data")
    shot(page, "07-instance-console-log")

    # --- the serial console, interactive ---
    page.locator("#tab-serial").click()
    expect(page.locator("#serial-status")).to_have_text("connected", timeout=30_000)
    term_text = """() => { const b = window.gumtreeTerminal.buffer.active; let out = [];
        for (let i = 0; i < b.length; i++) out.push(b.getLine(i).translateToString(true)); return out.join('\\n'); }"""
    page.locator("#serial").click()
    deadline = time.time() + 60
    seen = ""
    while time.time() < deadline:
        page.keyboard.type("echo GUMTREE-ECHO-$((6*7))\n", delay=20)
        try:
            page.wait_for_function(f"({term_text})().includes('GUMTREE-ECHO-42')", timeout=8_000)
            seen = page.evaluate(term_text)
            break
        except Exception:
            seen = page.evaluate(term_text)
    check("GUMTREE-ECHO-42" in seen, "typed into the serial console, the guest's shell answered (GUMTREE-ECHO-42)")
    shot(page, "08-serial-console")

    # --- CPU chart with datapoints ---
    page.locator("#tab-monitoring").click()
    chart = page.locator(".chart[data-title='CPU utilization']")
    deadline = time.time() + 120
    points = 0
    while time.time() < deadline:
        try:
            page.wait_for_function("() => { const c = document.querySelector(\".chart[data-title='CPU utilization']\"); return c && c.dataset.points !== undefined; }", timeout=20_000)
        except Exception:
            pass
        points = int(chart.get_attribute("data-points") or 0)
        if points > 0:
            break
        time.sleep(5)
        page.locator("#refresh-charts").click()
    check(points > 0, f"the CPU chart shows {points} datapoint(s)")
    expect(chart.locator("canvas")).to_have_count(1)
    shot(page, "09-instance-monitoring")

    # --- stop, then terminate ---
    page.locator("#stop").click()
    expect(page.locator("#facts .state")).to_have_text("stopped", timeout=LONG)
    check(True, "stopped from the page")
    page.locator("#terminate").click()
    expect(page.locator("#facts .state")).to_have_text(re.compile("shutting-down|terminated"), timeout=LONG)
    expect(page.locator("#facts .state")).to_have_text("terminated", timeout=LONG)
    check(True, "terminated from the page")
    shot(page, "10-instance-terminated")

    # --- a bucket: upload with the progress bar, download identical ---
    goto(page, "#/buckets")
    page.locator("#create-bucket").click()
    page.locator("form.dialog input[name=name]").fill("web-bucket")
    page.locator("form.dialog button[type=submit]").click()
    page.locator("#buckets a", has_text="web-bucket").click()
    data = os.urandom(3 * 1024 * 1024 + 17)
    path = os.path.join(ART, "upload.bin")
    with open(path, "wb") as f:
        f.write(data)
    page.locator("#upload-file").set_input_files(path)
    page.locator("#upload").click()
    expect(page.locator("#upload-progress")).to_have_attribute("data-percent", "100", timeout=60_000)
    expect(page.locator("#upload-label")).to_contain_text("Uploaded upload.bin", timeout=60_000)
    shot(page, "11-upload-progress")
    expect(page.locator("#objects")).to_contain_text("upload.bin", timeout=30_000)
    shot(page, "12-bucket")
    with page.expect_download() as dl:
        page.locator("#objects a", has_text="Download").click()
    got = open(dl.value.path(), "rb").read()
    check(hashlib.sha256(got).digest() == hashlib.sha256(data).digest() and len(got) == len(data),
          f"the download is the upload, byte for byte ({len(got)} bytes)")
    page.locator("#objects button", has_text="Link").click()
    link = page.locator("#presigned-url").input_value()
    ctx = ssl.create_default_context(cafile=CA)
    fetched = urllib.request.urlopen(link, context=ctx, timeout=30).read()
    check(fetched == data, "the presigned link fetches the object without the console")

    # --- a security group and a rule from the editor, an elastic IP, a volume ---
    goto(page, "#/groups")
    page.locator("#create-group").click()
    page.locator("form.dialog input[name=name]").fill("web-group")
    page.locator("form.dialog input[name=description]").fill("made in the console")
    page.locator("form.dialog button[type=submit]").click()
    group_row = page.locator("#groups tr", has_text="web-group")
    group_row.locator("button", has_text="Add rule").click()
    d = page.locator("form.dialog")
    d.locator("input[name=from]").fill("8080")
    d.locator("input[name=to]").fill("8081")
    d.locator("input[name=cidr]").fill("10.1.0.0/16")
    d.locator("button[type=submit]").click()
    expect(group_row).to_contain_text("tcp 8080\u20138081 from 10.1.0.0/16", timeout=30_000)
    shot(page, "12b-security-groups")
    group_row.locator("button[title='Remove this rule']").click()
    expect(group_row).not_to_contain_text("8080", timeout=30_000)
    check(True, "a security group rule added in the editor and removed again")
    goto(page, "#/addresses")
    page.locator("#allocate").click()
    expect(page.locator("#addresses tbody tr")).to_have_count(1, timeout=30_000)
    shot(page, "12c-elastic-ips")
    page.locator("#addresses button", has_text="Release").click()
    expect(page.locator("main")).to_contain_text("No elastic IPs", timeout=30_000)
    check(True, "an elastic IP allocated and released")
    goto(page, "#/volumes")
    page.locator("#create-volume").click()
    page.locator("form.dialog input[name=size]").fill("1")
    page.locator("form.dialog button[type=submit]").click()
    expect(page.locator("#volumes tbody tr .state")).to_have_text("available", timeout=90_000)
    shot(page, "12d-volumes")
    page.locator("#volumes button", has_text="Delete").click()
    expect(page.locator("#volumes tbody tr .state")).to_have_count(0, timeout=90_000)
    check(True, "a volume created, available, and deleted")

    # --- the administrator: nodes, resource monitor, a quota ---
    admin_ctx = browser.new_context(ignore_https_errors=True, viewport={"width": 1360, "height": 900})
    admin = admin_ctx.new_page()
    PAGES.append(admin)
    admin.on("dialog", lambda d: d.accept())
    sign_in(admin, "eucalyptus", "admin", os.environ["GUMTREE_ADMIN_PASSWORD"])
    goto(admin, "#/admin-nodes")
    expect(admin.locator("#nodes")).to_contain_text("nc-1", timeout=30_000)
    expect(admin.locator("#nodes tr[data-id='nc-1'] .state")).to_have_text("ENABLED")
    expect(admin.locator("#nodes .bar")).to_have_count(3)
    check(True, "the administrator sees node nc-1 ENABLED with its capacity")
    shot(admin, "13-admin-nodes")
    goto(admin, "#/admin-monitor")
    expect(admin.locator("#node-metrics")).to_contain_text("nc-1", timeout=30_000)
    admin.wait_for_function("() => { const c = document.querySelector(\".chart[data-title='CPU of every node']\"); return c && Number(c.dataset.points) > 0; }", timeout=60_000)
    check(True, "the resource monitor charts the node's CPU")
    shot(admin, "14-admin-monitor")
    goto(admin, "#/admin-instances")
    expect(admin.locator("#all-instances")).to_contain_text(iid, timeout=30_000)
    shot(admin, "15-admin-instances")
    goto(admin, "#/admin-events")
    expect(admin.locator("h1")).to_have_text("Events")
    shot(admin, "16-admin-events")
    goto(admin, "#/admin-accounts")
    admin.locator("button[data-account='webuser'][data-action='quota']").click()
    admin.locator("form.dialog input[name=instances]").fill("0")
    admin.locator("form.dialog button[type=submit]").click()
    expect(admin.locator("#accounts tr[data-id='webuser'] .quota")).to_contain_text("instances 0", timeout=30_000)
    check(True, "the administrator set webuser's quota to 0 instances")
    shot(admin, "17-admin-accounts")

    # The user's next launch is refused, in the page.
    dialog = launch_wizard(page)
    dialog.locator("button[type=submit]").click()
    expect(dialog.locator(".error")).to_contain_text("InstanceLimitExceeded", timeout=30_000)
    check(True, "a launch above the quota is refused in the page: " + dialog.locator(".error").inner_text())
    shot(page, "18-launch-refused")
    dialog.locator("button", has_text="Cancel").click()

    # A user's page cannot reach the administrators' calls.
    denied = page.evaluate("async () => (await fetch('/api/admin/accounts')).status")
    check(denied == 403, "a user's session is refused the administrators' calls")

    # --- a second account sees none of it ---
    other_ctx = browser.new_context(ignore_https_errors=True, viewport={"width": 1360, "height": 900})
    other = other_ctx.new_page()
    PAGES.append(other)
    sign_in(other, "stranger", "admin", os.environ["GUMTREE_OTHER_PASSWORD"])
    goto(other, "#/instances")
    expect(other.locator("#instance-list")).to_contain_text("No instances match", timeout=30_000)
    goto(other, f"#/instances/{iid}")
    expect(other.locator(".error")).to_contain_text("InvalidInstanceID.NotFound", timeout=30_000)
    goto(other, "#/buckets")
    expect(other.locator("h1")).to_have_text("Buckets")
    other.wait_for_timeout(500)
    check("web-bucket" not in other.locator("main").inner_text(), "stranger's bucket list lacks webuser's bucket")
    status = other.evaluate("async () => (await fetch('/api/s3/web-bucket/upload.bin')).status")
    check(status == 403, f"stranger cannot read webuser's object ({status})")
    goto(other, "#/keypairs")
    expect(other.locator("main")).to_contain_text("No key pairs", timeout=30_000)
    check(True, "stranger sees none of webuser's instances, buckets or key pairs")
    shot(other, "19-other-account")
    ws_refused = other.evaluate(f"""() => new Promise(res => {{
        const ws = new WebSocket('wss://' + location.host + '/api/serial/{iid}?csrf=nope');
        ws.onopen = () => res('opened'); ws.onerror = () => res('refused'); }})""")
    check(ws_refused == "refused", "another account's serial console does not open")

    # --- the other pages render ---
    for name, h1 in [("volumes", "Volumes and snapshots"), ("groups", "Security groups"), ("addresses", "Elastic IPs"),
                     ("images", "Images"), ("keys", "Access keys of admin")]:
        goto(page, "#/" + name)
        expect(page.locator("h1")).to_have_text(h1, timeout=30_000)
        shot(page, "20-" + name)
    goto(page, "#/images")
    expect(page.locator("#images")).to_contain_text(AMI, timeout=30_000)

    # --- sign out ends the session ---
    page.locator("#signout").click()
    expect(page.locator("#signin")).to_be_visible(timeout=10_000)
    again = page.evaluate("async () => (await fetch('/api/session')).status")
    check(again == 401, "after signing out the session is gone")
    check(not errors, f"no script errors in the pages: {errors}")
    browser.close()


with sync_playwright() as playwright:
    try:
        run(playwright)
    except Exception:
        for i, p in enumerate(PAGES):
            try:
                p.screenshot(path=os.path.join(ART, f"zz-failure-{i}.png"), full_page=True)
                print(f"failure page {i}: {p.url}\n" + p.locator("body").inner_text()[:3000], flush=True)
            except Exception:
                pass
        raise

say("console ui: all checks passed")
