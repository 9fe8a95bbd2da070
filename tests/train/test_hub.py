"""output.hub_model_id: a finished run's result pushed to the Hugging Face Hub, in one commit.

huggingface_hub runs for real against a local server that answers the three calls a push makes
(create the repository, check the model card's metadata, ask how each file uploads, commit them), in a real `recipe run`
subprocess: the server sees exactly what the hub would. Nothing here reaches the internet.
"""
from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from recipecli.errors import RecipeError
from recipecli.read.load import load_recipe
from recipecli.train import runfolder
from recipecli.train.runner import run

from ..conftest import RECIPES

TOKEN = "hf_not_a_real_token_0123456789"


class FakeHub(ThreadingHTTPServer):
    """The hub's create / validate-yaml / preupload / commit endpoints; ``refuse`` answers the creation
    with it."""

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.calls: list[tuple[str, str, str, bytes]] = []
        self.refuse: int | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def commits(self) -> list[list[dict]]:
        return [[json.loads(line) for line in body.decode().splitlines()]
                for method, path, _, body in self.calls if "/commit/" in path]


class _Handler(BaseHTTPRequestHandler):
    server: FakeHub

    def _reply(self, code: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.calls.append(("POST", self.path, self.headers.get("Authorization", ""), body))
        host = self.headers["Host"]
        if self.path == "/api/repos/create":
            if self.server.refuse:
                return self._reply(self.server.refuse, {"error": "Invalid credentials in Authorization header"})
            asked = json.loads(body)
            repo = "/".join(filter(None, (asked.get("organization"), asked["name"])))
            return self._reply(200, {"url": f"http://{host}/{repo}"})
        if self.path == "/api/validate-yaml":  # the model card's metadata, checked before a commit with one
            return self._reply(200, {})
        if "/preupload/" in self.path:
            files = json.loads(body)["files"]
            return self._reply(200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                               for f in files]})
        if "/commit/" in self.path:
            repo = self.path.split("/api/models/")[1].split("/commit/")[0]
            return self._reply(200, {"commitUrl": f"http://{host}/{repo}/commit/{'c' * 40}", "commitOid": "c" * 40})
        self._reply(404, {"error": "not here"})

    def do_GET(self):
        self.server.calls.append(("GET", self.path, self.headers.get("Authorization", ""), b""))
        self._reply(404, {"error": "not here"})

    def log_message(self, *args):
        pass


@pytest.fixture
def fake_hub():
    server = FakeHub()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()


def _run(tmp_path: Path, *sets: str, env: dict) -> subprocess.CompletedProcess:
    args = [sys.executable, "-m", "recipecli", "run", str(RECIPES / "tiny-demo.yaml"), "--set", "training.max_steps=2",
            "--set", "output.dir=runs/pushed", *(a for s in sets for a in ("--set", s))]
    base = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    return subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=600,
                          env={**base, "HF_HOME": str(tmp_path / "hf-home"), "HF_DATASETS_OFFLINE": "1",
                               "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1", **env})


@pytest.mark.slow
def test_a_finished_run_pushes_its_adapter_in_one_commit_and_keeps_the_token_out_of_its_folder(tmp_path, fake_hub):
    done = _run(tmp_path, "output.hub_model_id=me/tiny-adapter",
                env={"HF_ENDPOINT": fake_hub.url, "HF_TOKEN": TOKEN})
    assert done.returncode == 0, done.stderr[-3000:]
    run_dir = tmp_path / "runs" / "pushed"
    created = [json.loads(b) for m, p, _, b in fake_hub.calls if p == "/api/repos/create"]
    assert created == [{"name": "tiny-adapter", "organization": "me", "visibility": "private"}]
    assert all(auth == f"Bearer {TOKEN}" for m, p, auth, _ in fake_hub.calls if m == "POST")
    (commit,) = fake_hub.commits()
    assert commit[0] == {"key": "header", "value": {"summary": "recipe run tiny-demo", "description": ""}}
    sent = {op["value"]["path"]: base64.b64decode(op["value"]["content"]) for op in commit[1:]}
    adapter = run_dir / runfolder.ADAPTER
    assert sent == {p.relative_to(adapter).as_posix(): p.read_bytes() for p in adapter.rglob("*")
                    if p.is_file() and p.name != "training_args.bin"}
    assert {"adapter_model.safetensors", "adapter_config.json", "tokenizer.json"} <= set(sent)
    hub = yaml.safe_load((run_dir / runfolder.RUN).read_text())["result"]["hub"]
    assert hub == {"repo": "me/tiny-adapter", "commit": "c" * 40, "url": f"{fake_hub.url}/me/tiny-adapter/commit/"
                   + "c" * 40}
    assert "pushed adapter/ to" in done.stderr
    assert not [p for p in run_dir.rglob("*") if p.is_file() and TOKEN.encode() in p.read_bytes()]
    # the Trainer's pickled arguments (this machine's paths) stay home
    assert (adapter / "training_args.bin").is_file() and "training_args.bin" not in sent


