"""What a newcomer hits with ``llmeff`` (issue 24): multi-process failures end the command, model folders are
read locally only, ``caprese train`` works with any tokenizer, and library code never reaches into benchmarks/."""
from __future__ import annotations

import ast
import socket
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("transformers")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _lm_folders import save_lm_folder  # noqa: E402
from _worker_fns import blocked_peer, exits_silently  # noqa: E402

from llmeff.cli import main  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def no_network(monkeypatch):
    """Hugging Face offline mode plus a socket guard: any connection attempt fails the test."""
    attempts = []

    def refuse(*a, **k):
        attempts.append(a)
        raise AssertionError(f"network access attempted: {a}")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    yield attempts
    assert not attempts


@pytest.fixture(scope="module")
def lm_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("lms")
    return {"ok": save_lm_folder(root / "lm"), "three_heads": save_lm_folder(root / "lm3", heads=3, kv_heads=1),
            "no_eot": save_lm_folder(root / "lm_noeot", eot=False)}


# ------------------------------------------------------------------------------------ item 4: local folders only
@pytest.mark.parametrize("argv", [
    ["griffin", "--lm", "{lm}"],
    ["kvcache", "generate", "--lm", "{lm}", "--prompt", "x"],
    ["kvcache", "train-less", "--lm", "{lm}", "--out", "{tmp}/less"],
    ["caprese", "train", "--lm", "{lm}", "--out", "{tmp}/br"],
    ["caprese", "generate", "--lm", "{lm}", "--branches", "{tmp}/br"],
    ["tp", "--lm", "{lm}", "--world", "2"],
])
@pytest.mark.parametrize("lm", ["./nope", "nope", "someorg/somemodel"])
def test_missing_model_folder_is_a_local_error(no_network, tmp_path, monkeypatch, capsys, argv, lm):
    monkeypatch.chdir(tmp_path)
    t0 = time.perf_counter()
    rc = main([a.format(lm=lm, tmp=tmp_path) for a in argv])
    err = capsys.readouterr().err
    assert rc == 2
    assert f"'{lm}' does not exist" in err and "never downloaded" in err
    assert "Traceback" not in err and "Repo id" not in err
    if lm == "someorg/somemodel":
        assert "looks like a Hub name" in err
    assert time.perf_counter() - t0 < 20


def test_folder_without_config_or_tokenizer(no_network, tmp_path, capsys, lm_dirs):
    (tmp_path / "empty").mkdir()
    assert main(["griffin", "--lm", str(tmp_path / "empty")]) == 2
    assert "has no config.json" in capsys.readouterr().err
    notok = tmp_path / "notok"
    notok.mkdir()
    for f in ("config.json", "model.safetensors"):
        (notok / f).write_bytes((lm_dirs["ok"] / f).read_bytes())
    assert main(["griffin", "--lm", str(notok), "--max-new-tokens", "2"]) == 2
    assert "has no usable tokenizer" in capsys.readouterr().err


def test_lm_help_says_local_only():
    from llmeff.cli import build_parser

    parser = build_parser()
    sub = parser._subparsers._group_actions[0].choices
    helps = [sub["griffin"].format_help(), sub["tp"].format_help()]
    kv = sub["kvcache"]._subparsers._group_actions[0].choices
    cap = sub["caprese"]._subparsers._group_actions[0].choices
    helps += [kv["generate"].format_help(), kv["train-less"].format_help(), cap["train"].format_help(),
              cap["generate"].format_help()]
    for h in helps:
        flat = " ".join(h.split())
        assert "local_files_only=True" in flat and "nothing is ever downloaded" in flat


def test_valid_folder_loads_with_the_network_disabled(no_network, lm_dirs, capsys):
    assert main(["griffin", "--lm", str(lm_dirs["ok"]), "--max-new-tokens", "3", "--density", "0.5",
                 "--device", "cpu", "--json"]) == 0
    assert '"completions"' in capsys.readouterr().out


def test_missing_saved_state_folders_are_local_errors(tmp_path, capsys, lm_dirs):
    from llmeff.errors import LLMEffFileNotFoundError

    assert main(["kvcache", "generate", "--lm", str(lm_dirs["ok"]), "--prompt", "x", "--policy", "less",
                 "--less", str(tmp_path / "nomaps"), "--device", "cpu"]) == 2
    assert "less_config.json" in capsys.readouterr().err
    assert main(["caprese", "generate", "--lm", str(lm_dirs["ok"]), "--branches", str(tmp_path / "nobr"),
                 "--device", "cpu"]) == 2
    assert "caprese.json" in capsys.readouterr().err
    assert issubclass(LLMEffFileNotFoundError, FileNotFoundError)


