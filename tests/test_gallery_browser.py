"""The HTML gallery opened from disk in headless Chromium: every image loads, no link is broken.

Chromium is driven through Selenium and the Debian ``chromium-driver``
package (``.ci/install_browser.sh`` installs both): WebDriver waits for
pages and runs JavaScript in them, so the test reads ``naturalWidth`` as the
browser sees it instead of parsing HTML. The tests skip only when Chromium
itself is not installed.
"""

import contextlib
import os
import shutil
import urllib.parse

import numpy as np
import pytest

from tf_cnnvis.report import build_gallery
from tf_cnnvis.visualize import activation_visualization, deconv_visualization

from conftest import small_keras_model

BROKEN_IMAGES = """
return Array.from(document.images)
    .filter(img => !(img.complete && img.naturalWidth > 0))
    .map(img => img.getAttribute('src'));
"""
LINKS = "return Array.from(document.querySelectorAll('a[href]')).map(a => a.href);"


def chromium_paths():
    """(browser, driver) executables, or a skip when Chromium is not installed."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if browser is None or driver is None:
        pytest.skip("Chromium is not installed (run .ci/install_browser.sh as root: Debian "
                    "packages chromium and chromium-driver)")
    return browser, driver


@contextlib.contextmanager
def headless_chromium(width=1280, height=1000):
    """A headless Chromium WebDriver, always quit at the end."""
    browser, driver_path = chromium_paths()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     f"--window-size={width},{height}", "--allow-file-access-from-files",
                     "--disable-extensions", "--no-first-run"):
        options.add_argument(argument)
    # An explicit driver path: Selenium then never tries to download one.
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def gallery(tmp_path_factory):
    outdir = tmp_path_factory.mktemp("gallery") / "Output"
    model = small_keras_model()
    images = np.random.default_rng(0).uniform(0, 1, (2, 20, 20, 3)).astype(np.float32)
    activation_visualization(model, images, layers=["conv1", "pool1", "conv3"], path_logdir=None,
                             path_outdir=str(outdir), save_channels=True)
    deconv_visualization(model, images, layers=["conv2"], method=["deconvnet", "guided"],
                         path_logdir=None, path_outdir=str(outdir), save_channels=True)
    deconv_visualization(model, images[:1], layers=["conv3"], target="unit", path_logdir=None,
                         path_outdir=str(outdir))
    return outdir, build_gallery(str(outdir))


def crawl(driver, index_path):
    """Visit every page reachable from the index; return (pages, broken images, bad links, images).

    A link is bad when its file is missing or its #anchor is not an id on
    the page it points to.
    """
    start = "file://" + urllib.parse.quote(os.path.abspath(index_path))
    queue, ids, broken, links, images = [start], {}, [], [], set()
    while queue:
        page = queue.pop()
        if page in ids:
            continue
        driver.get(page)
        ids[page] = set(driver.execute_script(
            "return Array.from(document.querySelectorAll('[id]')).map(e => e.id);"))
        broken.extend((page, source) for source in driver.execute_script(BROKEN_IMAGES))
        images.update(driver.execute_script("return Array.from(document.images).map(img => img.src);"))
        for link in driver.execute_script(LINKS):
            links.append((page, link))
            target = link.split("#")[0]
            if target.endswith(".html") and target not in ids:
                queue.append(target)
    bad_links = []
    for page, link in links:
        target, _, fragment = link.partition("#")
        path = urllib.parse.unquote(urllib.parse.urlsplit(target).path)
        if not os.path.isfile(path) or (fragment and urllib.parse.unquote(fragment)
                                        not in ids.get(target, set())):
            bad_links.append((page, link))
    return set(ids), broken, bad_links, images


def test_every_image_loads_and_every_link_works(gallery):
    outdir, index = gallery
    with headless_chromium() as driver:
        pages, broken, bad_links, images = crawl(driver, index)
        assert broken == [] and bad_links == []
        assert len(pages) == 1 + 4  # the index and one page per layer
        shown = {urllib.parse.unquote(urllib.parse.urlsplit(url).path) for url in images}
        on_disk = {str(path) for path in outdir.rglob("*.png")}
        assert on_disk <= shown  # every grid and every channel picture is on some page
        # a PNG opened from a link is an image the browser decodes, at its stored size
        driver.get("file://" + str(outdir / "conv2" / "deconvolution" / "guided" / "image_001" /
                                   "grid_image.png"))
        width = driver.execute_script("return document.images[0].naturalWidth;")
        assert width == 3 * 20 + 2  # 8 reconstructions of 20 px in a 3x3 grid


CELLS = """
return Array.from(document.querySelectorAll('a.cell')).map(a => [a.dataset.label, a.title, a.textContent,
                                                                a.getAttribute('href')]);
"""


def test_cells_are_labelled_with_their_channel_and_open_at_full_size(gallery):
    outdir, _ = gallery
    with headless_chromium() as driver:
        driver.get("file://" + str(outdir / "conv2" / "index.html"))
        cells = driver.execute_script(CELLS)
        inputs = driver.execute_script("return Array.from(document.querySelectorAll('#inputs img')).length;")
        assert inputs == 2  # the input images come first
        per_grid = 8  # conv2's 8 channels, in every grid of the page
        assert len(cells) == 4 * per_grid  # 2 methods x 2 images
        for index, (label, title, text, href) in enumerate(cells):
            assert label == text == str(index % per_grid) and title == f"channel {label}"
            assert href.endswith(f"channels/channel_{int(label):04d}.png")  # the saved channel itself
        driver.get("file://" + str(outdir / "conv2" / href))
        assert driver.execute_script("return document.images[0].naturalWidth;") == 20

        # Without per-channel files (the unit grid), a click shows the cell enlarged from the grid.
        driver.get("file://" + str(outdir / "conv3" / "index.html"))
        cells = driver.execute_script(CELLS)
        zoomed = [index for index, cell in enumerate(cells) if cell[3].startswith("#zoom-")]
        assert len(zoomed) == 10  # conv3's 10 units
        index = zoomed[3]
        label, _, _, href = cells[index]
        assert label == "3"
        zoom = driver.find_element("id", href[1:])
        assert not zoom.is_displayed()
        driver.find_elements("css selector", "a.cell")[index].click()
        assert zoom.is_displayed() and "channel 3" in zoom.text
        width = driver.execute_script("return arguments[0].querySelector('.pixels').offsetWidth;", zoom)
        assert width >= 256


def test_a_missing_picture_is_caught(gallery, tmp_path):
    """The check itself can fail: remove one PNG and the browser reports it."""
    outdir, _ = gallery
    copy = tmp_path / "copy"
    shutil.copytree(outdir, copy)
    victim = copy / "pool1" / "activations" / "image_000" / "channels" / "channel_0003.png"
    victim.unlink()
    with headless_chromium() as driver:
        _, broken, bad_links, _ = crawl(driver, copy / "index.html")
    assert [source for _, source in broken] == ["activations/image_000/channels/channel_0003.png"]
    # the channel's picture and its cell in the grid both link to it
    assert [urllib.parse.unquote(link).endswith("channel_0003.png") for _, link in bad_links] == [True, True]
