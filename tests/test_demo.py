"""`python -m efficientsam_jax.demo` in a real headless browser: Debian's Chromium
(/usr/bin/chromium, /usr/bin/chromedriver), driven by selenium. The test opens the page,
uploads a picture, clicks a point, waits for the overlay, downloads the mask and compares it
with the Predictor's mask for the same click. Without Chromium it skips, saying so; under
CI=true it fails instead (.ci/run installs it).

The model is the golden EfficientSAM-Ti's weights at a 256 px input (a cheap encoder; the
masks are the weights' own, not trivial ones), saved as a JAX parameter checkpoint.
"""
import json
import os
import subprocess
import sys
import time
import urllib.request
import warnings

import numpy as np
import pytest
from PIL import Image

from conftest import require_module
from efficientsam_jax.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
CLICK = (200, 100)  # image pixel clicked


def _require_browser():
  require_module("selenium")
  missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.path.exists(p)]
  if missing:
    message = (f"{', '.join(missing)} missing: the browser test needs Debian's Chromium "
               "(apt-get install -y chromium chromium-driver)")
    if os.environ.get("CI") == "true":
      pytest.fail(message)
    warnings.warn(f"browser test skipped: {message}")  # in the warnings summary, not only -rs
    pytest.skip(message)


@pytest.fixture(scope="module")
def checkpoint(fixtures_dir, tmp_path_factory):
  from efficientsam_jax.io import model_files
  state = model_files.read_torch_state(str(fixtures_dir / "efficient_sam_vitt_random.pt"))
  loaded = model_files.from_state_dict(state, image_size=256)
  path = str(tmp_path_factory.mktemp("demo") / "vitt_256")
  model_files.save_jax(path, loaded)
  return path


@pytest.fixture(scope="module")
def picture(fixtures_dir, tmp_path_factory):
  """A 320 x 180 PNG of the fixture photo (small: the page shows it at its own size)."""
  path = tmp_path_factory.mktemp("demo_image") / "dogs_small.png"
  with Image.open(fixtures_dir / "dogs.png") as image:
    image.convert("RGB").resize((320, 180), Image.Resampling.BILINEAR).save(path)
  return path


@pytest.fixture(scope="module")
def server(checkpoint):
  _require_browser()  # before the (slow) model load
  env = dict(os.environ, PYTHONPATH=REPO)
  process = subprocess.Popen([sys.executable, "-m", "efficientsam_jax.demo",
                              f"--checkpoint={checkpoint}", "--port=0"], cwd=REPO, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  line = process.stdout.readline()  # "serving NAME on URL" once listening
  if not line.startswith("serving"):
    process.kill()
    pytest.fail(f"demo did not start: {line}{process.stderr.read()}")
  yield line.split(" on ")[1].strip()
  process.terminate()
  process.wait(timeout=30)


@pytest.fixture
def browser(tmp_path):
  _require_browser()
  from selenium import webdriver
  from selenium.webdriver.chrome.service import Service
  options = webdriver.ChromeOptions()
  options.binary_location = CHROMIUM
  for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
               "--no-first-run", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--window-size=1200,900",
               f"--user-data-dir={tmp_path / 'profile'}"):
    options.add_argument(flag)
  driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
  downloads = tmp_path / "downloads"
  downloads.mkdir()
  driver.execute_cdp_cmd("Browser.setDownloadBehavior",
                         {"behavior": "allow", "downloadPath": str(downloads)})
  yield driver, downloads
  driver.quit()


def _wait(condition, timeout=240.0, what="the page", driver=None):
  """condition()'s first true value; fails on timeout, or at once when the page shows an
  error (its status line starts with "error:")."""
  from selenium.webdriver.common.by import By
  end = time.monotonic() + timeout
  while time.monotonic() < end:
    value = condition()
    if value:
      return value
    status = driver.find_element(By.ID, "status").text if driver else ""
    if status.startswith("error"):
      pytest.fail(f"the page shows {status!r} while waiting for {what}")
    time.sleep(0.2)
  pytest.fail(f"timed out waiting for {what}")


