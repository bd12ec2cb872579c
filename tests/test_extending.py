"""The README's "Extending" examples run as written: each registers its piece, and the API picks it up.

They run in a fresh interpreter, so what they register never reaches the other tests' registries."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHECKS = '''
import torch
from torch import nn
from explainers import explain, load_dataset, load_model, method_names
from explainers.evaluation import evaluate
from explainers.models import from_module

model = load_model("digits")
image, _ = load_dataset("digits", "test")[0]
assert "gradcam_abs" in method_names()
found = explain(model, image, "gradcam_abs", block="B3")
assert found.raw.shape == (8, 8) and (found.raw >= 0).all() and found.raw.max() > 0

class Lab(nn.Module):
    def __init__(self):
        super().__init__()
        for i, (a, b) in enumerate([(1, 8), (8, 8), (8, 16), (16, 16)], start=1):
            setattr(self, f"stage{i}", nn.Sequential(nn.Conv2d(a, b, 3, stride=2, padding=1), nn.ReLU()))
        self.fc = nn.Linear(16, 3)
    def forward(self, x):
        for i in range(1, 5):
            x = getattr(self, f"stage{i}")(x)
        return self.fc(x.mean(dim=(2, 3)))

lab = from_module(Lab().eval(), "lab", classes=["a", "b", "c"], input_size=(64, 64), channels=1)
assert lab.family == "stages" and lab.block_paths == {f"B{i}": f"stage{i}" for i in range(1, 5)}, lab.block_paths

images = [load_dataset("digits", "test")[i][0] for i in range(3)]
result = evaluate(model, images, ["gradcam"], block="B4", metrics=["sufficiency"])
table = result.table()
assert "kept" in table.columns and 0 <= table["kept"].iloc[0] <= 1, table

noise = load_dataset("noise", "test")
assert len(noise) == 20 and noise.classes == ["a", "b"] and noise[3][0].size == (64, 64)
print("extending: ok")
'''


def extending_blocks() -> list[str]:
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Extending"):text.index("## Architecture")]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_the_readmes_extending_examples_register_what_they_say():
    blocks = extending_blocks()
    assert len(blocks) == 4  # a method, a model family, a faithfulness metric, a dataset
    script = "\n\n".join(blocks) + CHECKS
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "extending: ok" in done.stdout
