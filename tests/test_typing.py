"""resnetlab's annotations as a user's type checker reads them (the package ships py.typed)."""

import subprocess
import sys

# Code written for torchvision's ResNet and timm's feature_info, and a TrainConfig made as the README shows.
USER_CODE = '''
from pathlib import Path

import torch
from torch import nn

import resnetlab
from resnetlab.train import TrainConfig, train

model = resnetlab.create_model("resnet50")
model.fc = nn.Linear(model.fc.in_features, 5)
model.maxpool = nn.Identity()
channels: list[int] = model.feature_info.channels()
last: int = model.feature_info.channels(-1)
config = TrainConfig(out=Path("runs/r"), device=torch.device("cpu"), data_dir=Path("data"))
logits: torch.Tensor = train(config).model(torch.zeros(1, 3, 32, 32))
'''


def test_code_written_for_torchvision_and_the_readme_type_checks(tmp_path):
    script = tmp_path / "user.py"
    script.write_text(USER_CODE)
    done = subprocess.run([sys.executable, "-m", "mypy", "--no-incremental", "--cache-dir", str(tmp_path / "cache"), str(script)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and "Success" in done.stdout, done.stdout + done.stderr