@pytest.mark.slow
def test_a_push_the_hub_refuses_leaves_the_run_folder_whole_and_says_how_to_push_it(tmp_path, fake_hub):
    fake_hub.refuse = 401
    done = _run(tmp_path, "output.hub_model_id=me/tiny-adapter", "output.hub_private=false",
                env={"HF_ENDPOINT": fake_hub.url, "HF_TOKEN": TOKEN})
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert ("$.output.hub_model_id: trained, but not pushed to me/tiny-adapter: the hub answered 401: the token is "
            "refused, or may not write to that repository") in done.stderr
    run_dir = tmp_path / "runs" / "pushed"
    assert f"hint: the run folder has the result; push it with: hf upload me/tiny-adapter {run_dir / 'adapter'}" \
        in done.stderr
    result = yaml.safe_load((run_dir / runfolder.RUN).read_text())["result"]
    assert result["steps"] == 2 and result["hub"]["error"].startswith("trained, but not pushed")
    assert (run_dir / runfolder.ADAPTER / "adapter_model.safetensors").is_file()
    assert json.loads([b for m, p, _, b in fake_hub.calls if p == "/api/repos/create"][0])["visibility"] == "public"


@pytest.mark.slow
def test_a_hub_out_of_reach_after_training_is_said_and_the_run_folder_is_whole(tmp_path):
    # nothing listens on port 9: the transport error is not one of the hub's HTTP errors
    done = _run(tmp_path, "output.hub_model_id=me/tiny-adapter",
                env={"HF_ENDPOINT": "http://127.0.0.1:9", "HF_TOKEN": TOKEN})
    assert done.returncode != 0 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert "$.output.hub_model_id: trained, but not pushed to me/tiny-adapter:" in done.stderr
    run_dir = tmp_path / "runs" / "pushed"
    result = yaml.safe_load((run_dir / runfolder.RUN).read_text())["result"]
    assert result["steps"] == 2 and "error" in result["hub"]
    import fcntl

    with open(run_dir / runfolder.LOCK) as lock:  # released, as after any run: another run may take the folder
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)


def test_no_token_is_refused_before_anything_runs(tmp_path, fake_hub):
    done = _run(tmp_path, "output.hub_model_id=me/tiny-adapter", env={"HF_ENDPOINT": fake_hub.url})
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert "$.output.hub_model_id: output.hub_model_id me/tiny-adapter: no Hugging Face token to push with" \
        in done.stderr and "HF_TOKEN" in done.stderr
    assert not (tmp_path / "runs").exists() and not fake_hub.calls


def test_offline_is_refused_before_the_run_folder(make_recipe, tmp_path):
    # the test session runs with HF_HUB_OFFLINE=1, as huggingface_hub read it on import
    recipe = load_recipe(make_recipe({"output": {"dir": str(tmp_path / "run"), "hub_model_id": "me/x"}}))
    assert recipe.output.hub_private is True  # the schema's default, where a repository is named
    with pytest.raises(RecipeError) as info:
        run(recipe, gpus=())
    assert info.value.path == "$.output.hub_model_id" and "HF_HUB_OFFLINE is set" in info.value.message
    assert info.value.where.line > 1 and not (tmp_path / "run").exists()


@pytest.mark.parametrize("repo", ["<your-hub-model-id>", "a/b/c", "https://huggingface.co/me/x", "me/", "-me/x",
                                  "me/x.", "x" * 97, "me/a--b", "me/a..b", "me/x.git"])  # the hub's own rules (validate_repo_id)
def test_a_repository_that_is_not_a_hub_id_is_refused_at_its_line(make_recipe, repo):
    from recipecli.errors import InvalidRecipe

    with pytest.raises(InvalidRecipe) as info:
        load_recipe(make_recipe({"output": {"hub_model_id": repo}}))
    assert [p.path for p in info.value.problems] == ["$.output.hub_model_id"]

