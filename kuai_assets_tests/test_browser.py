"""The Dagster UI and the MLflow UI, used as a data scientist would, in a real browser.

Starts `dagster-webserver` and `mlflow ui` on free ports of 127.0.0.1 over the tiny materialized
work dir (conftest.materialized), drives Debian's headless chromium through Playwright (which
never downloads a browser here), and saves screenshots of both UIs to test-artifacts/. Both UIs
are React apps: every wait is for a specific element or text, bounded.

The last test is the loop a person runs: `kuai ui` (webserver and daemon) and `kuai mlflow-ui` on
a copy of that work dir; it materializes `model` from its page, follows the new materialization's
link to its new MLflow run, then relaunches with another learning_rate from the Launchpad.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
SERVER_START_SECONDS = 90
UI_TIMEOUT_MS = 30_000
VIEWPORT = {"width": 1600, "height": 1000}
# What a returning user's browser remembers: Dagster's community pop-up (shown on 127.0.0.1) was
# dismissed, MLflow's assistant panel closed and its "Model training" view chosen. Without them a
# modal or a side panel covers the page.
REMEMBERED = {
    "communityNux": json.dumps("1"),
    "mlflow.assistant.panelOpen_v1": "false",
    "mlflow.assistant.fab.autoOpenedOnFirstLoad_v1": "true",
    "mlflow.workflowType_v1": json.dumps("machine_learning"),
}

if not CHROMIUM.exists():
    if os.environ.get("KUAI_REQUIRE_BROWSER") == "1":  # .ci/run: a missing browser is a failure, not a skip
        raise RuntimeError(f"KUAI_REQUIRE_BROWSER=1 but {CHROMIUM} is missing: `apt-get install chromium`")
    pytest.skip(
        f"no {CHROMIUM}: install Debian's chromium (`apt-get install chromium`; .ci/run does it) to run the browser tests",
        allow_module_level=True,
    )
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is in the `test` extra: pip install -e '.[test]'")
expect = sync_api.expect
expect.set_options(timeout=UI_TIMEOUT_MS)


# -- servers -----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def venv_executable(name: str) -> str:
    path = Path(sys.executable).parent / name
    return str(path) if path.exists() else name


class Server:
    """A UI server in its own process group: started, waited for (bounded), always stopped."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], cwd: Path, port: int):
        self.name = name
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = cwd / f"{name}.log"
        self._log = open(self.log_path, "w")
        self.process = subprocess.Popen(
            argv, env=env, cwd=cwd, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def wait_until_answering(self, path: str) -> None:
        deadline = time.monotonic() + SERVER_START_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + path, timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.25)
        raise RuntimeError(f"{self.name} did not answer {path} within {SERVER_START_SECONDS}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        self._log.flush()
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        """SIGTERM the whole process group (the webserver's code server, uvicorn's workers), then SIGKILL."""
        if self.process.poll() is None:
            for sig, grace in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
                try:
                    os.killpg(self.process.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    self.process.wait(grace)
                    break
                except subprocess.TimeoutExpired:
                    continue
        try:  # children that outlived their leader
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self._log.close()


def tracking_uri(work: Path) -> str:
    return f"sqlite:///{work}/mlflow/mlflow.db"


@pytest.fixture(scope="module")
def servers(request, materialized, tmp_path_factory) -> dict[str, str]:
    """dagster-webserver and `mlflow ui` over the materialized work dir, started side by side.

    The webserver gets the environment the resources read; it runs from an empty folder, since
    the dagster CLI loads a .env from its working directory and the repo root's (written by
    `kuai`) would point DAGSTER_HOME at .kuai/. `mlflow ui` runs one worker and no job runner.
    """
    work = materialized["work"]
    base_env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    dagster_port, mlflow_port = free_port(), free_port()
    specs = {
        "dagster-webserver": (
            [venv_executable("dagster-webserver"), "-h", "127.0.0.1", "-p", str(dagster_port),
             "-m", "kuai_assets.definitions"],
            {
                **base_env,
                "DAGSTER_HOME": str(materialized["dagster_home"]),
                "KUAI_DATA_DIR": str(materialized["data"]),
                "KUAI_WORK_DIR": str(work),
                "MLFLOW_TRACKING_URI": tracking_uri(work),
            },
            dagster_port,
            "/server_info",
        ),
        "mlflow-ui": (
            [venv_executable("mlflow"), "ui", "--backend-store-uri", tracking_uri(work),
             "--host", "127.0.0.1", "--port", str(mlflow_port), "--workers", "1"],
            {**base_env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
            mlflow_port,
            "/health",
        ),
    }
    started = {}
    for name, (argv, env, port, _) in specs.items():
        started[name] = Server(name, argv, env, tmp_path_factory.mktemp(name), port)
        request.addfinalizer(started[name].stop)
    for name, server in started.items():
        server.wait_until_answering(specs[name][3])
    return {name: server.url for name, server in started.items()}


@pytest.fixture(scope="module")
def dagster_ui(servers) -> str:
    return servers["dagster-webserver"]


@pytest.fixture(scope="module")
def mlflow_ui(servers) -> str:
    return servers["mlflow-ui"]


@pytest.fixture(scope="module")
def browser(request):
    playwright = sync_api.sync_playwright().start()
    request.addfinalizer(playwright.stop)
    launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
    request.addfinalizer(launched.close)
    return launched


@pytest.fixture
def page(request, browser):
    context = browser.new_context(viewport=VIEWPORT)
    context.add_init_script(
        "".join(f"window.localStorage.setItem({json.dumps(k)}, {json.dumps(v)});" for k, v in REMEMBERED.items())
    )
    context.set_default_timeout(UI_TIMEOUT_MS)
    opened = context.new_page()
    try:
        yield opened
    finally:
        screenshot(opened, f"last-page-{request.node.name}.png")  # where a failing test stopped
        context.close()


def screenshot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / name))


def materialization(materialized, asset: str) -> dict:
    import dagster as dg

    events = [
        e for e in materialized["result"].get_asset_materialization_events() if e.asset_key == dg.AssetKey(asset)
    ]
    return {k: v.value for k, v in events[-1].materialization.metadata.items()}


def numbers(text: str) -> list[float]:
    return [float(x) for x in re.findall(r"-?\d+(?:\.\d+)?(?:e-?\d+)?", text.replace(",", ""))]


# -- Dagster -----------------------------------------------------------------------------------


def shown_as(name: str, label: str) -> bool:
    """Whether a graph node label shows this asset: whole, or elided in the middle (`user_f…_preference`)."""
    label = label.strip()
    if label == name:
        return True
    if label.count("…") != 1:
        return False
    head, tail = label.split("…")
    return len(head) + len(tail) < len(name) and name.startswith(head) and name.endswith(tail)


def test_dagster_asset_graph_shows_every_asset_by_group(dagster_ui, page):
    from kuai_assets.definitions import defs

    graph = defs.resolve_asset_graph()
    assets = sorted(key.to_user_string() for key in graph.get_all_asset_keys())
    groups = {graph.get(key).group_name for key in graph.get_all_asset_keys()}

    # the graph draws only the nodes in view: lay it out top-down on a wide page, where it fits
    page.set_viewport_size({"width": 2400, "height": 1100})
    page.add_init_script(f"window.localStorage.setItem('asset-graph-direction', {json.dumps(json.dumps('vertical'))});")
    page.goto(f"{dagster_ui}/asset-groups")
    nodes = page.locator("svg foreignObject")
    # a graph this size opens with every group collapsed into one box
    expect(nodes.filter(has_text=re.compile(r"^features"))).to_have_count(1)
    expect(nodes.filter(has_text=re.compile(r"^training_matrix$"))).to_have_count(0)
    page.keyboard.press("Alt+e")  # "Expand all groups", from the graph's settings menu
    expect(nodes.filter(has_text=re.compile(r"^training_matrix$"))).to_have_count(1)

    deadline = time.monotonic() + UI_TIMEOUT_MS / 1000
    while True:  # the expanded layout settles in a moment: read the labels until every asset is there
        labels = [t.strip() for t in nodes.all_text_contents() if t.strip()]
        unmatched, missing = list(labels), []
        for name in assets:
            match = next((label for label in unmatched if shown_as(name, label)), None)
            if match is None:
                missing.append(name)
            else:
                unmatched.remove(match)
        if not missing or time.monotonic() > deadline:
            break
        page.wait_for_timeout(200)
    assert not missing, f"not in the asset graph: {missing}; node labels: {labels}"
    assert groups <= set(unmatched), f"group boxes: {unmatched}"
    screenshot(page, "dagster_asset_graph.png")


def metadata_row(page, key: str):
    """The row of the asset page's metadata table whose key cell is exactly `key`."""
    return page.get_by_role("row").filter(has=page.get_by_role("cell", name=key, exact=True))


def test_dagster_asset_pages_show_materialization_metadata(dagster_ui, page, materialized):
    model = materialization(materialized, "model")
    page.goto(f"{dagster_ui}/assets/model")
    valid_auc = metadata_row(page, "valid_auc")
    expect(valid_auc).to_have_count(1)
    shown = numbers(valid_auc.inner_text())
    assert any(abs(v - model["valid_auc"]) < 1e-6 for v in shown), (shown, model["valid_auc"])
    link = metadata_row(page, "mlflow_run").get_by_role("link", name=re.compile(r"^http"))
    expect(link).to_have_attribute("href", model["mlflow_run"])
    for key in ("importance_by_group", "roc_curve", "auc_by_iteration", "feature_groups"):
        expect(metadata_row(page, key)).to_have_count(1)
    expect(page.get_by_text("lightgbm", exact=True).first).to_be_visible()  # a kind, in Definition
    screenshot(page, "dagster_model_asset.png")

    raw = materialization(materialized, "raw_interactions")
    page.goto(f"{dagster_ui}/assets/raw_interactions")
    row_count = page.get_by_text("Row count", exact=True)
    expect(row_count).to_be_visible()
    expect(row_count.locator("xpath=..")).to_contain_text(f"{raw['dagster/row_count']:,}")
    schema = raw["dagster/column_schema"].columns
    columns = page.get_by_role("row").filter(has=page.get_by_role("cell", name="playing_time", exact=True))
    expect(columns.first).to_contain_text(next(c.type for c in schema if c.name == "playing_time"))
    expect(metadata_row(page, "preview")).to_have_count(1)
    screenshot(page, "dagster_raw_interactions_asset.png")


# -- MLflow ------------------------------------------------------------------------------------


def test_mlflow_runs_list_compare_and_the_link_from_dagster(mlflow_ui, page, materialized):
    work = materialized["work"]
    full = json.loads((work / "stores" / "model" / "run.json").read_text())
    baseline = json.loads((work / "stores" / "baseline_model" / "run.json").read_text())
    experiment = full["mlflow_experiment_id"]

    page.goto(f"{mlflow_ui}/#/experiments/{experiment}/runs?workflowType=machine_learning")
    rows = {}
    for config in ("full", "baseline"):
        rows[config] = page.get_by_role("row").filter(has_text=re.compile(rf"{config} · \d+ groups"))
        expect(rows[config]).to_have_count(1)
    screenshot(page, "mlflow_runs.png")

    # compare the two, as a person would: tick both rows, press Compare
    for config in ("full", "baseline"):
        rows[config].get_by_role("checkbox", name=re.compile("row selection")).check()
    page.get_by_role("button", name="Compare", exact=True).click()
    run_ids = page.get_by_role("row").filter(has=page.get_by_text("Run ID:", exact=True))
    expect(run_ids).to_contain_text(full["mlflow_run_id"])
    expect(run_ids).to_contain_text(baseline["mlflow_run_id"])
    order = sorted((full, baseline), key=lambda r: run_ids.inner_text().index(r["mlflow_run_id"]))

    # params: one row per param, one cell per run (the Parameters table comes before the Tags one)
    model_config = page.get_by_role("row").filter(has=page.get_by_role("rowheader", name="model_config", exact=True))
    expect(model_config.first.get_by_role("cell")).to_have_text([r["config"] for r in order])
    # metrics: a grid of names beside a grid of values, one value per run and name
    switch = page.get_by_role("switch", name="Metrics - Show diff only")
    grids = switch.locator("xpath=ancestor::div[.//*[@role='grid']][1]").get_by_role("grid")
    expect(grids.first).to_contain_text("valid_auc")
    names = grids.nth(0).inner_text().split()
    values = grids.nth(1).inner_text().split()
    assert len(values) == 2 * len(names), (names, values)
    at = names.index("valid_auc")
    shown = [float(v) for v in values[2 * at : 2 * at + 2]]
    assert shown == pytest.approx([r["valid_auc"] for r in order], abs=6e-4)  # MLflow shows 3 decimals
    screenshot(page, "mlflow_compare.png")

    # the model's materialization links to its MLflow run (recorded for the default port)
    link = materialization(materialized, "model")["mlflow_run"]
    page.goto(mlflow_ui + link[link.index("/#/") :])
    expect(page.get_by_role("heading", name=re.compile(r"^full · "))).to_be_visible()
    expect(page.get_by_role("link", name="kuai_click_model", exact=True).first).to_be_visible()  # registered
    expect(page.get_by_text(repr(full["valid_auc"]), exact=True).first).to_be_visible()
    screenshot(page, "mlflow_model_run.png")


# -- the loop a person runs: `kuai ui` and `kuai mlflow-ui`, Materialize, the Launchpad --------------

KUAI = Path(sys.executable).parent / "kuai"
RUN_SECONDS = 600  # a tiny model run launched from the UI, on a loaded 2-core machine


@pytest.fixture(scope="module")
def kuai_uis(request, materialized, tmp_path_factory) -> dict:
    """`kuai ui` (webserver and daemon) and `kuai mlflow-ui` over a copy of the materialized work
    dir, started as a person starts them (a clean environment, the workspace given by --work).

    A copy: the runs launched here must not change what the other tests read."""
    import shutil

    work = tmp_path_factory.mktemp("kuai_ui") / "work"
    shutil.copytree(materialized["work"], work, symlinks=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KUAI_", "DAGSTER_", "MLFLOW_"))}
    env.update({"PYTHONPATH": str(Path(__file__).resolve().parents[1]), "KUAI_DUCKDB_MEMORY": "1GB"})
    dagster_port, mlflow_port = free_port(), free_port()
    logs = tmp_path_factory.mktemp("kuai_ui_logs")
    ui = Server("kuai-ui", [str(KUAI), "ui", "--work", str(work), "--data", str(materialized["data"]),
                            "--port", str(dagster_port)], env, logs, dagster_port)
    request.addfinalizer(ui.stop)
    ui.wait_until_answering("/server_info")  # it records the workspace first
    mlflow = Server("kuai-mlflow-ui", [str(KUAI), "mlflow-ui", "--work", str(work), "--port", str(mlflow_port)],
                    env, logs, mlflow_port)
    request.addfinalizer(mlflow.stop)
    mlflow.wait_until_answering("/health")
    return {"work": work, "dagster": ui.url, "mlflow": mlflow.url, "server": ui}


def wait_for_run(work: Path, run_id_prefix: str, server: Server) -> str:
    """The run's full id once it succeeded (read from the workspace's instance); fails on failure."""
    import dagster as dg
    from dagster._core.instance.ref import InstanceRef

    deadline = time.monotonic() + RUN_SECONDS
    with dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(work / "dagster_home"))) as instance:
        while time.monotonic() < deadline:
            run = next((r for r in instance.get_runs(limit=20) if r.run_id.startswith(run_id_prefix)), None)
            if run is not None and run.status == dg.DagsterRunStatus.SUCCESS:
                return run.run_id
            if run is not None and run.status in (dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED):
                raise AssertionError(f"run {run.run_id} ended {run.status}:\n{server.log_tail(80)}")
            time.sleep(1)
    raise AssertionError(f"run {run_id_prefix} did not succeed within {RUN_SECONDS}s:\n{server.log_tail(80)}")