def test_click_gives_the_predictors_mask(browser, server, picture, checkpoint):
  from selenium.webdriver.common.action_chains import ActionChains
  from selenium.webdriver.common.by import By
  from efficientsam_jax.inference import Predictor
  driver, downloads = browser
  driver.get(server)
  _wait(lambda: "vitt" in driver.find_element(By.ID, "model").text, what="the model name")
  driver.find_element(By.ID, "file").send_keys(str(picture))
  stage = driver.find_element(By.ID, "stage")
  _wait(lambda: stage.get_attribute("data-ready"), what="the embedding", driver=driver)
  canvas = driver.find_element(By.ID, "image")
  assert (canvas.size["width"], canvas.size["height"]) == (320, 180)  # shown at its own size
  # Selenium offsets are from the element's centre.
  ActionChains(driver).move_to_element_with_offset(
      canvas, CLICK[0] - 160, CLICK[1] - 90).click().perform()
  result = _wait(lambda: driver.execute_script("return window.demoResult"), what="the mask",
                 driver=driver)
  clicked = np.asarray(result["points"], np.float32)
  assert np.abs(clicked - np.asarray([CLICK], np.float32)).max() <= 1.0
  assert result["labels"] == [1.0]
  # The overlay drawn on the page covers exactly the mask.
  alpha = np.asarray(driver.execute_script(
      "return Array.from(document.getElementById('overlay').getContext('2d')"
      ".getImageData(0, 0, 320, 180).data)"), np.uint8).reshape(180, 320, 4)[..., 3] > 0
  driver.find_element(By.ID, "maskpng").click()
  path = downloads / "mask.png"
  _wait(lambda: path.exists() and path.stat().st_size > 0, 60, "the download")
  time.sleep(0.5)  # Chromium renames the finished download into place
  with Image.open(path) as png:
    downloaded = np.asarray(png) > 127
  image = np.asarray(Image.open(picture).convert("RGB"))
  predictor = Predictor.from_checkpoint(checkpoint)
  predictor.set_image(image)
  out = predictor.predict(points=clicked[None], labels=[[1]])
  want = out["logits"][0, int(np.argmax(out["iou"][0]))] > 0
  print(f"mask of the click: {want.sum()} pixels; downloaded {downloaded.sum()}; overlay "
        f"{alpha.sum()}; page answered in {result['seconds']} s")
  assert 0 < want.sum() < want.size  # a real mask, not an empty or full one
  np.testing.assert_array_equal(downloaded, want)
  np.testing.assert_array_equal(alpha, want)
  with urllib.request.urlopen(server + "api/result.json") as response:
    coco = json.load(response)
  from pycocotools import mask as mask_utils
  rle = dict(coco["annotations"][0]["segmentation"])
  np.testing.assert_array_equal(mask_utils.decode(rle).astype(bool), want)
  assert coco["images"][0]["file_name"] == "dogs_small.png"


def test_session_with_sam_family_builtin_image_and_everything():
  """The page's calls on a SAM-family model (random tiny weights at 256 px), without HTTP:
  built-in image, a box, segment everything, the results as PNG and COCO JSON."""
  from efficientsam_jax.demo import session as session_lib
  from efficientsam_jax.inference import Predictor
  from efficientsam_jax.models import registry
  config = registry.config("sam_vit_b", image_size=256, encoder_overrides=(
      ("width", 64), ("depth", 2), ("num_heads", 4), ("global_blocks", (1,))))
  predictor = Predictor(registry.family_of("sam_vit_b").init_params(config), config)
  demo = session_lib.DemoSession(predictor, config.name)
  with pytest.raises(UserError, match="open an image first"):
    demo.segment([[1, 1]], [1], None)
  info = demo.set_builtin("shapes")
  assert (info["width"], info["height"]) == session_lib.BUILTIN_SIZE
  answer = demo.segment([[100, 120]], [1], [40, 60, 180, 200])
  assert answer["labels"] == [1.0, 2.0, 3.0] and 0 <= answer["area"] <= 480 * 360
  with Image.open(__import__("io").BytesIO(demo.mask_png())) as png:
    assert png.size == (480, 360) and (np.asarray(png) > 0).sum() == answer["area"]
  found = demo.everything(points_per_side=2)
  coco = json.loads(demo.coco_json())
  assert len(coco["annotations"]) == found["count"]
  with pytest.raises(UserError, match="one label each"):
    demo.segment([[1, 1]], [5], None)
