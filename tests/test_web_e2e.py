"""The page in headless Chromium (Debian's ``chromium`` and ``chromium-driver``, driven by Selenium): enter a
prompt, add a feature, see both continuations stream in, search the sweep browser, open a feature page, draw
a strength curve, send the feature to the playground. Screenshots go to a temporary folder; with
``SAESTEER_UPDATE_SCREENSHOTS=1`` they are also copied to ``docs/screenshots/``.

Set-up: ``apt-get install -y chromium chromium-driver`` (skipped with a reason where they are absent).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("selenium")

from _web_helpers import NEURONPEDIA_ID, SPECIAL, LiveServer, tiny_facts, web_sae, write_results_folder  # noqa: E402

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path(shutil.which("chromedriver") or "/usr/bin/chromedriver")
REPO = Path(__file__).resolve().parents[1]
PROMPT = "Happiness is"

pytestmark = pytest.mark.skipif(
    not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
    reason="headless Chromium not installed: apt-get install -y chromium chromium-driver",
)


@pytest.fixture(scope="module")
def steerer(tiny_loaded):
    from saesteer.steerer import Steerer

    return Steerer(tiny_loaded, web_sae())


@pytest.fixture(scope="module")
def facts(tiny_loaded, steerer):
    return tiny_facts(tiny_loaded, steerer.sae)


@pytest.fixture(scope="module")
def server(tmp_path_factory, steerer, facts):
    from saesteer.web.app import create_app

    root = tmp_path_factory.mktemp("e2e-results")
    folder = write_results_folder(root / "sweep-l6", facts=facts, prompt=None)
    with LiveServer(create_app(steerer, [folder], queue_size=4, request_timeout=30)) as srv:
        yield srv


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1280,900", "--force-device-scale-factor=1",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def shots(tmp_path_factory):
    folder = tmp_path_factory.mktemp("screenshots")
    yield folder
    if os.environ.get("SAESTEER_UPDATE_SCREENSHOTS"):
        dest = REPO / "docs" / "screenshots"
        dest.mkdir(parents=True, exist_ok=True)
        for png in sorted(folder.glob("*.png")):
            shutil.copyfile(png, dest / png.name)


def wait(driver, condition, timeout=20):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.05).until(lambda d: condition(d))


def text_of(driver, css):
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, css).text


def test_playground_sweeps_and_feature_page(browser, server, steerer, facts, shots):
    from selenium.webdriver.common.by import By

    d = browser
    find = d.find_element
    d.get(server.url + "/")
    wait(d, lambda d: "256 features" in text_of(d, "#model-info"))
    # --- playground: a prompt, one feature, both continuations stream in
    find(By.ID, "prompt").send_keys(PROMPT)
    find(By.ID, "add-clamp").click()
    row = find(By.CSS_SELECTOR, "#clamps .clamp-row")
    row.find_element(By.CSS_SELECTOR, "input.feature").send_keys("3")
    value = row.find_element(By.CSS_SELECTOR, "input.value")
    value.clear()
    value.send_keys("20")
    max_tokens = find(By.ID, "max-new-tokens")
    max_tokens.clear()
    max_tokens.send_keys("16")
    d.execute_script("""
        window.__steps = 0;
        const target = document.querySelector('#out-steered .cont');
        new MutationObserver(() => { window.__steps += 1; }).observe(target, {childList: true, characterData: true, subtree: true});
    """)
    find(By.ID, "generate").click()
    wait(d, lambda d: text_of(d, "#gen-status").startswith(("done", "error")))
    assert text_of(d, "#gen-status").startswith("done"), text_of(d, "#gen-status")
    base = steerer.generate(PROMPT, max_new_tokens=16)
    steered = steerer.generate(PROMPT, clamps={3: 20.0}, max_new_tokens=16)
    shown = lambda box: find(By.CSS_SELECTOR, f"#{box} .cont").get_attribute("textContent")  # noqa: E731
    assert shown("out-unsteered") == base.text and shown("out-steered") == steered.text
    assert base.text != steered.text
    assert text_of(d, "#out-steered .prompt-echo") == PROMPT
    assert d.execute_script("return window.__steps") > 2  # the text changed step by step, not once
    assert "3=20" in text_of(d, "#out-steered .clamp-summary")
    d.save_screenshot(str(shots / "playground.png"))

    # --- sweep browser: search the generated texts
    find(By.LINK_TEXT, "Sweeps").click()
    wait(d, lambda d: text_of(d, "#sweep-total") == "80 rows")
    find(By.ID, "search").send_keys("lighthouse")
    wait(d, lambda d: text_of(d, "#sweep-total") == "4 rows")
    rows = d.find_elements(By.CSS_SELECTOR, "#sweep-table tbody tr")
    assert len(rows) == 4
    assert {r.find_element(By.CSS_SELECTOR, "td a").text for r in rows} == {"7", "19"}
    marks = d.find_elements(By.CSS_SELECTOR, "#sweep-table tbody mark")
    assert marks and all(m.text.lower() == "lighthouse" for m in marks)
    find(By.ID, "per-feature").click()
    wait(d, lambda d: text_of(d, "#sweep-total") == "2 rows")
    d.save_screenshot(str(shots / "sweeps.png"))

    # --- feature page from the table: logit lens, sweep texts, curve, Neuronpedia link, to the playground
    feature_link = find(By.XPATH, "//table[@id='sweep-table']//a[text()='19']")
    feature_link.click()
    wait(d, lambda d: text_of(d, "#feature-title") == "Feature 19")
    assert "#/feature/19" in d.current_url
    chips = d.find_elements(By.CSS_SELECTOR, "#lens-top .chip")
    assert len(chips) == 12
    assert find(By.ID, "np-link").get_attribute("href") == f"https://www.neuronpedia.org/{NEURONPEDIA_ID}/19"
    texts = [td.text for td in d.find_elements(By.CSS_SELECTOR, "#feature-sweeps td.text")]
    assert len(texts) == 2 and all(SPECIAL[19] in t for t in texts)
    first = d.find_elements(By.CSS_SELECTOR, "#feature-sweeps table")[0]  # sweep-a's rows with their ranks
    assert [th.text for th in first.find_elements(By.TAG_NAME, "th")][:4] == ["value", "steer", "score", "word_rank"]
    suggested = d.execute_script("return state.featureData.suggested_value")
    find(By.ID, "to-playground").click()
    wait(d, lambda d: not find(By.ID, "view-playground").get_attribute("hidden"))
    row = find(By.CSS_SELECTOR, "#clamps .clamp-row")
    assert row.find_element(By.CSS_SELECTOR, "input.feature").get_attribute("value") == "19"
    assert float(row.find_element(By.CSS_SELECTOR, "input.value").get_attribute("value")) == suggested

    # --- the feature that fires most on the reference text, opened by number: facts, contexts, a curve
    active = int(facts.max_activation.argmax())
    find(By.LINK_TEXT, "Feature").click()
    box = find(By.ID, "feature-input")
    box.clear()
    box.send_keys(str(active))
    find(By.CSS_SELECTOR, "#feature-go button").click()
    wait(d, lambda d: text_of(d, "#feature-title") == f"Feature {active}")
    words = [c.text for c in d.find_elements(By.CSS_SELECTOR, "#firing-words .chip")]
    assert words == facts[active].firing_words[:12]
    assert 0 < len(d.find_elements(By.CSS_SELECTOR, "#contexts li")) <= 8
    find(By.ID, "curve-prompt").send_keys(PROMPT)
    find(By.ID, "curve-run").click()
    wait(d, lambda d: text_of(d, "#curve-status").startswith(("done", "error")))
    assert text_of(d, "#curve-status").startswith("done"), text_of(d, "#curve-status")
    assert len(d.find_elements(By.CSS_SELECTOR, "#curve-chart svg circle")) == 5
    assert len(d.find_elements(By.CSS_SELECTOR, "#curve-table tbody tr")) == 6
    curve_texts = [td.get_attribute("textContent") for td in d.find_elements(By.CSS_SELECTOR, "#curve-table td.text")]
    assert curve_texts[0] == steerer.generate(PROMPT, max_new_tokens=20).text
    height = d.execute_script("return document.documentElement.scrollHeight")
    d.set_window_size(1280, min(height + 140, 2400))  # the whole page in one picture
    d.save_screenshot(str(shots / "feature.png"))
    d.set_window_size(1280, 900)
    for name in ("playground", "sweeps", "feature"):  # (docs/screenshots: SAESTEER_UPDATE_SCREENSHOTS=1)
        png = shots / f"{name}.png"
        assert png.stat().st_size > 10_000 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_page_shows_validation_errors(browser, server):
    from selenium.webdriver.common.by import By

    d = browser
    d.get(server.url + "/#/playground")
    wait(d, lambda d: "256 features" in text_of(d, "#model-info"))
    d.find_element(By.ID, "add-clamp").click()
    rows = d.find_elements(By.CSS_SELECTOR, "#clamps .clamp-row")
    rows[-1].find_element(By.CSS_SELECTOR, "input.feature").send_keys("999")
    d.find_element(By.ID, "generate").click()
    wait(d, lambda d: "unknown feature 999" in text_of(d, "#gen-status"))
    assert "error" in d.find_element(By.ID, "gen-status").get_attribute("class")


def test_features_by_meaning_strength_sliders_and_what_changed(browser, server, steerer, facts, shots):
    """Issue 18's views: search by meaning, a slider in units of the feature's max activation, the first
    difference highlighted, the activation histogram, the sweep measures with their meanings, the curve's
    values on the feature's scale and the Plot menu filled before any curve."""
    from selenium.webdriver.common.by import By

    d = browser
    find = d.find_element
    d.get("about:blank")  # a fresh page (the same URL with another fragment would keep the old one)
    d.get(server.url + "/#/sweeps")
    wait(d, lambda d: text_of(d, "#sweep-total") == "80 rows")
    heads = [th.text for th in d.find_elements(By.CSS_SELECTOR, "#sweep-table thead th")]
    assert "firing words" in heads and "lens tokens" in heads
    assert heads[:4] == ["feature", "value", "steer ▼", "score"] and "word_rank" in heads  # saesteer top's order
    steer_head = find(By.XPATH, "//table[@id='sweep-table']//th[starts-with(text(), 'steer')]")
    assert "firing-word and readback ranks" in steer_head.get_attribute("title")
    score_head = find(By.XPATH, "//table[@id='sweep-table']//th[starts-with(text(), 'score')]")
    assert "fluency" in score_head.get_attribute("title")
    find(By.ID, "meaning-q").send_keys("lighthouse")
    wait(d, lambda d: not find(By.ID, "meaning-table").get_attribute("hidden"))
    rows = d.find_elements(By.CSS_SELECTOR, "#meaning-table tbody tr")
    found = [int(r.find_element(By.CSS_SELECTOR, "td a").text) for r in rows]
    assert {7, 19} <= set(found)
    assert all(m.text.lower().startswith("lighthouse") for m in d.find_elements(By.CSS_SELECTOR, "#meaning-table mark"))
    d.save_screenshot(str(shots / "find-features.png"))

    active = int(facts.max_activation.argmax())
    top = float(facts.max_activation[active])
    d.get("about:blank")
    d.get(server.url + f"/#/feature/{active}")
    wait(d, lambda d: text_of(d, "#feature-title") == f"Feature {active}")
    assert len(d.find_elements(By.CSS_SELECTOR, "#histogram svg rect")) == 24
    assert "% of" in text_of(d, "#hist-note")
    values = [float(v) for v in find(By.ID, "curve-values").get_attribute("value").split(",")]
    assert values[0] == 0 and values[1] == pytest.approx(top, rel=1e-2) and values[-1] == pytest.approx(8 * top, rel=1e-2)
    options = [o.get_attribute("value") for o in d.find_elements(By.CSS_SELECTOR, "#curve-metric option")]
    assert "kl" in options and "score" in options

    d.get("about:blank")
    d.get(server.url + "/#/playground")
    wait(d, lambda d: "256 features" in text_of(d, "#model-info"))
    prompt = find(By.ID, "prompt")
    prompt.clear()
    prompt.send_keys(PROMPT)
    d.execute_script("document.querySelector('#clamps').replaceChildren(); addClamp(arguments[0], 1);", active)
    row = find(By.CSS_SELECTOR, "#clamps .clamp-row")
    slider = row.find_element(By.CSS_SELECTOR, "input.strength")
    wait(d, lambda d: slider.is_displayed())
    d.execute_script("arguments[0].value = 6; arguments[0].dispatchEvent(new Event('input'));", slider)
    value = float(row.find_element(By.CSS_SELECTOR, "input.value").get_attribute("value"))
    assert value == pytest.approx(6 * top, rel=1e-3) and "6 × max" in row.find_element(By.CSS_SELECTOR, ".rel").text
    find(By.ID, "generate").click()
    wait(d, lambda d: text_of(d, "#gen-status").startswith(("done", "error")))
    assert text_of(d, "#gen-status").startswith("done"), text_of(d, "#gen-status")
    base = steerer.generate(PROMPT, max_new_tokens=24)
    steered = steerer.generate(PROMPT, clamps={active: value}, max_new_tokens=24)
    shown = lambda box: find(By.CSS_SELECTOR, f"#{box} .cont").get_attribute("textContent")  # noqa: E731
    wait(d, lambda d: d.find_elements(By.CSS_SELECTOR, "#out-steered .diverge") or base.text == steered.text)
    assert shown("out-unsteered") == base.text and shown("out-steered") == steered.text
    if base.text != steered.text:
        i = next(k for k, (a, b) in enumerate(zip(base.text + "\0", steered.text + "\1")) if a != b)
        assert find(By.CSS_SELECTOR, "#out-steered .diverge").get_attribute("textContent") == steered.text[i:]
    words = {w.lower() for w in facts[active].firing_words}
    for m in d.find_elements(By.CSS_SELECTOR, "#view-playground mark.fw"):
        assert m.get_attribute("textContent").lower() in words
    d.save_screenshot(str(shots / "playground-strength.png"))