def latest_model(work: Path) -> tuple[str, dict]:
    import dagster as dg
    from dagster._core.instance.ref import InstanceRef

    with dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(work / "dagster_home"))) as instance:
        event = instance.get_latest_materialization_event(dg.AssetKey("model"))
        return event.run_id, {k: v.value for k, v in event.asset_materialization.metadata.items()}


def launched_run(page) -> str:
    """The run id prefix the UI's "Launched run <id>" toast shows."""
    toast = page.get_by_text(re.compile(r"^Launched run [0-9a-f]{8}$"))
    expect(toast).to_be_visible()
    return toast.inner_text().split()[-1]


def test_materialize_model_in_kuai_ui_then_change_the_learning_rate_in_the_launchpad(kuai_uis, page):
    from mlflow import MlflowClient

    work, dagster_ui, mlflow_ui = kuai_uis["work"], kuai_uis["dagster"], kuai_uis["mlflow"]
    before_run, before = latest_model(work)

    # open `model`, press Materialize, wait for the run to succeed
    page.goto(f"{dagster_ui}/assets/model")
    materialize = page.get_by_role("button").filter(has_text=re.compile(r"^\s*Materialize\s*$")).first
    materialize.click()
    first = wait_for_run(work, launched_run(page), kuai_uis["server"])
    run_id, model = latest_model(work)
    assert run_id == first != before_run and model["mlflow_run_id"] != before["mlflow_run_id"]

    # the new materialization's AUC, and its link to the new MLflow run (on the port `kuai mlflow-ui` chose)
    page.reload()
    valid_auc = metadata_row(page, "valid_auc")
    expect(valid_auc).to_have_count(1)
    assert any(abs(v - model["valid_auc"]) < 1e-6 for v in numbers(valid_auc.inner_text())), valid_auc.inner_text()
    client = MlflowClient(f"sqlite:///{work}/mlflow/mlflow.db")
    experiment = client.get_run(model["mlflow_run_id"]).info.experiment_id
    link = metadata_row(page, "mlflow_run").get_by_role("link", name=re.compile(r"^http"))
    # the new run's link (so the page shows the new materialization), on the recorded MLflow UI
    expect(link).to_have_attribute("href", f"{mlflow_ui}/#/experiments/{experiment}/runs/{model['mlflow_run_id']}")
    screenshot(page, "kuai_ui_model_materialized.png")
    page.goto(link.get_attribute("href"))
    expect(page.get_by_role("heading", name=re.compile(r"^full · \d+ groups · lr 0.1 "))).to_be_visible()
    screenshot(page, "kuai_ui_model_mlflow_run.png")

    # the Launchpad: the model's config, learning_rate changed, launched again
    page.goto(f"{dagster_ui}/assets/model")
    materialize.locator("xpath=following::button[1]").click()
    page.get_by_role("menuitem").filter(has_text="Open launchpad").click()
    line = page.locator(".CodeMirror-line").filter(has_text=re.compile(r"^\s*learning_rate: 0\.1\s*$"))
    expect(line).to_have_count(1)
    # put the cursor at the end of that line (a click on it can land on its neighbour while the
    # editor settles), then type as a person does
    page.evaluate(
        """() => {
            const cm = document.querySelector('.CodeMirror').CodeMirror;
            const n = cm.getValue().split('\\n').findIndex((l) => /^\\s*learning_rate: 0\\.1\\s*$/.test(l));
            cm.focus();
            cm.setCursor({line: n, ch: cm.getLine(n).length});
        }"""
    )
    for _ in range(3):
        page.keyboard.press("Backspace")
    page.keyboard.type("0.2")
    expect(page.locator(".CodeMirror-line").filter(has_text=re.compile(r"^\s*learning_rate: 0\.2\s*$"))).to_have_count(1)
    screenshot(page, "kuai_ui_launchpad.png")
    page.get_by_role("dialog").get_by_role("button").filter(has_text=re.compile(r"^\s*Materialize\s*$")).click()
    page.wait_for_url(re.compile(r"/runs/[0-9a-f-]{36}"))  # the Launchpad opens the new run's page
    second = wait_for_run(work, page.url.rstrip("/").split("/runs/")[1].split("?")[0], kuai_uis["server"])
    expect(page.get_by_text("Success", exact=True).first).to_be_visible()
    screenshot(page, "kuai_ui_launchpad_run.png")
    run_id, retrained = latest_model(work)
    assert run_id == second != first
    recorded = client.get_run(retrained["mlflow_run_id"])
    assert float(recorded.data.params["learning_rate"]) == 0.2
    assert re.match(r"full · \d+ groups · lr 0.2 ", recorded.info.run_name), recorded.info.run_name
