#!/usr/bin/env python3
"""Drives the portal's access-request flow in a real headless Chromium.

Run by integration/tests/portal_browser.rs, which starts the shop as a local mesh, makes a
denied call, and passes the denial's `requestAccess` link here. This script:

1. opens the link and reads the form as a person sees it (caller and callee with their
   teams, the ticked endpoints, the ephemeral choice, the sentence above the button),
   saving `form.png`;
2. submits it with the "Request access" button, saving `result.png`;
3. opens `/services/<callee>` (`service.png`) and `/access` (`access.png`).

It prints one JSON object per line: `{"event": "submitting"}` just before it clicks the button
(the Rust test times the grant from there), `{"event": "submitted"}` once the answer has
loaded, then `{"event": "summary", ...}` with everything it saw. It asserts nothing itself: the Rust test
checks the summary, so a failure there shows the whole picture.

Selenium Manager never runs: the browser and the driver are the Debian packages'.
"""

import argparse
import base64
import json
import os
import sys
import time
from urllib.parse import urljoin, urlparse

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def emit(obj):
    print(json.dumps(obj), flush=True)


def browser(profile):
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1280,1000",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-extensions",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--metrics-recording-only",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(arg)
    service = Service(executable_path=CHROMEDRIVER)
    driver = webdriver.Chrome(service=service, options=options)
    # The page's viewport is 1280×1000 (the window's size would include the browser's frame).
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": 1280, "height": 1000, "deviceScaleFactor": 1, "mobile": False},
    )
    driver.set_page_load_timeout(30)
    return driver


def text_of(driver, css):
    found = driver.find_elements(By.CSS_SELECTOR, css)
    return found[0].text.strip() if found else None


def shot(driver, directory, name, files):
    """The whole page, not only the part in the window (the form's button is below it)."""
    path = os.path.join(directory, name)
    png = driver.execute_cdp_cmd(
        "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True}
    )
    with open(path, "wb") as f:
        f.write(base64.b64decode(png["data"]))
    files[name] = path


def read_form(driver):
    """What the form shows, as a person would read it."""
    labels = {}
    for label in driver.find_elements(By.CSS_SELECTOR, "form label"):
        inputs = label.find_elements(By.CSS_SELECTOR, "input[type=text]")
        if inputs:
            name = inputs[0].get_attribute("name")
            team = label.find_elements(By.CSS_SELECTOR, "span.muted")
            labels[name] = {
                "value": inputs[0].get_attribute("value"),
                "team": team[0].text.strip() if team else None,
            }
    endpoints = {}
    for box in driver.find_elements(By.CSS_SELECTOR, "input[type=checkbox][name=rpc]"):
        endpoints[box.get_attribute("value")] = box.is_selected()
    ephemeral = [
        r.get_attribute("value")
        for r in driver.find_elements(By.CSS_SELECTOR, "input[type=radio][name=ephemeral]")
        if r.is_selected()
    ]
    return {
        "title": driver.title,
        "caller": labels.get("from", {}).get("value"),
        "caller_team": labels.get("from", {}).get("team"),
        "callee": labels.get("to", {}).get("value"),
        "callee_team": labels.get("to", {}).get("team"),
        "environment": labels.get("env", {}).get("value"),
        "endpoints": endpoints,
        "ephemeral": ephemeral[0] if len(ephemeral) == 1 else ephemeral,
        "decision": text_of(driver, "p.decision"),
        "errors": text_of(driver, "div.error"),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="the denial's requestAccess link")
    parser.add_argument("--screenshots", required=True, help="directory for the PNGs")
    parser.add_argument("--callee", required=True, help="the service page to open")
    parser.add_argument("--reason", default="", help="what to type into the reason box")
    parser.add_argument("--profile", required=True, help="a scratch Chromium profile dir")
    args = parser.parse_args()

    os.makedirs(args.screenshots, exist_ok=True)
    base = "{0.scheme}://{0.netloc}".format(urlparse(args.url))
    summary = {"event": "summary", "screenshots": {}}
    files = summary["screenshots"]
    driver = browser(args.profile)
    try:
        wait = WebDriverWait(driver, 15)
        # 2. Follow the link from the denial.
        driver.get(args.url)
        wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "form[action='/access']")))
        # 3. The form as shown.
        summary["form"] = read_form(driver)
        if args.reason:
            driver.find_element(By.CSS_SELECTOR, "textarea[name=reason]").send_keys(args.reason)
        shot(driver, args.screenshots, "form.png", files)
        # 4. Submit with the visible "Request access" button (an off-screen copy of it comes
        # first in the form, so that Enter in a text field submits rather than "Select all").
        buttons = [
            b
            for b in driver.find_elements(
                By.CSS_SELECTOR, "form button[type=submit]:not(.default-submit)"
            )
            if b.text.strip() == "Request access"
        ]
        if len(buttons) != 1:
            raise RuntimeError(f"expected one 'Request access' button, found {len(buttons)}")
        form_url = driver.current_url
        emit({"event": "submitting", "at": time.time()})
        buttons[0].click()
        wait.until(lambda d: d.current_url != form_url and "/access/new" not in d.current_url)
        wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "main h1")))
        emit({"event": "submitted", "at": time.time(), "url": driver.current_url})
        summary["result"] = {
            "url": driver.current_url,
            "title": driver.title,
            "heading": text_of(driver, "main h1"),
            "status": text_of(driver, "main h1 .pill"),
            "banner": text_of(driver, "main p.ok") or text_of(driver, "main .error"),
        }
        shot(driver, args.screenshots, "result.png", files)
        # The service page of the callee.
        driver.get(urljoin(base, f"/services/{args.callee}"))
        wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "main h1")))
        summary["service"] = {
            "url": driver.current_url,
            "title": driver.title,
            "heading": text_of(driver, "main h1"),
            "text": driver.find_element(By.TAG_NAME, "main").text,
        }
        shot(driver, args.screenshots, "service.png", files)
        # The list of requests and the audit log.
        driver.get(urljoin(base, "/access"))
        wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "main h1")))
        audit = driver.find_elements(By.CSS_SELECTOR, "table.audit tr")
        summary["access"] = {
            "url": driver.current_url,
            "audit": [r.text for r in audit[1:]],
        }
        shot(driver, args.screenshots, "access.png", files)
    except Exception as e:  # the summary says what happened so far
        summary["error"] = f"{type(e).__name__}: {e}"
        try:
            shot(driver, args.screenshots, "failure.png", files)
            summary["failure_url"] = driver.current_url
        except Exception:
            pass
    finally:
        driver.quit()
    emit(summary)
    return 1 if "error" in summary else 0


if __name__ == "__main__":
    sys.exit(main())