def test_several_saes_in_one_page(browser, steerer, shots):
    """Issue 18: two SAEs served; the playground clamps features of both, each SAE has its feature pages."""
    import httpx
    from conftest import make_sae
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    from saesteer.steerer import Steerer
    from saesteer.web.app import create_app

    other = Steerer(steerer.lm, make_sae(d_sae=128, hook_name="blocks.2.hook_resid_post", seed=2))
    with LiveServer(create_app([steerer, other], [], queue_size=4, request_timeout=60)) as srv:
        d = browser
        find = d.find_element
        d.get("about:blank")
        d.get(srv.url + "/#/playground")
        wait(d, lambda d: "2 SAEs" in text_of(d, "#model-info"))
        find(By.ID, "prompt").send_keys(PROMPT)
        d.execute_script("addClamp(3, 20, 0); addClamp(5, 30, 1);")
        rows = d.find_elements(By.CSS_SELECTOR, "#clamps .clamp-row")
        assert [Select(r.find_element(By.CSS_SELECTOR, "select.sae")).first_selected_option.text for r in rows] == \
            ["SAE 0: " + steerer.hook_name, "SAE 1: blocks.2.hook_resid_post"]
        find(By.ID, "generate").click()
        wait(d, lambda d: text_of(d, "#gen-status").startswith(("done", "error")))
        assert text_of(d, "#gen-status").startswith("done"), text_of(d, "#gen-status")
        body = {"prompt": PROMPT, "max_new_tokens": 24, "clamps": [{"feature": 3, "value": 20, "sae": 0},
                                                                   {"feature": 5, "value": 30, "sae": 1}]}
        want = httpx.post(srv.url + "/api/generate", json=body, timeout=60).json()
        shown = find(By.CSS_SELECTOR, "#out-steered .cont").get_attribute("textContent")
        assert shown == want["steered"]["text"] and "SAE 1:5=30" in text_of(d, "#out-steered .clamp-summary")
        d.save_screenshot(str(shots / "several-saes.png"))
        rows[1].find_element(By.CSS_SELECTOR, "a").click()
        wait(d, lambda d: text_of(d, "#feature-title") == "Feature 5 · SAE 1")
        assert "#/feature/5/1" in d.current_url
        assert Select(find(By.ID, "feature-sae")).first_selected_option.get_attribute("value") == "1"
