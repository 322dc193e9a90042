"""The MLflow UI as a reviewer sees it: headless Chromium against the real `mlflow server`.

Reads the session's tiny run (`server_fit` in conftest.py, shared with test_tracking.py), checks
over the API what distcl/tracking/review.py wrote (experiment kind, datasets, description,
registry version), then opens the experiment and run pages in Chromium (Debian's `chromium`,
driven by the `playwright` package; `make test` installs both) and asserts on the rendered text.
MLflow's UI is a React app: each check waits for its text to appear after render. Screenshots
land in `results/` (git-ignored): `mlflow_run.png` (run page) and `mlflow_experiment.png`,
`mlflow_plots.png`.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from distcl.tracking import review as tracking_review

RESULTS = Path(__file__).resolve().parents[1] / "results"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",  # tests run as root
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]
RENDER_TIMEOUT_MS = 120_000  # the first render parses MLflow's ~10 MB bundle on a busy 2-core box


def chromium_path() -> str | None:
    """Debian's binary (its /usr/bin/chromium is a wrapper script), else one on PATH."""
    if Path("/usr/lib/chromium/chromium").is_file():
        return "/usr/lib/chromium/chromium"
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    exe = chromium_path()
    if exe is None:
        pytest.skip("no chromium binary: install the Debian package `chromium` (make test does)")
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="the playwright package is missing: pip install -e '.[dev]'"
    )
    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_api.sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(profile),  # a fresh --user-data-dir
            executable_path=exe,
            args=CHROMIUM_ARGS,
            viewport={"width": 1600, "height": 1100},
        )
        yield context
        context.close()


def _open(context, url: str, *texts: str):
    """Open `url` in a new page and wait until each of `texts` is visible; returns the page."""
    page = context.new_page()
    page.goto(url)
    for text in texts:
        page.get_by_text(text).locator("visible=true").first.wait_for(timeout=RENDER_TIMEOUT_MS)
    close = page.locator("[aria-label='Close']").locator("visible=true")  # the AI assistant panel,
    if close.count():  # open on a first visit; the profile remembers it closed
        close.first.click()
    return page


def _value_after(text: str, label: str) -> float:
    """The number on the line after `label` in rendered text (a metrics table's value)."""
    return float(text.split(f"{label}\n", 1)[1].split("\n", 1)[0])


@pytest.mark.slow
def test_run_carries_what_the_ui_shows(server_fit):
    cfg, summary, client, run = server_fit
    exp = client.get_experiment(run.info.experiment_id)
    assert exp.tags[tracking_review.KIND_TAG] == "custom_model_development"
    assert "| simclr-ntxent-b128 |" in exp.tags[tracking_review.NOTE_TAG]
    inputs = {i.dataset.name: i.dataset for i in run.inputs.dataset_inputs}
    assert sorted(inputs) == ["fashion_mnist-test", "fashion_mnist-train"]
    train_beton = Path(cfg.data.beton_dir) / "fashion_mnist-train.beton"
    assert inputs["fashion_mnist-train"].digest == tracking_review.beton_digest(train_beton)
    note = run.data.tags[tracking_review.NOTE_TAG]
    assert f"linear {100 * summary['linear_acc']:.2f}%" in note.splitlines()[0]
    name = tracking_review.registered_name(cfg)
    (version,) = [
        v for v in client.search_model_versions(f"name = '{name}'") if v.run_id == run.info.run_id
    ]
    assert version.tags["linear_acc"] == f"{summary['linear_acc']:.4f}"


@pytest.mark.slow
def test_browser_shows_the_run_its_linear_accuracy_and_plots(server_fit, mlflow_server, browser):
    cfg, summary, client, run = server_fit
    exp_id, run_id = run.info.experiment_id, run.info.run_id
    lin = run.data.metrics["linear_acc"]
    RESULTS.mkdir(exist_ok=True)

    # the experiment opens on its training runs (not the GenAI overview): the runs table with
    # the Dataset, Source and accuracy columns, and the compare table as its description
    link = tracking_review.ui_link(mlflow_server, exp_id)
    page = _open(browser, link, "fashion_mnist-train (", "linear_acc")
    text = page.inner_text("body")
    assert "/runs" in page.url and "overview" not in page.url
    assert cfg.run_name in text and "best linear probe" in text
    for column in ("Dataset", "Source", "Models", "linear_acc", "knn_acc"):
        assert f"{column}\n" in text, column
    page.screenshot(path=str(RESULTS / "mlflow_experiment.png"))
    page.close()

    # the run page: name, description with the result line, linear_acc among the metrics,
    # datasets, the registered model version
    page = _open(
        browser, tracking_review.ui_link(mlflow_server, exp_id, run_id), cfg.run_name, "linear_acc"
    )
    more = page.get_by_text("Show more").locator("visible=true")
    if more.count():  # the description is folded after a few lines
        more.first.click()
    page.get_by_text("Registered models").locator("visible=true").first.wait_for(
        timeout=RENDER_TIMEOUT_MS
    )
    page.get_by_placeholder("Search metrics").fill("_acc")  # the accuracies, in the screenshot
    page.get_by_text("raw_pixels_linear_acc").locator("visible=true").first.wait_for()
    text = page.inner_text("body")
    assert f"linear {100 * lin:.2f}%" in text  # the description's result line
    assert _value_after(text, "linear_acc") == pytest.approx(lin, abs=1e-3)  # metrics table
    assert "fashion_mnist-train (" in text and "Training" in text
    assert tracking_review.registered_name(cfg) in text
    page.screenshot(path=str(RESULTS / "mlflow_run.png"), full_page=True)
    page.close()

    # the plots: listed under Artifacts, and the t-SNE image renders
    url = f"{mlflow_server}/#/experiments/{exp_id}/runs/{run_id}/artifacts/plots/tsne.png"
    page = _open(browser, url + tracking_review.UI_QUERY, "curves.png", "tsne.png")
    page.wait_for_function(  # the preview is an <img> of the fetched file (a blob: URL)
        "() => Array.from(document.images).some(i => i.complete && i.naturalWidth >= 300)",
        timeout=RENDER_TIMEOUT_MS,
    )
    page.wait_for_timeout(1000)  # the artifact tree's unfold animation
    page.screenshot(path=str(RESULTS / "mlflow_plots.png"))
    page.close()
