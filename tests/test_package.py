"""The distribution as a user meets it: imports, lazy extras, console scripts, interop."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


def _run(code: str) -> str:
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    return res.stdout


def test_imports_do_not_pull_heavy_extras():
    out = _run(
        "import sys, json, kernels, tensorrpca, ebsd, diffusion, llmeff\n"
        "print(json.dumps({m: m in sys.modules for m in ('napari', 'diffusers', 'transformers', 'qtpy')}))"
    )
    loaded = json.loads(out.strip().splitlines()[-1])
    assert loaded == {"napari": False, "diffusers": False, "transformers": False, "qtpy": False}


def test_packages_respect_the_dependency_direction():
    # kernels imports none of the others; llmeff never imports the imaging packages
    out = _run(
        "import sys, json\n"
        "import kernels\n"
        "a = [m for m in ('tensorrpca', 'ebsd', 'diffusion', 'llmeff') if m in sys.modules]\n"
        "import llmeff, llmeff.cli\n"
        "b = [m for m in ('tensorrpca', 'ebsd', 'diffusion') if m in sys.modules]\n"
        "print(json.dumps([a, b]))"
    )
    assert json.loads(out.strip().splitlines()[-1]) == [[], []]


def test_our_kernels_package_is_not_mistaken_for_hf_kernels():
    pytest.importorskip("transformers")
    pytest.importorskip("diffusers")
    out = _run(
        "import json\n"
        "from transformers.utils import is_kernels_available as t\n"
        "from diffusers.utils import is_kernels_available as d\n"
        "import torch, transformers\n"
        "cfg = transformers.LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,\n"
        "    num_attention_heads=4, num_key_value_heads=2)\n"
        "torch.manual_seed(0); m = transformers.LlamaForCausalLM(cfg).eval()\n"
        "ids = torch.randint(0, 97, (2, 7))\n"
        "out = m.generate(ids, max_new_tokens=3, do_sample=False)\n"
        "import diffusers\n"
        "unet = diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),\n"
        "    down_block_types=('DownBlock2D', 'DownBlock2D'), up_block_types=('UpBlock2D', 'UpBlock2D'), norm_num_groups=4)\n"
        "y = unet(torch.randn(1, 1, 8, 8), 3).sample\n"
        "print(json.dumps([t(), d(), list(out.shape), list(y.shape)]))"
    )
    t_avail, d_avail, gen_shape, unet_shape = json.loads(out.strip().splitlines()[-1])
    assert t_avail is False and d_avail is False
    assert gen_shape == [2, 10] and unet_shape == [1, 1, 8, 8]


@pytest.mark.parametrize("prog", ["ebsdtk", "llmeff"])
def test_console_scripts_help_and_version(prog):
    exe = BIN / prog
    if not exe.exists():
        pytest.skip(f"{prog} console script not installed in this environment")
    h = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=120)
    assert h.returncode == 0 and "usage:" in h.stdout
    v = subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=120)
    assert v.returncode == 0 and v.stdout.strip().startswith(prog)
