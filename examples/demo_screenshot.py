"""Serve the demo on the embedded Shapes pipeline, drive it in headless Chromium, save a screenshot.

python examples/demo_screenshot.py --out docs/images/demo.png   # needs latentalign[demo], selenium, chromium
"""

from __future__ import annotations

import argparse
import socket
import time

import torch
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

from latentalign import load_pipeline
from latentalign.demo import build_demo


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="shapes")
    ap.add_argument("--prompt", default="a red circle left of a blue square")
    ap.add_argument("--methods", default="best-of-n,attention-refinement", help="comma-separated, beside plain")
    ap.add_argument("--out", default="docs/images/demo.png")
    args = ap.parse_args()
    torch.set_num_threads(1)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo = build_demo(load_pipeline(args.model))
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    options = Options()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1900"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    try:
        driver.get(f"http://127.0.0.1:{port}")
        time.sleep(2)
        box = driver.find_element(By.CSS_SELECTOR, "#prompt textarea, #prompt input")
        box.clear()
        box.send_keys(args.prompt)
        wanted = set(args.methods.split(","))
        for b in driver.find_elements(By.CSS_SELECTOR, "#methods input[type=checkbox]"):
            if (b.find_element(By.XPATH, "..").text.strip() in wanted) != b.is_selected():
                b.click()
        driver.find_element(By.CSS_SELECTOR, "#run").click()
        expected = 2 * (1 + len(wanted))
        for _ in range(600):
            if len(driver.find_elements(By.CSS_SELECTOR, "#table table tbody tr")) == expected:
                break
            time.sleep(0.5)
        time.sleep(1)
        driver.save_screenshot(args.out)
        print(f"wrote {args.out}")
    finally:
        driver.quit()
        demo.close()


if __name__ == "__main__":
    main()
