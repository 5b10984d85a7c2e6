"""scripts/gpu_check.sh without a GPU: its syntax, the Python it embeds, and the paths that must fail
clearly (no GPU, no vllm, a vllm that dies or never gets ready), run for real with stand-in `nvidia-smi`
and `vllm` executables. The measuring part needs a GPU and is run by hand there."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.net import free_port, wait_http

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts/gpu_check.sh"


def _executable(path: Path, body: str) -> Path:
    path.write_text("#!/usr/bin/env bash\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def _run(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    checkpoint = tmp_path / "ckpt"
    checkpoint.mkdir(exist_ok=True)
    (checkpoint / "model.safetensors").touch()  # present: the script must not train one
    base = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "PYTHON": sys.executable, "HF_TOKEN": "x",
            "RECSYS_MODEL_DIR": str(checkpoint), "GPU_CHECK_OUT": str(tmp_path / "out"),
            "VLLM_PORT": str(free_port())}  # fmt: skip
    return subprocess.run(["bash", str(SCRIPT)], env={**base, **env}, capture_output=True, text=True, timeout=120)


def _fake_gpu(tmp_path: Path) -> str:
    return str(_executable(tmp_path / "nvidia-smi", 'echo "Fake GPU, 1024 MiB"\n'))


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"  # a zombie has exited
    except FileNotFoundError:
        return False


def test_the_script_parses_and_is_executable() -> None:
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)
    assert SCRIPT.stat().st_mode & stat.S_IXUSR


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed")
def test_shellcheck_finds_nothing() -> None:
    out = subprocess.run(["shellcheck", "-S", "warning", str(SCRIPT)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout


def test_the_embedded_python_compiles() -> None:
    text = SCRIPT.read_text()
    code = text.split("# gpu-check:python:start\n", 1)[1].split("# gpu-check:python:end\n", 1)[0]
    compile(code, "gpu_check.sh:python", "exec")


def test_without_a_gpu_it_says_so_before_starting_anything(tmp_path: Path) -> None:
    out = _run(tmp_path, NVIDIA_SMI=str(tmp_path / "no-nvidia-smi"))
    assert out.returncode == 1
    assert "no NVIDIA GPU on this machine" in out.stderr


def test_without_vllm_it_says_how_to_install_the_pinned_version(tmp_path: Path) -> None:
    out = _run(tmp_path, NVIDIA_SMI=_fake_gpu(tmp_path), VLLM_BIN=str(tmp_path / "no-vllm"))
    assert out.returncode == 1
    assert "vllm not found" in out.stderr
    assert "pip install vllm==0.10.2" in out.stderr


def test_a_port_already_served_is_refused_before_vllm_starts(tmp_path: Path) -> None:
    port = free_port()
    other = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
                             cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        wait_http(f"http://127.0.0.1:{port}/")
        vllm = _executable(tmp_path / "vllm", "[[ $1 == --version ]] && { echo 0.10.2; exit 0; }\nexit 9\n")
        out = _run(tmp_path, NVIDIA_SMI=_fake_gpu(tmp_path), VLLM_BIN=str(vllm), VLLM_PORT=str(port))
    finally:
        other.terminate()
        other.wait(10)
    assert out.returncode == 1
    assert f"port {port} already answers" in out.stderr


def test_a_vllm_that_dies_at_start_is_reported_with_its_log(tmp_path: Path) -> None:
    vllm = _executable(
        tmp_path / "vllm", '[[ $1 == --version ]] && { echo 0.10.2; exit 0; }\necho "boom: no CUDA"\nexit 3\n'
    )
    out = _run(tmp_path, NVIDIA_SMI=_fake_gpu(tmp_path), VLLM_BIN=str(vllm))
    assert out.returncode == 1
    assert "vllm serve exited before it was ready" in out.stderr
    assert "boom: no CUDA" in out.stderr


def test_a_vllm_that_never_gets_ready_times_out_and_is_killed(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    # a server that spawns a worker (as vLLM's engine core) and never answers
    body = f'[[ $1 == --version ]] && {{ echo 0.10.1; exit 0; }}\nsleep 300 &\necho "$$ $!" > {pids}\nwait\n'
    vllm = _executable(tmp_path / "vllm", body)
    t = time.monotonic()
    out = _run(tmp_path, NVIDIA_SMI=_fake_gpu(tmp_path), VLLM_BIN=str(vllm), VLLM_READY_TIMEOUT_S="3")
    assert out.returncode == 1
    assert "vllm not ready after 3 s" in out.stderr
    assert "warning: vllm 0.10.1 here, docker-compose.yml pins 0.10.2" in out.stderr
    assert "vllm stopped" in out.stderr
    assert time.monotonic() - t < 60
    server, worker = (int(p) for p in pids.read_text().split())
    deadline = time.monotonic() + 5
    while (_alive(server) or _alive(worker)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(server)
    assert not _alive(worker)