# ------------------------------------------------------------------------------- item 1: no hang, worker's error
def test_tp_impossible_split_refused_before_spawning(lm_dirs, capsys, monkeypatch):
    import llmeff.workers

    def no_spawn(*a, **k):
        raise AssertionError("workers were started")

    monkeypatch.setattr(llmeff.workers, "run_workers", no_spawn)
    assert main(["tp", "--lm", str(lm_dirs["three_heads"]), "--world", "2", "--backend", "gloo"]) == 2
    assert "3 query / 1 key-value heads cannot be split over 2 ranks" in capsys.readouterr().err
    assert main(["tp", "--lm", str(lm_dirs["ok"]), "--world", "2", "--codec", "fp8"]) == 2
    assert "unknown codec 'fp8'" in capsys.readouterr().err


def test_tp_worker_failure_ends_the_command(lm_dirs, capsys, monkeypatch):
    """The check before spawning is switched off, so both ranks start and fail inside ``tp.shard``: the
    command must end (non-zero) with the worker's message, well within 30 s, not hang."""
    import llmeff.commands.tp as tpcmd

    monkeypatch.setattr(tpcmd, "_validate", lambda args: None)
    t0 = time.perf_counter()
    rc = main(["tp", "--lm", str(lm_dirs["three_heads"]), "--world", "2", "--backend", "gloo"])
    dt = time.perf_counter() - t0
    err = capsys.readouterr().err
    assert rc == 2
    assert "of 2 failed: LLMEffValueError: 3 query / 1 key-value heads cannot be split over 2 ranks" in err
    assert dt < 30, f"took {dt:.1f} s"


def test_run_workers_stops_blocked_peers():
    from llmeff.errors import LLMEffWorkerError
    from llmeff.workers import run_workers

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.perf_counter()
    with pytest.raises(LLMEffWorkerError, match="rank 1 of 2 failed: ValueError: rank one is broken") as ei:
        run_workers(blocked_peer, 2, (port,))
    assert "traceback of rank 1" in str(ei.value)  # unexpected errors carry the worker's traceback
    t1 = time.perf_counter()
    with pytest.raises(LLMEffWorkerError, match=r"rank 1 of 2 died \(exit code 3\)"):
        run_workers(exits_silently, 2)
    t2 = time.perf_counter()
    assert t1 - t0 < 30 and t2 - t1 < 30


# ------------------------------------------------------------------------ item 2: caprese with any tokenizer
def test_caprese_train_with_a_tokenizer_lacking_endoftext(lm_dirs, tmp_path, capsys):
    from llmeff import caprese

    out = tmp_path / "branches"
    rc = main(["caprese", "train", "--lm", str(lm_dirs["no_eot"]), "--out", str(out), "--n-prompts", "2",
               "--prompt-len", "16", "--gen-tokens", "4", "--steps", "2", "--batch", "2", "--device", "cpu"])
    assert rc == 0, capsys.readouterr().err
    br, info = caprese.load(out)
    assert info["meta"]["steps"] == 2 and len(br) == 2


def test_calibration_tokens_separators(lm_dirs):
    from llmeff.caprese import calibration_tokens
    from llmeff.lm.corpus import calibration_texts
    from llmeff.loading import load_tokenizer

    tok = load_tokenizer(lm_dirs["no_eot"])
    first = calibration_texts(100)[0]
    n = len(tok.encode(first, add_special_tokens=False)) + 50
    ids = calibration_tokens(tok, n)
    assert ids.dtype.name == "int64" and len(ids) == n
    # no <|endoftext|>: documents are separated by the EOS token (</s>), and the first document round-trips
    cut = n - 50
    assert ids[cut] == tok.eos_token_id and (ids[:cut] != tok.eos_token_id).all()
    assert tok.decode(ids[:cut].tolist()) == tok.decode(tok.encode(first, add_special_tokens=False))
    with_eot = load_tokenizer(lm_dirs["ok"])
    ids2 = calibration_tokens(with_eot, n)
    assert ids2[cut] == with_eot.convert_tokens_to_ids("<|endoftext|>")
    # the model folder path gives the same tokens (its tokenizer.json read directly)
    assert (calibration_tokens(lm_dirs["ok"], n) == ids2).all()


def test_library_never_imports_from_benchmarks():
    bench = {p.stem for p in (REPO / "benchmarks").glob("*.py")}
    for pkg in ("tensorkernels", "tensorrpca", "ebsd", "diffusion", "llmeff"):
        for f in (REPO / pkg).rglob("*.py"):
            tree = ast.parse(f.read_text(encoding="utf-8"))
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    names = [a.name.split(".")[0] for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module.split(".")[0]]
                else:
                    continue
                bad = [n for n in names if n in bench or n == "benchmarks"]
                assert not bad, f"{f.relative_to(REPO)}:{node.lineno} imports {bad} from benchmarks/"
            src = f.read_text(encoding="utf-8")
            assert not ("sys.path" in src and '"benchmarks"' in src), f"{f.relative_to(REPO)} puts benchmarks/ on sys.path"
