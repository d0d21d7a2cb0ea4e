"""TensorBoard for real: the server reads the library's log folder, and its Images tab shows it.

Starts ``python -m tensorboard.main`` on a free loopback port, asks its HTTP
API for the image tags and each tag's image, compares them byte for byte
with the PNGs on disk, then opens the Images tab in headless Chromium and
checks that the screenshot shows those pictures. The server is stopped
whatever happens.
"""

import base64
import contextlib
import io
import json
import os
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import numpy as np
import pytest
from PIL import Image
from test_gallery_browser import headless_chromium

from tf_cnnvis.visualize import activation_visualization, deconv_visualization
from tf_cnnvis.write import SummaryWriter

from conftest import small_keras_model

STARTUP_SECONDS = 120

# Every <img> of the page, also inside the shadow roots TensorBoard's
# components use, with what the browser decoded and where it drew it.
PAGE_IMAGES = """
const found = [];
const visit = (root) => {
  for (const element of root.querySelectorAll('*')) {
    if (element.tagName === 'IMG') {
      const box = element.getBoundingClientRect();
      found.push({src: element.src, width: element.naturalWidth, height: element.naturalHeight,
                  complete: element.complete, box: [box.x, box.y, box.width, box.height]});
    }
    if (element.shadowRoot) visit(element.shadowRoot);
  }
};
visit(document);
return found.filter(image => image.src.includes('/data/plugin/images/individualImage'));
"""


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def get(url, timeout=10):
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read()


@contextlib.contextmanager
def tensorboard_server(logdir):
    """A TensorBoard server on 127.0.0.1; yields its base URL; always stopped."""
    port = free_port()
    log = open(os.path.join(os.path.dirname(logdir), "tensorboard.log"), "wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", "--logdir", logdir, "--host", "127.0.0.1",
         "--port", str(port), "--reload_interval", "1"],
        stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    try:
        yield f"http://127.0.0.1:{port}", process
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def wait_for_tags(base, process, expected):
    """The server's image tags of run '.', once every expected tag is there."""
    deadline = time.monotonic() + STARTUP_SECONDS
    tags = {}
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"tensorboard exited with status {process.returncode}")
        with contextlib.suppress(OSError):
            tags = json.loads(get(f"{base}/data/plugin/images/tags")).get(".", {})
            if expected <= set(tags):
                return tags
        time.sleep(0.5)
    pytest.fail(f"tensorboard did not report the tags {sorted(expected - set(tags))} in "
                f"{STARTUP_SECONDS} s")


@pytest.fixture
def written(tmp_path):
    """A log folder and output folder written by the library: {tag: png path}."""
    outdir, logdir = tmp_path / "Output", tmp_path / "Log"
    model = small_keras_model()
    images = np.random.default_rng(3).uniform(0, 1, (2, 32, 32, 3)).astype(np.float32)
    results = [
        activation_visualization(model, images, layers=["conv1", "conv3"], path_logdir=str(logdir),
                                 path_outdir=str(outdir)),
        deconv_visualization(model, images[:1], layers=["conv2"], method=["guided", "deconvnet"],
                             path_logdir=str(logdir), path_outdir=str(outdir)),
    ]
    SummaryWriter.close_all()  # the event file is complete before the server reads it
    tags = {}
    for result in results:
        for path in result.paths:
            if os.path.dirname(path) == str(outdir):
                continue  # the input images, written for the gallery, not TensorBoard
            relative = os.path.relpath(os.path.dirname(path), outdir).split(os.sep)
            tags["/".join(relative)] = path
    return str(logdir), tags


def tag_of(image_url):
    """The tag inside an individualImage URL's blob key (base64 JSON)."""
    key = urllib.parse.parse_qs(urllib.parse.urlsplit(image_url).query)["blob_key"][0]
    return json.loads(base64.urlsafe_b64decode(key + "=" * (-len(key) % 4)))[2]


def test_tensorboard_serves_every_image_and_shows_it(written, tmp_path):
    logdir, tags = written
    expected = set(tags)
    assert expected == {"conv1/activations/image_000", "conv1/activations/image_001",
                        "conv3/activations/image_000", "conv3/activations/image_001",
                        "conv2/deconvolution/guided", "conv2/deconvolution/deconvnet"}
    with tensorboard_server(logdir) as (base, process):
        served = wait_for_tags(base, process, expected)
        assert set(served) == expected
        for tag, path in tags.items():
            query = urllib.parse.urlencode({"run": ".", "tag": tag, "sample": 0})
            entries = json.loads(get(f"{base}/data/plugin/images/images?{query}"))
            assert [entry["step"] for entry in entries] == [0]
            png = get(f"{base}/data/plugin/images/individualImage?{entries[0]['query']}")
            assert png == open(path, "rb").read(), tag  # the very bytes written to disk

        with headless_chromium(width=1280, height=1000) as driver:
            driver.get(f"{base}/#images")
            shown = []
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not shown:
                time.sleep(0.5)
                shown = [image for image in driver.execute_script(PAGE_IMAGES)
                         if image["complete"] and image["width"] > 0]
            assert shown, "the Images tab loaded no image"
            time.sleep(1)  # let the cards finish their layout before the screenshot
            shown = [image for image in driver.execute_script(PAGE_IMAGES)
                     if image["complete"] and image["width"] > 0]
            screenshot = Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("L")
            screenshot.save(tmp_path / "images_tab.png")
            ratio = driver.execute_script("return window.devicePixelRatio;")

    page = np.asarray(screenshot, np.float32)
    assert page.std() > 10, "the screenshot of the Images tab is blank"
    matched = 0
    for image in shown:
        on_disk = Image.open(tags[tag_of(image["src"])])
        assert (image["width"], image["height"]) == on_disk.size  # decoded at its stored size
        x, y, width, height = (int(round(value * ratio)) for value in image["box"])
        region = page[y:y + height, x:x + width]
        if region.shape != (height, width) or min(height, width) < 16:
            continue  # drawn outside the visible part of the page
        # the pixels on screen are the picture on disk, scaled to the card
        expected_pixels = np.asarray(on_disk.convert("L").resize((width, height), Image.BILINEAR),
                                     np.float32)
        correlation = np.corrcoef(region.reshape(-1), expected_pixels.reshape(-1))[0, 1]
        assert correlation > 0.8, f"{tag_of(image['src'])}: screen and file differ ({correlation:.2f})"
        matched += 1
    assert matched >= 1
